"""Seeds of a run's independent random streams, derived from the run seed in one way."""
from __future__ import annotations

#: A prime multiplier, so streams of different run seeds do not collide for any practical stream index.
SEED_MIXER = 1_000_003


def mixed_seed(seed: int, stream: int) -> int:
    """The seed of stream ``stream`` (an iteration, a shard, a sample's hash ...) of a run seeded ``seed``."""
    return seed * SEED_MIXER + stream

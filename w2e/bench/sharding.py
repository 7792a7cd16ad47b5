"""A sweep's edits shared out over the processes of ``torchrun``, and their records merged back.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process loads the model and the benchmark, and of
each method's list of edits it makes those whose position ``i`` has ``i % world == rank``: the same
edits a single process makes, each made once. After a method, the records are gathered on every
process and put back in the single-process order; the main process (rank 0) alone writes files.
Without ``torchrun`` the shard is the whole sweep and nothing is communicated.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch.distributed as dist

from w2e.engine.distributed import launched_by_torchrun, process_group_from_env, rank_and_world
from w2e.models.loading import ModelBundle

T = TypeVar("T")


class ShardPlacementError(RuntimeError):
    """Under ``torchrun`` the model sits on another GPU than the one this process was given."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a sweep: rank ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes the sweep's files and messages (rank 0)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """The ``(position, item)`` pairs of ``items`` this process takes: every ``world``-th from ``rank``."""
        return [(index, item) for index, item in enumerate(items) if index % self.world == self.rank]

    def merged(self, results: list[tuple[int, T]]) -> list[T]:
        """Every process's ``(position, result)`` pairs, on every process, as results in position order."""
        parts = [results]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, results)
        return [result for _, result in sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])]

    def main_first(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the main process, then on the others, which reuse what it saved (trained baselines)."""
        if self.is_main:
            work()
        self.barrier()
        if not self.is_main:
            work()

    def from_main(self, value: T) -> T:
        """The main process's ``value``, on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            dist.barrier()


@contextmanager
def sweep_shard(bundle: ModelBundle) -> Iterator[Shard]:
    """This process's shard of a sweep on ``bundle``, for a ``with`` block: ``Shard()`` outside
    ``torchrun``; under it the process group is set up if it is not yet (gloo on CPU, NCCL on CUDA,
    one GPU per process) and, then, taken down at the end of the block.

    Raises:
        ShardPlacementError: the model is on another GPU than this process's ``LOCAL_RANK`` one
            (load it on :func:`w2e.engine.distributed.init_distributed_from_env`'s device).
    """
    with process_group_from_env(bundle.device) as device:
        placed = next(bundle.model.parameters()).device
        if launched_by_torchrun() and device.type == "cuda" and placed != device:
            raise ShardPlacementError(f"this process edits on {device} but the model is on {placed}; load it there "
                                      "(w2e bench does), one GPU per process")
        yield Shard(*rank_and_world())

"""What every benchmark method is: typed settings, the edits it makes, and (for some) a sequential form.

Every method turns an :class:`~w2e.bench.context.EditSample` into a :class:`BenchEdit`: a
description of the edit plus ``apply()``, a context manager that makes the model behave
edited *for the current thread only*. Nothing ever writes the shared base weights.

Settings: each method has a frozen :class:`MethodSettings` dataclass (as EasyEdit's hparams).
:meth:`MethodSettings.defaults` fills in what depends on the model and the run (the model's
edit lr, a block chosen from its depth, the run seed); :meth:`MethodSettings.with_overrides`
applies ``--set METHOD.key=value`` and refuses unknown keys. The settings are recorded with the
results and hashed to decide which records are reusable.

``BenchEdit.level`` (and :meth:`Method.edit_level`) is the first block the edit changes:
evaluation starts from the cached tokens entering that block.

Two stopping points: every edit made by the shared loop :func:`w2e.engine.fine_tune.fit_until_correct`
also keeps ``BenchEdit.first_right``, the edit as it was at the first optimiser step where every
editing sample was predicted right (``None`` if never), so it is scored both there and at the
stop rule. Methods that make one update (KE, MEND) use that update for both.

Sequential form (``w2e bench --sequential``): a method that has one also derives from
:class:`SequentialForm` and turns ``(state, sample)`` into ``(new state, BenchEdit)``, where the
state (:class:`~w2e.bench.state.EditState`) is the model as left by the previous edits.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Generic, Protocol, Sequence, TypeVar

import torch
from torch import nn

from w2e.bench.context import BenchContext, EditSample
from w2e.bench.state import EditState
from w2e.engine.fine_tune import FirstRightSnapshot
from w2e.engine.seeds import mixed_seed
from w2e.models.loading import ModelBundle
from w2e.where.meta_train import ImageSource


class SettingsError(ValueError):
    """A method setting that does not exist (a typo in ``--set``)."""


class NestedConfig(Protocol):
    """A settings group kept as its own dataclass (mask search, meta-training, PGD): all defaults, a dict form."""

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, raw: dict) -> NestedConfig: ...


@dataclass
class Resources:
    """What some methods need beyond the model: hypernetwork, training images, a work folder."""

    hypernetwork: nn.Module | None = None
    train_source: ImageSource | None = None
    work_dir: Path | None = None
    quick: bool = False
    seed: int = 0
    log: Callable[[str], None] = print


SettingsT = TypeVar("SettingsT", bound="MethodSettings")


@dataclass(frozen=True)
class MethodSettings:
    """Base of every method's settings: JSON-ready fields, recorded with the results.

    ``nested`` names the fields that hold a settings group of their own (e.g. ``search``: a
    :class:`~w2e.where.mask_search.MaskSearchConfig`); an override given as a dict is merged
    into the current group (or the group's defaults), so ``--set search.search={"outer_steps": 2}``
    changes one knob.
    """

    nested: ClassVar[Mapping[str, type[NestedConfig]]] = {}

    @classmethod
    def defaults(cls: type[SettingsT], bundle: ModelBundle, resources: Resources) -> SettingsT:
        """The settings of a run on ``bundle`` with ``resources`` when nothing is overridden."""
        return cls()

    def to_dict(self) -> dict:
        """JSON-ready dict (nested groups as dicts)."""
        return asdict(self)

    def with_overrides(self: SettingsT, method: str, overrides: Mapping[str, object]) -> SettingsT:
        """These settings with ``overrides`` applied.

        Args:
            method: the method's name, for the error message.
            overrides: setting name to value (values as ``--set`` parses them: JSON).

        Returns:
            New settings; ``self`` is unchanged.

        Raises:
            SettingsError: a name is not one of these settings.
        """
        known = sorted(f.name for f in fields(self))
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise SettingsError(f"{method}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return replace(self, **{name: self._merged(name, value) for name, value in overrides.items()})

    def _merged(self, name: str, value: object) -> object:
        group = self.nested.get(name)
        if group is None or not isinstance(value, Mapping):
            return value
        current = getattr(self, name)
        return group.from_dict(_deep_merge((current if current is not None else group()).to_dict(), value))


def _deep_merge(base: dict, given: Mapping) -> dict:
    merged = dict(base)
    for key, value in given.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), dict) else value
    return merged


@dataclass
class BenchEdit:
    """One edit as the benchmark sees it (see the module docstring).

    ``first_right`` is the same edit at the first step where every editing sample was predicted
    right, after ``first_right.steps`` optimiser steps (``None`` if that never happened); when
    those steps equal ``steps`` it holds the same change as the edit (the runner reuses its scores).
    """

    level: int
    apply: Callable[[], ContextManager]
    success: bool
    steps: int
    seconds: float
    num_parameters: int
    density: float | None = None
    info: dict = field(default_factory=dict)
    first_right: BenchEdit | None = None


def with_first_right(build: Callable[[Sequence[torch.Tensor], bool, int, float], BenchEdit],
                     params: Sequence[torch.Tensor], snapshot: FirstRightSnapshot, success: bool, steps: int,
                     seconds: float) -> BenchEdit:
    """``build(tensors, success, steps, seconds)`` of the final ``params``, with ``first_right``
    built from the ``snapshot`` taken by :func:`w2e.engine.fine_tune.fit_until_correct` (if any)."""
    edit = build(params, success, steps, seconds)
    if snapshot.tensors is not None:
        edit.first_right = build(snapshot.tensors, True, snapshot.steps, snapshot.seconds)
    return edit


class Method(Generic[SettingsT]):
    """Base class of the benchmark's methods; ``knob`` is swept over ``values`` for the GR-LR curve.

    ``name`` is set by :func:`w2e.bench.methods.registry.register_method`. ``needs`` lists what
    the method cannot run without (``"hypernetwork"``, ``"train_data"``). ``summary`` is what
    :meth:`prepare` trained or measured, recorded as the method's ``training`` (``None``: nothing).
    """

    name: ClassVar[str] = "method"
    title: ClassVar[str] = "method"
    knob: ClassVar[str | None] = None
    full_values: ClassVar[tuple] = (None,)
    quick_values: ClassVar[tuple | None] = None
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: BenchContext, resources: Resources, settings: SettingsT,
                 values: Sequence | None = None) -> None:
        self.ctx = ctx
        self.bundle = ctx.bundle
        self.model = ctx.bundle.model
        self.site = ctx.bundle.site
        self.resources = resources
        self.settings = settings
        self.values = tuple(values) if values else self.default_values(resources.quick)
        self.summary: dict | None = None

    @classmethod
    def default_values(cls, quick: bool) -> tuple:
        """The knob values swept unless ``--knob`` gives others (fewer with ``--quick``)."""
        return cls.quick_values if quick and cls.quick_values is not None else cls.full_values

    @classmethod
    def edit_level(cls, bundle: ModelBundle, settings: SettingsT) -> int:
        """First block the method's edits change on ``bundle`` (default: the edit site's first)."""
        return bundle.site.start

    @property
    def level(self) -> int:
        """First block this method's edits change."""
        return self.edit_level(self.bundle, self.settings)

    def unavailable(self) -> str | None:
        """Why this method cannot run (missing hypernetwork or training data), else ``None``."""
        if "hypernetwork" in self.needs and self.resources.hypernetwork is None:
            return "no hypernetwork for this model (give --hypernetwork)"
        if "train_data" in self.needs and self.resources.train_source is None:
            return "no training images for this model (give --train-data)"
        return None

    def prepare(self) -> None:
        """One-off work before the first edit (e.g. meta-training a baseline)."""

    def samples(self, value) -> list[EditSample]:
        """Editing samples for one knob value (default: the run's editing samples)."""
        return self.ctx.samples

    def edit(self, sample: EditSample, value) -> BenchEdit:
        """Edit ``sample`` with knob ``value``, starting from the base model."""
        raise NotImplementedError(f"{type(self).__name__} makes no edit")

    def recorded_settings(self) -> dict:
        """The settings as results record and hash them: name, knob and every setting."""
        return {"name": self.name, "knob": self.knob, **self.settings.to_dict()}

    def sample_seed(self, sample: EditSample) -> int:
        """A seed of this method, run seed and editing sample (random masks, LoRA's init, ...)."""
        return mixed_seed(self.resources.seed, zlib.crc32(f"{self.name}|{sample.key}".encode())) % (2**31)


class SequentialForm(ABC):
    """A method whose edits stack: the sequential protocol's ``(state, sample) -> (new state, edit)``."""

    #: Knob value of the sequential protocol unless ``--knob`` gives others.
    sequential_value: ClassVar[object] = None

    @abstractmethod
    def initial_state(self, value) -> EditState:
        """The state before the first edit of a sequence: the base model."""

    @abstractmethod
    def sequential_edit(self, state: EditState, sample: EditSample, value) -> tuple[EditState, BenchEdit]:
        """Edit ``sample`` on the model as left by ``state``; the new state and the edit (whose
        ``apply`` is the new state's)."""

    @abstractmethod
    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict, value) -> EditState:
        """The state :func:`~w2e.bench.state.save_state` wrote (resume of a sequential run)."""

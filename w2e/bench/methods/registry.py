"""The registry of benchmark methods: ``@register_method`` on every method class, lookup by name, listings.

The order of registration is the report order (:mod:`w2e.bench.methods` imports the families in
that order). Ablation variants are registered with the ablation they belong to, so the protocol
adds them when that ablation runs.
"""
from __future__ import annotations

from typing import Sequence

from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

from w2e.bench.context import BenchContext
from w2e.bench.methods.base import Method, MethodSettings, Resources, SequentialForm
from w2e.models.loading import ModelBundle

MethodT = TypeVar("MethodT", bound=type[Method])


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: its class, its settings class and, for an ablation variant, its ablation."""

    name: str
    method: type[Method]
    settings: type[MethodSettings]
    ablation: str | None = None

    @property
    def sequential(self) -> bool:
        """Whether the method has a sequential form (its edits stack)."""
        return issubclass(self.method, SequentialForm)

    def build_settings(self, bundle: ModelBundle, resources: Resources,
                       overrides: Mapping[str, object] | None = None) -> MethodSettings:
        """The method's settings for a run on ``bundle``: defaults with ``overrides`` applied.

        Raises:
            SettingsError: an override names no setting of the method.
        """
        return self.settings.defaults(bundle, resources).with_overrides(self.name, overrides or {})

    def level(self, bundle: ModelBundle, settings: MethodSettings) -> int:
        """First block the method's edits change on ``bundle`` with ``settings``."""
        return self.method.edit_level(bundle, settings)

    def create(self, ctx: BenchContext, resources: Resources, settings: MethodSettings | None = None,
               values: tuple | None = None) -> Method:
        """The method ready for :meth:`~w2e.bench.methods.base.Method.prepare` (``settings`` ``None``:
        the defaults; ``values`` ``None``: the default knob values)."""
        settings = settings if settings is not None else self.build_settings(ctx.bundle, resources)
        if not isinstance(settings, self.settings):
            raise TypeError(f"{self.name} takes {self.settings.__name__}, not {type(settings).__name__}")
        return self.method(ctx, resources, settings, values)


_ENTRIES: dict[str, MethodEntry] = {}


def register_method(name: str, settings: type[MethodSettings],
                    ablation: str | None = None) -> Callable[[MethodT], MethodT]:
    """Class decorator: register a method under ``name`` (its CLI name) with its settings class.

    Args:
        name: the name in ``--methods``, records and reports (set as the class's ``name``).
        settings: the method's settings dataclass.
        ablation: for an ablation variant, the ablation that adds it (``"ensemble"``, ``"pseudo"``).

    Returns:
        The decorator, which returns the class unchanged apart from its ``name``.
    """
    def register(cls: MethodT) -> MethodT:
        if name in _ENTRIES:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _ENTRIES[name] = MethodEntry(name, cls, settings, ablation)
        return cls

    return register


def method_entry(name: str) -> MethodEntry:
    """The registered method ``name``.

    Raises:
        UnknownMethodError: no method has that name (the message lists the known ones).
    """
    if name not in _ENTRIES:
        raise UnknownMethodError(f"unknown method {name!r}; choose from {', '.join(_ENTRIES)}")
    return _ENTRIES[name]


def method_entries(ablations: bool = True) -> list[MethodEntry]:
    """Every registered method in report order; ``ablations=False`` leaves out the ablation variants."""
    return [entry for entry in _ENTRIES.values() if ablations or entry.ablation is None]


def method_names(ablations: bool = True) -> list[str]:
    """Names of :func:`method_entries`: the comparison methods, then the ablation variants."""
    return [entry.name for entry in method_entries(ablations)]


def check_method_names(names: Sequence[str], known: Sequence[str] | None = None) -> None:
    """Refuse names that are not among ``known`` (default: every registered method).

    Raises:
        UnknownMethodError: naming every unknown name and listing the known ones.
    """
    known = list(known) if known is not None else method_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownMethodError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")

"""The app's models: each offered model loaded once, on first use, and shared read-only by
every session (through its :class:`~w2e.app.workbench.Workbench`)."""
from __future__ import annotations

import threading

from w2e.app.config import AppConfig
from w2e.app.workbench import Report, Workbench, silent
from w2e.inputs.labels import echo


class ModelCache:
    """Loads each offered model once (on first use) and hands out the shared workbench."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._benches: dict[str, Workbench] = {}
        self._locks = {spec: threading.Lock() for spec in config.models}

    def loaded(self, spec: object) -> bool:
        """Whether ``spec`` is an offered model that is loaded already."""
        return isinstance(spec, str) and spec in self._benches

    def get(self, spec: str | None = None, report: Report = silent) -> Workbench:
        """The workbench of ``spec`` (default model when ``None``); only offered models load."""
        spec = spec or self.config.default_model
        if not isinstance(spec, str) or spec not in self._locks:
            raise ValueError(f"model {echo(spec)} is not offered by this app; choose one of {', '.join(self.config.models)}")
        with self._locks[spec]:
            if spec not in self._benches:
                self._benches[spec] = Workbench.load(spec, self.config, report)
            return self._benches[spec]

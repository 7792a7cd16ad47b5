"""The benchmark's editing methods, one registry, each with the knob its GR-LR curve sweeps.

Layers: :mod:`~w2e.bench.methods.base` (what a method is: settings, edits, sequential form),
:mod:`~w2e.bench.methods.registry` (``@register_method``, lookup, listings) and the shared
machinery :mod:`~w2e.bench.methods.capture` and :mod:`~w2e.bench.methods.site_methods`; then one
module per family, which imports only those, never another family:

- :mod:`~w2e.bench.methods.where_to_edit`: w2e, w2e-mean, test-time search;
- :mod:`~w2e.bench.methods.fine_tuning`: FT, FT-L1, FT-L2;
- :mod:`~w2e.bench.methods.selection`: random masks, KN, SPT (with their scoring);
- :mod:`~w2e.bench.methods.tpatcher`, :mod:`~w2e.bench.methods.rome`, :mod:`~w2e.bench.methods.lora`;
- :mod:`~w2e.bench.methods.hyperedit`: KE and MEND;
- :mod:`~w2e.bench.methods.grace`, :mod:`~w2e.bench.methods.wise`: the lifelong editors;
- :mod:`~w2e.bench.methods.ablations`: w2e's ensemble and pseudo-sample ablation variants.

The families are imported below in report order, which registers them in that order.
"""
from w2e.bench.methods import (where_to_edit, fine_tuning, selection, tpatcher, rome, lora, hyperedit,  # noqa: F401
                               grace, wise, ablations)
from w2e.bench.methods.base import BenchEdit, Method, MethodSettings, Resources, SequentialForm, SettingsError
from w2e.bench.methods.registry import (MethodEntry, UnknownMethodError, check_method_names, method_entries,
                                        method_entry, method_names, register_method)

__all__ = [
    "BenchEdit", "Method", "MethodEntry", "MethodSettings", "Resources", "SequentialForm", "SettingsError",
    "UnknownMethodError", "check_method_names", "method_entries", "method_entry", "method_names", "register_method",
]

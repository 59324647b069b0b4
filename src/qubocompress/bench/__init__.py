"""The solver benchmark: metrics (p_s, TTS99, gap), instance files, a resumable SQLite store, sweeps, plots.

``qubocompress bench`` (:mod:`qubocompress.bench.cli`) runs it; the metrics are defined once in
:mod:`qubocompress.solvers.metrics`. No torch at import time (plots import matplotlib when used).
"""

from qubocompress.bench.instances import (
    Instance,
    builtin_instance,
    load_instance,
    load_instances,
    model_instance,
    save_instance,
    size_series_instance,
)
from qubocompress.solvers.metrics import residual_gap, success_mask, success_probability, tts99
from qubocompress.bench.runner import Budget, SweepConfig, run_sweep, summarize
from qubocompress.bench.store import ResultStore

__all__ = [
    "Budget",
    "Instance",
    "ResultStore",
    "SweepConfig",
    "builtin_instance",
    "load_instance",
    "load_instances",
    "model_instance",
    "residual_gap",
    "run_sweep",
    "save_instance",
    "size_series_instance",
    "success_mask",
    "success_probability",
    "summarize",
    "tts99",
]

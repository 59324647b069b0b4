"""What one compression run is asked to do: :class:`CompressConfig` and the budget it is given.

Importable without torch, scipy or dimod, so that the command line builds its parser (and shows
the defaults) at once; :meth:`CompressConfig.validate` imports the checks it needs when called.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qubocompress.cluster import Cluster
from qubocompress.errors import ClusterError, ProblemError, SolverError
from qubocompress.limits import check_seed
from qubocompress.names import (
    AUTO_SENSITIVITY,
    BUDGET_ENCODINGS,
    FORMULATIONS,
    IMPORTANCES,
    METRICS,
    SEARCH_METHODS,
    SENSITIVITIES,
    SOLVERS,
)

# Units of an absolute --budget (any case): sizes (weight memory, in bits) for --metric bits, in
# bytes (B, kB = 1000 B, KiB = 1024 B, ... GB, GiB) or bits (bit, kbit, Mbit, Gbit); counts for bops.
SIZE_UNITS = {
    "bit": 1, "bits": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
    "b": 8, "byte": 8, "bytes": 8,
    "kb": 8 * 10**3, "mb": 8 * 10**6, "gb": 8 * 10**9,
    "kib": 8 * 2**10, "mib": 8 * 2**20, "gib": 8 * 2**30,
}  # fmt: skip
COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
# rl-acc's episodes scored together on Ray unless --search-batch says (1 in this process, as HAQ/AMC).
RAY_EPISODES_PER_BATCH = 8
# Solvers whose sampler is built from --solver-option alone in validate() (cheap, offline, no
# formulation needed), so that a bad option is refused before the analysis, not when it solves.
OPTIONS_CHECKED_BY_BUILDING = frozenset({"sa", "tabu", "greedy", "sqa", "sb", "random", "ga", "exact"})


def parse_budget(text: str, metric: str) -> float:
    """An absolute budget in the metric's unit: weight bits from a size such as ``64KiB``, ``50kB``,
    ``40000B`` or ``320000bit`` (``--metric bits``), or bit operations per sample from a count such
    as ``2.5e9`` or ``2.5G`` (``--metric bops``)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    units = COUNT_UNITS if metric == "bops" else SIZE_UNITS
    if match is None or match.group(2) not in units:
        example = (
            "a size such as 64KiB, 50kB, 1.5MB, 2GiB, 40000B or 320kbit"
            if metric != "bops"
            else "a count such as 2.5e9 or 2.5G"
        )
        raise ProblemError(f"--budget {text!r} with --metric {metric}: give {example}")
    value = float(match.group(1)) * units[match.group(2)]
    if not (math.isfinite(value) and value > 0):
        raise ProblemError(f"--budget must be more than 0, got {text!r}")
    return value


def parse_solver_option(text: str) -> tuple[str, Any]:
    """(key, value) of a ``--solver-option KEY=VALUE``: the value as JSON (``60``, ``true``, ``null``,
    ``[1, 2]``) where it parses as JSON, else the text itself (``qpu=mock``)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip().isidentifier():
        raise SolverError(f"--solver-option takes KEY=VALUE, e.g. qpu=mock or time_limit=60; got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def solver_option_text(key: str, value: Any) -> str | None:
    """The ``KEY=VALUE`` that :func:`parse_solver_option` reads back as (key, value); None for a value
    the command line cannot give (e.g. a sampler object)."""
    if isinstance(value, str) and parse_solver_option(f"{key}={value}")[1] == value:
        return f"{key}={value}"
    try:
        return f"{key}={json.dumps(value)}"
    except (TypeError, ValueError):
        return None


@dataclass
class CompressConfig:
    """Everything ``compress`` needs; the CLI flags map one to one onto these fields.

    ``budget`` (an absolute cost, :func:`parse_budget`) replaces ``target_ratio`` when given: the
    run uses the ratio fp32 cost / budget, and the budget formulation the budget itself.
    ``device`` ("cpu", "cuda", "cuda:N" or "auto"): where training, the analysis, fine-tuning and the
    ``sb`` solver run; "cuda" without a GPU falls back to the CPU with one warning line.
    ``workers`` / ``ray_address``: score each ga-acc generation's / rl-acc batch's plans in parallel
    on Ray actors, on a local cluster of that many workers / on an existing cluster
    (:class:`~qubocompress.cluster.Cluster`). ``search_batch``: rl-acc's episodes scored together
    (None: 1 in this process, ``RAY_EPISODES_PER_BATCH`` on Ray; :meth:`episodes_per_batch`).
    """

    model: str = "vgg"
    weights: Path | None = None
    data: str | None = None
    normalize: str = "mean-std"
    checkpoint: Path | None = None
    target_ratio: float = 16.0
    budget: str | None = None
    formulation: str = "paper"
    budget_encoding: str = "slack"
    metric: str = "bits"
    importance: str = "l1"
    sensitivity: str = AUTO_SENSITIVITY
    interactions: bool = False
    solver: str = "sa"
    search: str = "qubo"
    search_evaluations: int = 300
    search_batch: int | None = None
    seed: int = 0
    out: Path = Path("runs/latest")
    finetune_epochs: int = 2
    beta: float | None = None
    max_prune_fraction: float = 0.5
    b_max: int = 8
    bit_levels: int = 3
    num_reads: int | None = None
    baseline: bool = True
    solver_options: dict[str, Any] = field(default_factory=dict)
    exact_time_limit: float = 60.0
    analysis_cache: bool = True
    calibration_samples: int | None = None
    untrained: bool = False
    export_onnx: bool = False
    device: str = "cpu"
    workers: int | None = None
    ray_address: str | None = None

    def cluster(self) -> Cluster:
        """Where the search scores its plans: :attr:`Cluster.enabled` False for this process."""
        return Cluster(address=self.ray_address, workers=self.workers)

    def episodes_per_batch(self) -> int:
        """rl-acc's episodes proposed by one policy and scored together: ``search_batch``, else 1
        (HAQ's and AMC's one at a time) in this process and ``RAY_EPISODES_PER_BATCH`` on Ray."""
        if self.search_batch is not None:
            return self.search_batch
        return RAY_EPISODES_PER_BATCH if self.cluster().enabled else 1

    def layer_sensitivity(self) -> str:
        """The layer sensitivity the analysis uses: ``sensitivity``, with ``auto`` resolved
        (``fisher`` for the budget and filters formulations, ``measured`` for the paper's)."""
        if self.sensitivity != AUTO_SENSITIVITY:
            return self.sensitivity
        return "fisher" if self.formulation in ("budget", "filters") else "measured"

    def validate(self, model_given: bool = False) -> None:
        """Reject impossible settings before any work starts (``model_given``: the model comes as an
        object, so ``model`` only labels it and needs no weights)."""
        from qubocompress.data.datasets import parse_normalize
        from qubocompress.models.train import check_device
        from qubocompress.models.user import is_factory_spec
        from qubocompress.problem import FORMULATIONS as FORMULATION_CLASSES
        from qubocompress.solvers.registry import make_sampler, preflight
        from qubocompress.solvers.rl import BUDGET_GRID_REFUSAL

        check_seed(self.seed)
        parse_normalize(self.normalize)
        for flag, value, valid in (
            ("--formulation", self.formulation, FORMULATIONS),
            ("--budget-encoding", self.budget_encoding, BUDGET_ENCODINGS),
            ("--metric", self.metric, METRICS),
            ("--importance", self.importance, IMPORTANCES),
            ("--sensitivity", self.sensitivity, SENSITIVITIES),
            ("--solver", self.solver, SOLVERS),
            ("--search", self.search, SEARCH_METHODS),
        ):
            if value not in valid:
                raise ProblemError(f"unknown {flag} {value!r}; choose one of: {', '.join(valid)}")
        if self.formulation == "paper" and (self.metric != "bits" or self.interactions):
            raise ProblemError(
                "--metric bops|file and --interactions need --formulation budget (the paper's energy has neither)"
            )
        if self.metric == "file" and self.search != "qubo":
            raise ProblemError(
                "--metric file budgets the QUBO's model file; --search ga-acc|rl-acc|uniform count bits or bops"
            )
        if self.budget_encoding != "slack" and self.formulation != "budget":
            raise ProblemError(
                f"--budget-encoding {self.budget_encoding} encodes the budget formulation's budget; "
                f"the {self.formulation} formulation has none to encode (use --formulation budget)"
            )
        if self.formulation in ("budget", "filters") and self.beta is not None:
            raise ProblemError(f"--beta weighs the paper's energy; the {self.formulation} formulation has no beta")
        if self.formulation == "filters" and self.interactions:
            raise ProblemError(
                "--interactions measures pair terms of rank-order prune counts; the filters formulation's pair "
                "terms are its filter Gram matrix (drop --interactions, or use --formulation budget)"
            )
        if self.formulation == "filters" and self.solver == "rl" and self.search == "qubo":
            raise ProblemError(
                "solver 'rl' walks free prune counts and bit-widths; the filters formulation fixes both and chooses "
                "which filters: use another solver"
            )
        if self.solver == "rl" and self.search == "qubo" and not FORMULATION_CLASSES[self.formulation].free_counts:
            raise ProblemError(BUDGET_GRID_REFUSAL)  # before the analysis, not when the sampler is built
        if self.search == "qubo":
            preflight(self.solver, self.solver_options)  # a missing extra or QPU token before any work
            if self.solver_options and self.solver in OPTIONS_CHECKED_BY_BUILDING:
                # an unknown option or bad value, not after the analysis when the sampler is built
                make_sampler(self.solver, None, **self.solver_options)
        if self.checkpoint is not None and self.weights is not None:
            raise ProblemError("give either --checkpoint or --weights, not both")
        if not model_given:
            self._check_model_files()
        if self.weights is None and not (self.untrained or model_given) and is_factory_spec(self.model):
            raise ProblemError(
                f"--model {self.model} without --weights would compress a freshly initialised, untrained model: "
                "pass its trained state_dict with --weights (or --untrained if that is what you want)"
            )
        if not (isinstance(self.max_prune_fraction, (int, float)) and 0.0 <= self.max_prune_fraction < 1.0):
            raise ProblemError(
                f"--max-prune must be a fraction from 0 up to (not including) 1, got {self.max_prune_fraction}"
            )
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta >= 0):
            raise ProblemError(f"--beta must be a finite number >= 0, got {self.beta}")
        if not (math.isfinite(self.exact_time_limit) and self.exact_time_limit > 0):
            raise ProblemError(f"--exact-time-limit must be a positive number of seconds, got {self.exact_time_limit}")
        if self.finetune_epochs < 0:
            raise ProblemError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.budget is not None:
            parse_budget(self.budget, self.metric)
        elif not math.isfinite(self.target_ratio) or self.target_ratio <= 1.0:
            raise ProblemError(
                f"--target-ratio must be a number > 1 (e.g. 16 for 16x smaller), got {self.target_ratio}"
            )
        check_count(self.search_evaluations, "--search-evaluations")
        if self.num_reads is not None and self.num_reads < 1:
            raise ProblemError(f"--num-reads must be >= 1, got {self.num_reads}")
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise ProblemError(f"--calibration-samples must be >= 1, got {self.calibration_samples}")
        check_device(self.device)
        self.cluster().check()
        if self.search_batch is not None:
            if self.search != "rl-acc":
                raise ProblemError(
                    f"--search-batch sets how many rl-acc episodes are scored together; --search {self.search} "
                    "has no such batch, so drop it"
                )
            check_count(self.search_batch, "--search-batch")
            if self.search_batch > self.search_evaluations:
                raise ProblemError(
                    f"--search-batch ({self.search_batch}) must be at most --search-evaluations "
                    f"({self.search_evaluations}): a batch's plans are scored together"
                )
        if self.cluster().enabled and self.search not in ("ga-acc", "rl-acc"):
            raise ClusterError(
                "--workers / --ray-address score the plans of --search ga-acc or rl-acc in parallel; "
                f"--search {self.search} scores none that way, so drop them"
            )
        self.cluster().reach()

    def check_reads_used(self) -> None:
        """ProblemError when ``num_reads`` is set for a solver that takes no number of reads (a
        ``compress`` check: a sweep's cases of such a solver just run without it)."""
        from qubocompress.solvers.registry import make_sampler

        if self.num_reads is None or self.search != "qubo" or self.solver not in OPTIONS_CHECKED_BY_BUILDING:
            return
        if "num_reads" not in make_sampler(self.solver, None, **self.solver_options).parameters:
            raise ProblemError(f"--num-reads: solver {self.solver!r} takes no number of reads")

    def _check_model_files(self) -> None:
        """ModelError for a --checkpoint or --weights file that is not there, or a --model that is
        neither a built-in name, package.module:factory nor an existing TorchScript file (cheap:
        nothing is read or imported)."""
        from qubocompress.errors import ModelError
        from qubocompress.models.user import FACTORY_PATTERN, load_user_model
        from qubocompress.models.zoo import MODELS

        for what, path in (("checkpoint", self.checkpoint), ("weights file", self.weights)):
            if path is not None and not Path(path).is_file():
                raise ModelError(f"{what} {path} {'is a folder' if Path(path).is_dir() else 'does not exist'}")
        if self.checkpoint is not None or self.model in MODELS or FACTORY_PATTERN.match(self.model):
            return
        if not Path(self.model).is_file():
            load_user_model(self.model)  # raises its one-line ModelError for a name it cannot resolve

    def command_line(self) -> str:
        """The ``qubocompress compress`` command that asks for this run (only the fields that differ
        from the defaults), with a ``# from Python:`` note naming any field no flag sets."""
        defaults = CompressConfig()
        words = ["qubocompress", "compress"]
        python_only = []
        for name, value in vars(self).items():
            default = getattr(defaults, name)
            if value == default or (name == "out" and str(value) == str(default)):
                continue
            options = [solver_option_text(*item) for item in value.items()] if name == "solver_options" else []
            if options and None not in options:
                for option in options:
                    words += ["--solver-option", str(option)]
            elif name in FLAGS:
                flag = FLAGS[name]
                if name == "export_onnx":
                    words += [flag, "onnx"]
                elif isinstance(value, bool):
                    words.append(flag)  # every other boolean field's flag sets the non-default value
                else:
                    words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
            else:
                python_only.append(f"{name}={value!r}")
        command = " ".join(shlex.quote(word) for word in words)
        return command + (f"  # from Python: {', '.join(python_only)}" if python_only else "")


def check_count(value: Any, flag: str) -> None:
    """ProblemError unless ``value`` is a whole number >= 1 (``flag`` names it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProblemError(f"{flag} must be a whole number >= 1, got {value!r}")


# The command-line flag of each CompressConfig field that has one; a boolean field's flag sets the
# value that is not its default (--no-baseline: baseline False).
FLAGS = {
    "model": "--model", "weights": "--weights", "data": "--data", "normalize": "--normalize",
    "checkpoint": "--checkpoint", "target_ratio": "--target-ratio", "budget": "--budget",
    "formulation": "--formulation", "budget_encoding": "--budget-encoding", "metric": "--metric",
    "importance": "--importance",
    "sensitivity": "--sensitivity", "interactions": "--interactions", "solver": "--solver", "search": "--search",
    "search_evaluations": "--search-evaluations", "search_batch": "--search-batch", "seed": "--seed", "out": "--out",
    "finetune_epochs": "--finetune-epochs", "beta": "--beta", "max_prune_fraction": "--max-prune",
    "num_reads": "--num-reads", "baseline": "--no-baseline", "exact_time_limit": "--exact-time-limit",
    "analysis_cache": "--no-analysis-cache", "calibration_samples": "--calibration-samples",
    "untrained": "--untrained", "export_onnx": "--export", "device": "--device", "workers": "--workers",
    "ray_address": "--ray-address",
}  # fmt: skip

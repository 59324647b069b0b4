"""What a report is made from: the run, sweep or bench in a folder, read into typed records.

Nothing here draws or writes. A folder that holds nothing to report, or a file that cannot be read,
is an :class:`~qubocompress.errors.ArtifactError` with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qubocompress.bench.runner import summarize
from qubocompress.bench.store import ResultStore
from qubocompress.config import CompressConfig
from qubocompress.errors import ArtifactError, ProblemError
from qubocompress.io import PARTIAL_MARK
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import CompressionSpec
from qubocompress.sweeps import CASES_FOLDER, QUBO_ROUTE, STORE_FILE, SweepRow, SweepTable, read_sweep

METRICS_FILE = "metrics.json"
BENCH_STORE = "results.sqlite"
UNIFORM_ROUTE = "uniform"
# A route's time, stage by stage, in the order the report stacks them: the polish is the part of
# the solve stage spent polishing reads; fine-tune is the chosen plan's fine-tuning.
TIME_STAGES = ("analysis", "build", "solve", "polish", "search", "evaluate", "fine-tune")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; an ArtifactError (one line) when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def shown_folder(folder: Path) -> Path:
    """The folder as users will find it: a run folder still being written
    (``.<name>.partial-*``, :func:`qubocompress.io.run_folder`) is shown under its final name."""
    name = folder.name
    if name.startswith(".") and PARTIAL_MARK in name:
        return folder.parent / name[1 : name.index(PARTIAL_MARK)]
    return folder


@dataclass(frozen=True)
class Case:
    """One compression in a report: a sweep's finished case, or the run of a run folder.

    Attributes:
        name: the case's name (its folder's name for a run folder).
        route: the route as shown: ``"qubo (sa)"``, ``"uniform"``, ``"ga-acc"``, ...
        target: the target as its label (``"8x"``, ``"32KiB"``).
        seed: the run's seed.
        metrics: the run's whole ``metrics.json``.
        folder: the run's folder (plan.json, spec.json).
    """

    name: str
    route: str
    target: str
    seed: int
    metrics: dict[str, Any]
    folder: Path

    @property
    def compressed(self) -> dict[str, Any]:
        """``metrics["compressed"]``: accuracies (0..1), ratio, model file bytes, fine-tuning."""
        return self.metrics["compressed"]

    @property
    def qubo(self) -> dict[str, Any] | None:
        """``metrics["qubo"]`` for the QUBO route, None for a search."""
        return self.metrics.get("qubo")

    @property
    def is_uniform(self) -> bool:
        """Whether the case is the uniform route."""
        return self.route == UNIFORM_ROUTE

    @property
    def route_seconds(self) -> float:
        """The search route's seconds (analysis + build + solve, or + search, + one evaluation)."""
        return float((self.qubo or self.metrics.get("search") or {}).get("route_seconds", 0.0))

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage of :data:`TIME_STAGES` (``metrics["timing"]``; solve without its polish)."""
        timing = self.metrics.get("timing", {})
        polish = float((self.qubo or {}).get("polish_seconds", 0.0))
        seconds = {stage: float(timing.get(stage, 0.0)) for stage in TIME_STAGES}
        seconds.update(solve=max(seconds["solve"] - polish, 0.0), polish=polish)
        seconds["fine-tune"] = float(self.compressed.get("finetune_seconds", 0.0))
        return seconds

    def spec(self) -> CompressionSpec:
        """The analysed problem (``spec.json``)."""
        path = self.folder / "spec.json"
        try:
            return CompressionSpec.from_dict(read_json(path))
        except (ProblemError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None

    def plan(self, spec: CompressionSpec) -> Plan:
        """The case's plan (``plan.json``), checked against ``spec``."""
        path = self.folder / "plan.json"
        try:
            plan = Plan.from_dict(read_json(path))
            plan.validate(spec)
        except ProblemError as exc:
            raise ArtifactError(f"cannot read {path}: {exc}") from None
        return plan


def route_label(route: str, solver: str | None) -> str:
    """``"qubo (sa)"`` for the QUBO route, the search's name otherwise."""
    return f"{route} ({solver})" if route == QUBO_ROUTE and solver else route


def _check_metrics(metrics: Any, path: Path) -> dict[str, Any]:
    if not isinstance(metrics, dict) or not all(key in metrics for key in ("model", "data", "compressed")):
        raise ArtifactError(f"{path} is not the metrics.json of a qubocompress run (no model, data or compressed)")
    return metrics


@dataclass(frozen=True)
class LayerRow:
    """One layer of a plan beside the uniform plan's (``uniform_*``: None without a uniform plan).

    Attributes:
        name, kind: the layer (``"conv"`` or ``"linear"``).
        out_channels, in_channels: its size before compression.
        weights: its weights before compression.
        bits, kept_filters, kept_weights: the plan's bit-width, output filters and weights it keeps.
    """

    name: str
    kind: str
    out_channels: int
    in_channels: int
    weights: int
    bits: int
    kept_filters: int
    kept_weights: int
    uniform_bits: int | None
    uniform_kept_filters: int | None
    uniform_kept_weights: int | None


@dataclass(frozen=True)
class PlanPair:
    """The plan a report shows, beside the uniform plan at the same target.

    Attributes:
        case: the chosen case.
        spec, plan: its analysed problem and plan.
        uniform: the uniform plan at the same target (None when there is none).
        uniform_label: what the uniform plan is (a case name, or the baseline's bits and prune ratio).
        why: one sentence on how the plan was chosen, for the caption.
    """

    case: Case
    spec: CompressionSpec
    plan: Plan
    uniform: Plan | None
    uniform_label: str
    why: str

    def layers(self) -> list[LayerRow]:
        """Per layer of the spec: its size, the plan's and the uniform plan's bits and kept filters."""
        spec = self.spec
        weights = self.plan.layer_weights(spec)
        uniform_weights = None if self.uniform is None else self.uniform.layer_weights(spec)
        rows = []
        for layer in spec.layers:
            name = layer.name
            rows.append(
                LayerRow(
                    name=name,
                    kind=layer.kind,
                    out_channels=layer.out_channels,
                    in_channels=layer.in_channels,
                    weights=layer.num_weights(),
                    bits=self.plan.bits[name],
                    kept_filters=self.plan.kept_channels(spec, layer.out_group, layer.out_channels),
                    kept_weights=weights[name],
                    uniform_bits=None if self.uniform is None else self.uniform.bits[name],
                    uniform_kept_filters=None
                    if self.uniform is None
                    else self.uniform.kept_channels(spec, layer.out_group, layer.out_channels),
                    uniform_kept_weights=None if uniform_weights is None else uniform_weights[name],
                )
            )
        return rows


@dataclass(frozen=True)
class RunSource:
    """A compress run folder (``metrics.json``, ``plan.json``, ``spec.json``, ...).

    Attributes:
        folder: the folder as shown (:func:`shown_folder`).
        case: its run.
    """

    folder: Path
    case: Case

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json``."""
        return self.case.metrics

    @property
    def baseline(self) -> dict[str, Any] | None:
        """``metrics["baseline_uniform"]``: the uniform plan at the same ratio, when the run made one."""
        return self.metrics.get("baseline_uniform")

    @property
    def baseline_label(self) -> str:
        """``"uniform 4 b + 25% L1"``: the baseline's bit-width and prune ratio."""
        base = self.baseline or {}
        return f"uniform {base.get('bit_width', '?')} b + {100 * base.get('prune_ratio', 0.0):.0f}% L1"

    def command(self) -> str | None:
        """The ``qubocompress compress`` command line of the run's settings (None when they make none)."""
        return command_of_config(self.metrics.get("config"))

    def plan_pair(self) -> PlanPair:
        """The run's plan beside its uniform baseline's (rebuilt from its bit-width and prune ratio)."""
        spec = self.case.spec()
        plan, uniform = self.case.plan(spec), None
        if self.baseline is not None:
            try:
                uniform = uniform_plan(spec, int(self.baseline["bit_width"]), float(self.baseline["prune_ratio"]))
            except (KeyError, TypeError, ValueError, ProblemError) as exc:
                path = self.case.folder / METRICS_FILE
                raise ArtifactError(f"cannot read the uniform baseline in {path}: {exc}") from None
        return PlanPair(
            self.case, spec, plan, uniform, self.baseline_label, f"the run ({self.case.route} at {self.case.target})"
        )


def command_of_config(config: Any) -> str | None:
    """The ``qubocompress compress`` command line of ``metrics["config"]`` (path fields as paths,
    unknown keys ignored, a budget without the ratio the run derived from it; None without a config
    or when its values make no CompressConfig)."""
    if not isinstance(config, dict):
        return None
    values = {}
    for entry in fields(CompressConfig):
        if entry.name in config and not (entry.name == "target_ratio" and config.get("budget") is not None):
            value = config[entry.name]
            values[entry.name] = Path(value) if "Path" in str(entry.type) and value is not None else value
    try:
        return CompressConfig(**values).command_line()
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SweepSource:
    """A sweep folder (``sweep.sqlite`` and ``cases/<case>/``).

    Attributes:
        folder: the folder as shown.
        table: its rows (:func:`qubocompress.sweeps.read_sweep`).
        cases: the finished cases, in the table's order.
    """

    folder: Path
    table: SweepTable
    cases: tuple[Case, ...]

    @property
    def failed(self) -> tuple[SweepRow, ...]:
        """The cases that could not be done (each with its reason)."""
        return tuple(row for row in self.table.rows if not row.ok)

    def targets(self) -> list[str]:
        """The targets of the finished cases, least compressed first (by the mean ratio reached)."""
        reached: dict[str, list[float]] = {}
        for case in self.cases:
            reached.setdefault(case.target, []).append(float(case.compressed["cost_ratio"]))
        return sorted(reached, key=lambda target: sum(reached[target]) / len(reached[target]))

    def plan_pair(self) -> PlanPair:
        """The QUBO case with the best test top-1 at the largest target that has a QUBO and a uniform
        case, beside the uniform case of its target and seed (another seed's when that one is missing).
        Without such a target: the best QUBO case of the largest target (else the best other case)."""
        order = {target: n for n, target in enumerate(self.targets())}
        qubo = [c for c in self.cases if c.qubo is not None]
        uniform = [c for c in self.cases if c.is_uniform]
        shared = {c.target for c in qubo} & {c.target for c in uniform}
        pool = [c for c in qubo if c.target in shared] or qubo or [c for c in self.cases if not c.is_uniform]
        pool = pool or list(self.cases)
        largest = max(pool, key=lambda c: order[c.target]).target
        best = max((c for c in pool if c.target == largest), key=lambda c: c.compressed["test_acc"])
        partners = [c for c in uniform if c.target == best.target and not best.is_uniform]
        partner = next((c for c in partners if c.seed == best.seed), partners[0] if partners else None)
        why = f"{best.name}: the best top-1 of the {'QUBO ' if best.qubo is not None else ''}cases at {largest}"
        why += " (the largest target with a QUBO and a uniform case)" if best.target in shared else ""
        spec = best.spec()
        plan = best.plan(spec)
        if partner is None:
            return PlanPair(best, spec, plan, None, UNIFORM_ROUTE, why + "; no uniform case at that target")
        seed_note = "" if partner.seed == best.seed else f" (seed {partner.seed}: none of seed {best.seed})"
        return PlanPair(best, spec, plan, partner.plan(spec), partner.name, why + f", beside {partner.name}{seed_note}")


@dataclass(frozen=True)
class BenchSource:
    """A bench folder (``results.sqlite`` of ``qubocompress bench``).

    Attributes:
        folder: the folder as shown.
        store_path: its results store.
        rows: one summary row per instance × solver (:func:`qubocompress.bench.runner.summarize`).
    """

    folder: Path
    store_path: Path
    rows: tuple[dict[str, Any], ...]


Source = RunSource | SweepSource | BenchSource


def _sweep_case(row: SweepRow, folder: Path) -> Case:
    return Case(row.case, route_label(row.route, row.solver), row.target, row.seed, row.metrics, folder)


def read_source(folder: Path) -> Source:
    """The run, sweep or bench in ``folder`` (detected by its files: ``sweep.sqlite``, then
    ``metrics.json``, then ``results.sqlite``); an ArtifactError when it holds none of them, a
    sweep has no finished case or a bench no run."""
    shown = shown_folder(folder)
    if (folder / STORE_FILE).is_file():
        table = read_sweep(folder)
        cases = tuple(
            _sweep_case(row, folder / CASES_FOLDER / row.case) for row in table.rows if row.ok and row.metrics
        )
        if not cases:
            raise ArtifactError(
                f"the sweep in {shown} has no finished case ({len(table.rows)} recorded, all failed): nothing to report"
            )
        return SweepSource(shown, table, cases)
    if (folder / METRICS_FILE).is_file():
        metrics = _check_metrics(read_json(folder / METRICS_FILE), folder / METRICS_FILE)
        config = metrics.get("config") or {}
        search = str(config.get("search", QUBO_ROUTE))
        target = config.get("budget") or f"{float(config.get('target_ratio', metrics['compressed']['ratio'])):g}x"
        case = Case(
            shown.name,
            route_label(search, config.get("solver")),
            str(target),
            int(config.get("seed", 0)),
            metrics,
            folder,
        )
        return RunSource(shown, case)
    if (folder / BENCH_STORE).is_file():
        with ResultStore(folder / BENCH_STORE) as store:
            rows = summarize(store)
        if not rows:
            raise ArtifactError(f"the bench store {shown / BENCH_STORE} holds no runs: nothing to report")
        return BenchSource(shown, folder / BENCH_STORE, tuple(rows))
    raise ArtifactError(
        f"{shown} holds no run, sweep or bench results (no {METRICS_FILE}, {STORE_FILE} or {BENCH_STORE})"
    )

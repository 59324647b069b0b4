"""Sweeps (instances × solvers × seeds, resumable) and their aggregation into the results table.

Equal footing (the issue's "GA and RL get the same wall-clock budget as stated, or run to their
own convergence, and the table says which"): :class:`Budget` decides, per sweep, the
``time_limit`` handed to the budgeted solvers (``ga``, ``rl``):

* ``equal`` (default): each run gets ``factor`` × the default solver's (``sa``) mean solve
  seconds per run on the same instance, measured earlier in this sweep (``sa`` runs first). A GA
  or RL run thus costs what one SA run with its default reads costs, and TTS99 per run compares
  them. Without SA runs on the instance they run to their own convergence, and the table says so.
* ``fixed``: every run gets the stated seconds (``--time-limit``).
* ``converge``: no time limit; each stops by its own criterion (generations, episodes).

The budget's mode (not its measured seconds) is part of the run's key, and the seconds given are
kept in the run's info; the solver's own ``info["stopped_by"]`` says what actually stopped it.

The exact solver runs once per instance (seed 0) on a freshly built formulation, so its time is
its own (the certified optimum is not reused from the instance's cache).

On Ray (``run_sweep(cluster=...)``, ``bench --workers N | --ray-address ADDR``) each run is a task
that returns its record and this process alone writes the store; the budgeted solvers' runs are
sent once the default solver's are stored, so an equal budget is what it is without Ray.

Aggregation (see :mod:`qubocompress.solvers.metrics` for the definitions), per instance × solver:
``E*`` (certified, or the best energy any run found), best energy and residual gap (best, and
median over runs), ``p_s_read``, ``p_s_run``, mean/median solve seconds per run, TTS99 per read
and per run, evaluations, stopped_by, and the ratio of the solver's TTS99 to the default
solver's. The headline ``tts99`` is per read when every read is an independent trial (an anneal,
a restart, an SB agent; for ``ga`` and ``rl`` with their default ``keep=1``, one read per
independent GA run / training run; ``exact`` returns one read), and per run when a solver returns
several reads from one trial (a sampleset ``run`` field with repeats, e.g. ``ga``/``rl`` with
``keep`` > 1) — the row's ``tts99_unit`` says which.

With ``polish``, each run also keeps the solver's own reads before the polish, and the row adds
their figures (``p_s_read_raw``, ``p_s_run_raw``, ``e_best_raw``, ``gap_best_raw``, ``tts99_raw``
over the solver's seconds alone, ``feasible_rate_raw``). The ``exact`` row adds the reference's
proof (``exact_certified``, ``exact_gap`` at its end) and, where the formulation reports its
timeline (filters), the seconds to its best incumbent (``exact_best_seconds``: the first optimal
one when certified) and of its starting search (``exact_search_seconds``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import dimod
import numpy as np

from qubocompress.bench.instances import BUILTIN_MODELS, Instance
from qubocompress.problem import Formulation
from qubocompress.problem.bqm_file import read_bqm
from qubocompress.solvers.composites import PolishingComposite
from qubocompress.solvers.metrics import residual_gap, success_mask, tts99
from qubocompress.bench.store import ResultStore, RunKey, RunRecord, options_hash
from qubocompress.cluster import Cluster, Crashed, Session, connect
from qubocompress.errors import QubocompressError, SolverError
from qubocompress.solvers.registry import SOLVER_NAMES, make_sampler
from qubocompress.names import CLOUD_SOLVERS as CLOUD_SOLVER_NAMES

DEFAULT_SOLVER = "sa"
EXACT_SOLVER = "exact"
CLOUD_SOLVERS = CLOUD_SOLVER_NAMES
BUDGETED_SOLVERS = ("ga", "rl")
# Solvers whose reads are not "more of the same" (independent GA/RL runs sharing one time limit,
# one certified answer): --num-reads leaves them at their own defaults.
OWN_READS_SOLVERS = ("ga", "rl", "exact")
DEFAULT_EXACT_TIME_LIMIT = 60.0
# The shortest time limit an "equal" budget hands out (s): a default-solver run can be faster.
MIN_EQUAL_TIME_LIMIT = 1e-3

Log = Callable[[str], None]


def offline_solvers() -> tuple[str, ...]:
    """Every registered solver except the cloud ones (``qpu``, ``hybrid``): the default of a sweep."""
    return tuple(name for name in SOLVER_NAMES if name not in CLOUD_SOLVERS)


def is_builtin_model_instance(name: str) -> bool:
    """Whether ``name`` is a built-in model's instance (measured, its synthetic stand-in, or a
    budget instance ``<model>-budget-<ratio>x``)."""
    return any(name in (model, f"{model}-synthetic") or name.startswith(f"{model}-budget-") for model in BUILTIN_MODELS)


@dataclass(frozen=True)
class Budget:
    """Wall-clock budget of the budgeted solvers (``ga``, ``rl``); see the module docstring.

    Attributes:
        mode: ``"equal"``, ``"fixed"`` or ``"converge"``.
        seconds: the budget of ``"fixed"`` (> 0).
        factor: the multiple of the default solver's mean run time in ``"equal"`` (> 0).
    """

    mode: Literal["equal", "fixed", "converge"] = "equal"
    seconds: float | None = None
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("equal", "fixed", "converge"):
            raise SolverError(f"unknown budget mode {self.mode!r}; use equal, fixed or converge")
        if self.mode == "fixed" and not (self.seconds is not None and math.isfinite(self.seconds) and self.seconds > 0):
            raise SolverError(f"time limit must be a number of seconds > 0, got {self.seconds}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise SolverError(f"budget factor must be a number > 0, got {self.factor}")

    def key(self) -> str:
        """What enters the runs' key."""
        if self.mode == "fixed":
            return f"fixed:{self.seconds:g}s"
        if self.mode == "equal":
            return f"equal:{self.factor:g}x{DEFAULT_SOLVER}"
        return "converge"


@dataclass
class SweepConfig:
    """What a sweep runs.

    Attributes:
        solvers: solver names, in any order (the default solver runs first, budgeted ones last).
        seeds: solver seeds; the exact solver runs once (seed 0).
        solver_options: constructor options per solver name (e.g. ``{"sb": {"device": "cuda"}}``).
        num_reads: reads per run for the read-based solvers (None = each solver's default).
        budget: the budgeted solvers' time limit.
        exact_time_limit: seconds for the generic exact solver (bare BQMs; the formulation's
            own enumeration needs no limit).
        explicit: the solvers were named by the user: one that cannot be built (missing
            package, no token) is an error rather than skipped.
        polish: pass every run's reads through the instance formulation's ``polish`` (paper
            form: each group's pruned channels made its least important ones) before scoring,
            as ``compress`` does; its time counts as solve time. Not for ``exact``, nor for
            bare ``.bqm`` instances, which have no formulation.
    """

    solvers: Sequence[str]
    seeds: Sequence[int] = (0, 1, 2)
    solver_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_reads: int | None = None
    budget: Budget = field(default_factory=Budget)
    exact_time_limit: float = DEFAULT_EXACT_TIME_LIMIT
    explicit: bool = False
    polish: bool = False

    def validate(self) -> None:
        """Unknown solvers, no seeds, bad reads or limits: a one-line error."""
        unknown = [name for name in self.solvers if name not in SOLVER_NAMES]
        if unknown:
            raise SolverError(f"unknown solver {unknown[0]!r}; choose from: {', '.join(SOLVER_NAMES)}")
        if not self.solvers:
            raise SolverError("no solver to run; pass --solvers, e.g. --solvers sa,tabu")
        if not self.seeds:
            raise SolverError("no seed to run; --seeds must be >= 1")
        if self.num_reads is not None and self.num_reads < 1:
            raise SolverError(f"--num-reads must be >= 1, got {self.num_reads}")
        if not (math.isfinite(self.exact_time_limit) and self.exact_time_limit > 0):
            raise SolverError(f"exact time limit must be a number of seconds > 0, got {self.exact_time_limit}")

    def ordered_solvers(self) -> list[str]:
        """The default solver first, then the others, then the budgeted ones (they need its times)."""
        names = list(dict.fromkeys(self.solvers))
        return sorted(names, key=lambda n: (n != DEFAULT_SOLVER, n in BUDGETED_SOLVERS))

    def run_options(self, solver: str) -> dict[str, Any]:
        """The options that define ``solver``'s runs (constructor options, reads, budget): the key's part."""
        options: dict[str, Any] = {"constructor": dict(self.solver_options.get(solver, {}))}
        if solver == EXACT_SOLVER:
            options["time_limit"] = self.exact_time_limit
        elif solver in BUDGETED_SOLVERS:
            options["budget"] = self.budget.key()
        elif solver not in OWN_READS_SOLVERS and self.num_reads is not None:
            options["num_reads"] = self.num_reads
        if self.polish and solver != EXACT_SOLVER:
            options["polish"] = True
        return options


@dataclass
class SweepOutcome:
    """What a sweep did: runs executed now, runs found in the store, solvers skipped and why."""

    executed: int = 0
    reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def _sampler_for(
    name: str, instance: Instance, config: SweepConfig
) -> tuple[dimod.Sampler, dimod.BinaryQuadraticModel, float, Formulation | None]:
    """(sampler, the BQM it solves, extra build seconds, the formulation it is built for) for one run.

    A formulation's recommended options for the solver (the budget form's ``sa`` schedule, as
    ``compress`` uses it) come first; the sweep's own options override them.
    """
    recommended = {} if instance.formulation is None else instance.formulation.recommended_sampler_options(name)
    options = {**recommended, **config.solver_options.get(name, {})}
    if name == EXACT_SOLVER:
        fresh = instance.fresh_formulation()
        options.setdefault("time_limit", config.exact_time_limit)
        if fresh is None:
            return make_sampler(name, None, **options), instance.bqm, 0.0, None
        start = time.perf_counter()
        bqm = fresh.bqm
        return make_sampler(name, fresh, **options), bqm, time.perf_counter() - start, fresh
    return make_sampler(name, instance.formulation, **options), instance.bqm, 0.0, instance.formulation


def probe_solvers(config: SweepConfig, instance: Instance | None) -> dict[str, str]:
    """Build every solver once; returns {name: reason} of those that cannot be built.

    With ``config.explicit``, the first failure is raised instead (the user asked for it).
    """
    skipped: dict[str, str] = {}
    for name in config.ordered_solvers():
        try:
            formulation = None if instance is None else instance.formulation
            make_sampler(name, formulation, **config.solver_options.get(name, {}))
        except SolverError as exc:
            if config.explicit:
                raise
            skipped[name] = str(exc)
    return skipped


def _default_solver_seconds(store: ResultStore, instance: Instance, config: SweepConfig) -> float | None:
    """Mean solve seconds per run of the default solver on ``instance`` with this sweep's options."""
    wanted = options_hash(config.run_options(DEFAULT_SOLVER))
    times = [
        run.solve_seconds
        for run in store.runs(instance=instance.name, solver=DEFAULT_SOLVER)
        if run.status == "ok" and run.key.instance_sha256 == instance.sha256 and run.key.options_hash == wanted
    ]
    return statistics.fmean(times) if times else None


def _budget_kwargs(sampler: dimod.Sampler, config: SweepConfig, reference: float | None) -> tuple[dict[str, Any], str]:
    """(sample keywords, description) of a budgeted solver's time limit on an instance whose
    default-solver runs took ``reference`` seconds each on average (None: none ran)."""
    budget = config.budget
    if budget.mode == "converge":
        return {}, "own convergence"
    if "time_limit" not in sampler.parameters:
        return {}, "own convergence (the solver takes no time limit)"
    if budget.mode == "fixed":
        assert budget.seconds is not None
        return {"time_limit": budget.seconds}, f"time limit {budget.seconds:g} s (stated)"
    if reference is None:
        return {}, f"own convergence (no {DEFAULT_SOLVER} run to match)"
    seconds = max(budget.factor * reference, MIN_EQUAL_TIME_LIMIT)
    return {"time_limit": seconds}, f"time limit {seconds:.3g} s (= {budget.factor:g}× {DEFAULT_SOLVER} run)"


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Scalars, and dicts/lists of them (two levels deep), from a SampleSet's info; else None."""
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = value.item() if isinstance(value, (np.integer, np.floating)) else value
        return number
    if depth < 2 and isinstance(value, dict):
        items = {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not None}
    if depth < 2 and isinstance(value, (list, tuple)) and len(value) <= 64:
        return [_jsonable(v, depth + 1) for v in value]
    return None


def _independent_reads(record: np.recarray) -> bool:
    """False when several reads come from one trial: a ``run`` field (GA/RL) with repeated values."""
    if "run" not in (record.dtype.names or ()):
        return True
    runs = np.asarray(record["run"])
    return bool(np.unique(runs).size == runs.size and np.all(record.num_occurrences == 1))


def _run_once(
    name: str, instance: Instance, seed: int, config: SweepConfig, reference: float | None, key: RunKey
) -> RunRecord:
    """One solver run; a solver's refusal (QubocompressError) becomes an ``"error"`` record.
    ``reference``: the default solver's mean seconds per run on ``instance`` (a budgeted solver's
    equal budget; :func:`_default_solver_seconds`)."""
    options = config.run_options(name)
    info: dict[str, Any] = {}
    raw = None
    try:
        sampler, bqm, extra_build, formulation = _sampler_for(name, instance, config)
        kwargs: dict[str, Any] = {}
        if "seed" in sampler.parameters:
            kwargs["seed"] = seed
        if name in BUDGETED_SOLVERS:
            budget_kwargs, info["budget"] = _budget_kwargs(sampler, config, reference)
            kwargs.update(budget_kwargs)
        elif name not in OWN_READS_SOLVERS and config.num_reads is not None and "num_reads" in sampler.parameters:
            kwargs["num_reads"] = config.num_reads
        polishing = config.polish and name != EXACT_SOLVER and instance.formulation is not None
        if polishing:
            sampler = PolishingComposite(sampler, instance.formulation)
        start = time.perf_counter()
        sampleset = sampler.sample(bqm, **kwargs)
        if polishing and len(sampleset):
            raw = sampleset.info.pop("raw")
            solve_seconds = raw.info.get("timing", {}).get("solve_seconds")
            timing = sampleset.info["timing"]
            if solve_seconds is not None:
                timing["solve_seconds"] = solve_seconds + timing["polish_seconds"]
            info["raw"] = _raw_reads(raw, instance, solve_seconds)
        if name == EXACT_SOLVER and formulation is not None:
            # the reference's own figures after its solve (the filters form's timeline: when its
            # search and MIQP found their best plan and proof)
            info["reference"] = _jsonable(formulation.describe())
        wall = time.perf_counter() - start
    except QubocompressError as exc:
        return RunRecord(key, options, "error", None, 0, 0, 0.0, info={**info, "error": str(exc)})
    record = sampleset.record
    # each read as its formulation measures it against E* (the BQM energy, or a slack-free budget
    # encoding's damage, inf when infeasible: Formulation.read_objectives)
    if instance.formulation is None:
        energies = np.asarray(record.energy, dtype=np.float64)
    else:
        energies = instance.formulation.read_objectives(sampleset)
    occurrences = np.asarray(record.num_occurrences, dtype=np.int64)
    timing = dict(sampleset.info.get("timing", {}))
    e_best = float(energies.min()) if energies.size else None
    kept = {k: v for k, v in sampleset.info.items() if k not in ("timing", "evaluations", "stopped_by")}
    info.update({"wall_seconds": wall, "timing": _jsonable(timing), "solver_info": _jsonable(kept)})
    info["independent_reads"] = _independent_reads(record)
    if instance.formulation is not None and instance.formulation.constrained and energies.size:
        feasible = instance.formulation.feasible_reads(sampleset)
        info["feasible_rate"] = float(occurrences[feasible].sum() / occurrences.sum())
    if "time_limit" in kwargs:
        info["time_limit"] = kwargs["time_limit"]
    evaluations = sampleset.info.get("evaluations")
    return RunRecord(
        key=key,
        options=options,
        status="ok",
        e_best=e_best,
        reads=int(occurrences.sum()),
        successes=_successes(energies, occurrences, instance.e_star),
        solve_seconds=float(timing.get("solve_seconds", wall)),
        embed_seconds=float(timing.get("embedding_seconds", 0.0)),
        build_seconds=instance.build_seconds + extra_build,
        evaluations=None if evaluations is None else int(evaluations),
        stopped_by=sampleset.info.get("stopped_by"),
        info=info,
        energies=energies,
        occurrences=occurrences,
    )


def _successes(energies: np.ndarray, occurrences: np.ndarray, e_star: float | None) -> int:
    """Reads at ``e_star`` (0 when it is unknown)."""
    if e_star is None or not energies.size:
        return 0
    return int(occurrences[success_mask(energies, e_star)].sum())


def bqm_bytes(bqm: dimod.BinaryQuadraticModel) -> bytes:
    """``bqm`` in dimod's own file format: how a Ray task is sent its instance's BQMs."""
    return bqm.to_file().read()


def run_bench_task(
    instance: Instance, name: str, seed: int, config: SweepConfig, reference: float | None, key: RunKey
) -> RunRecord:
    """One run on a Ray worker (:func:`_run_once`; module-level, so that the workers import it by name)."""
    return _run_once(name, instance, seed, config, reference, key)


def _raw_reads(raw: dimod.SampleSet, instance: Instance, solve_seconds: float | None) -> dict[str, Any]:
    """The solver's own reads before the polish, for the summary's raw columns: each read's
    objective and count, the solver's seconds (None: not reported) and its feasibility rate."""
    formulation = instance.formulation
    assert formulation is not None  # only formulations polish
    occurrences = np.asarray(raw.record.num_occurrences, dtype=np.int64)
    figures: dict[str, Any] = {
        "energies": formulation.read_objectives(raw).tolist(),
        "occurrences": occurrences.tolist(),
        "solve_seconds": solve_seconds,
    }
    if formulation.constrained:
        figures["feasible_rate"] = float(occurrences[formulation.feasible_reads(raw)].sum() / occurrences.sum())
    return figures


def run_key(instance: Instance, solver: str, seed: int, config: SweepConfig) -> RunKey:
    """The store key of one run."""
    return RunKey(instance.name, instance.sha256, solver, seed, options_hash(config.run_options(solver)))


def _planned_runs(
    instances: Sequence[Instance], solvers: Sequence[str], config: SweepConfig
) -> list[tuple[Instance, str, int]]:
    return [
        (instance, name, seed)
        for instance in instances
        for name in solvers
        for seed in ((0,) if name == EXACT_SOLVER else config.seeds)
    ]


def run_sweep(
    instances: Sequence[Instance],
    config: SweepConfig,
    store: ResultStore,
    progress: bool = True,
    log: Log | None = None,
    cluster: Cluster | None = None,
) -> SweepOutcome:
    """Run every (instance, solver, seed) not already in ``store``; each run is stored as it ends.

    Progress: a rich bar (``progress``), else one ``log`` line per run (when ``log`` is given).
    ``cluster``: run them as Ray tasks there (:mod:`qubocompress.cluster`), each returning its
    record, which this process alone writes: first every run but the budgeted solvers', then theirs
    (an equal budget needs the default solver's times). A run whose worker died on every retry is an
    ``"error"`` record; a run Ray retried is written once (it returns once).
    """
    config.validate()
    if cluster is not None:
        cluster.check()
    outcome = SweepOutcome(skipped=probe_solvers(config, instances[0] if instances else None))
    solvers = [name for name in config.ordered_solvers() if name not in outcome.skipped]
    if log is not None:
        for name, reason in outcome.skipped.items():
            log(f"skipping solver {name}: {reason}")
    for instance in instances:
        _store_instance(store, instance)
    planned = _planned_runs(instances, solvers, config)
    todo = [(inst, name, seed) for inst, name, seed in planned if not store.has_run(run_key(inst, name, seed, config))]
    outcome.reused = len(planned) - len(todo)
    with ExitStack() as held:
        session = held.enter_context(connect(cluster)) if cluster is not None and cluster.enabled and todo else None
        advance = held.enter_context(_progress(progress, len(todo)))
        quiet_log = None if progress else log
        if session is None:
            records = _runs_here(todo, config, store, advance, quiet_log)
        else:
            records = _runs_on(session, todo, config, store, advance, quiet_log)
        for instance, record in records:
            # reads at E* as known now (a Ray task saw the E* of when it was sent)
            record.successes = _successes(record.energies, record.occurrences, instance.e_star)
            store.add_run(record)
            outcome.executed += 1
            if not instance.certified and record.e_best is not None:
                if instance.e_star is None or record.e_best < instance.e_star:
                    instance.e_star = record.e_best
                    _store_instance(store, instance)
        advance(None)
    return outcome


def _store_instance(store: ResultStore, instance: Instance) -> None:
    store.add_instance(
        instance.name,
        instance.sha256,
        instance.num_variables,
        instance.num_interactions,
        instance.e_star,
        instance.certified,
        instance.source,
        instance.build_seconds,
    )


def _label(instance: Instance, name: str, seed: int) -> str:
    return f"{instance.name} ({instance.num_variables} vars) · {name} · seed {seed}"


def _reference(store: ResultStore, instance: Instance, name: str, config: SweepConfig) -> float | None:
    """The default solver's mean seconds on ``instance`` for a budgeted solver's run, else None."""
    return _default_solver_seconds(store, instance, config) if name in BUDGETED_SOLVERS else None


def _runs_here(
    todo: Sequence[tuple[Instance, str, int]],
    config: SweepConfig,
    store: ResultStore,
    advance: Callable[[str | None], None],
    log: Log | None,
) -> Iterator[tuple[Instance, RunRecord]]:
    """The runs one after the other in this process (each stored before the next starts)."""
    for number, (instance, name, seed) in enumerate(todo, 1):
        label = _label(instance, name, seed)
        advance(label)
        if log is not None:
            log(f"[{number}/{len(todo)}] {label}")
        reference = _reference(store, instance, name, config)
        yield instance, _run_once(name, instance, seed, config, reference, run_key(instance, name, seed, config))


def _runs_on(
    session: Session,
    todo: Sequence[tuple[Instance, str, int]],
    config: SweepConfig,
    store: ResultStore,
    advance: Callable[[str | None], None],
    log: Log | None,
) -> Iterator[tuple[Instance, RunRecord]]:
    """The runs as Ray tasks, each instance sent once; the budgeted solvers' after the others'
    are stored (their references are read from the store then)."""
    if log is not None:
        log(f"running {len(todo)} runs on {session.cluster.describe()} ({session.cpus} CPUs)")
    session.register(dimod.BinaryQuadraticModel, bqm_bytes, read_bqm)
    sent = {id(instance): session.put(instance) for instance, _, _ in todo}
    number = 0
    for budgeted in (False, True):
        phase = [run for run in todo if (run[1] in BUDGETED_SOLVERS) == budgeted]
        arguments = [
            (
                sent[id(inst)],
                name,
                seed,
                config,
                _reference(store, inst, name, config),
                run_key(inst, name, seed, config),
            )
            for inst, name, seed in phase
        ]
        for index, record in session.run_unordered(run_bench_task, arguments, {}):
            instance, name, seed = phase[index]
            if isinstance(record, Crashed):
                key = run_key(instance, name, seed, config)
                record = RunRecord(
                    key, config.run_options(name), "error", None, 0, 0, 0.0, info={"error": record.reason}
                )
            number += 1
            label = _label(instance, name, seed)
            advance(label)
            if log is not None:
                log(f"[{number}/{len(todo)}] {label}: {record.status}")
            yield instance, record


class _progress:
    """A rich progress bar over the runs (or nothing); ``advance(label)`` starts the next run."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and total > 0
        self.total = total

    def __enter__(self) -> Callable[[str | None], None]:
        if not self.enabled:
            return lambda label: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task("bench", total=self.total)
        self._started = False

        def advance(label: str | None) -> None:
            if self._started:
                self._bar.advance(self._task)
            self._started = label is not None
            if label is not None:
                self._bar.update(self._task, description=label)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()


# --------------------------------------------------------------------------- aggregation


def _ratio(value: float, reference: float) -> float:
    """value / reference with ∞ handled: ∞/∞ and 0/0 are NaN, x/∞ is 0, ∞/x is ∞."""
    if math.isinf(value) and math.isinf(reference):
        return math.nan
    if math.isinf(reference):
        return 0.0
    if math.isinf(value):
        return math.inf
    if reference == 0:
        return math.nan if value == 0 else math.inf
    return value / reference


def summarize(
    store: ResultStore,
    instances: Iterable[Instance] | None = None,
    config: SweepConfig | None = None,
    default_solver: str = DEFAULT_SOLVER,
) -> list[dict[str, Any]]:
    """One row per instance × solver (× options, when several were run), from the stored runs.

    With ``instances``/``config``, only the runs of those instance versions and of this sweep's
    options are summarised. Rows are ordered by instance size, then solver registry order.
    """
    known = store.instances()
    if instances is not None:
        wanted = {(inst.name, inst.sha256) for inst in instances}
        known = [row for row in known if (row["name"], row["sha256"]) in wanted]
    option_hashes = None
    if config is not None:
        option_hashes = {name: options_hash(config.run_options(name)) for name in config.solvers}
    rows: list[dict[str, Any]] = []
    for meta in sorted(known, key=lambda m: (m["num_variables"], m["name"])):
        runs = [r for r in store.runs(instance=meta["name"]) if r.key.instance_sha256 == meta["sha256"]]
        if option_hashes is not None:
            runs = [r for r in runs if option_hashes.get(r.key.solver) == r.key.options_hash]
        e_star, certified = _instance_e_star(meta, runs)
        groups: dict[tuple[str, str], list[RunRecord]] = {}
        for run in runs:
            groups.setdefault((run.key.solver, run.key.options_hash), []).append(run)
        order = {name: i for i, name in enumerate(SOLVER_NAMES)}
        instance_rows = [
            _summary_row(meta, solver, group, e_star, certified)
            for (solver, _), group in sorted(groups.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1]))
        ]
        reference = next(
            (r["tts99"] for r in instance_rows if r["solver"] == default_solver and r["status"] == "ok"), None
        )
        heuristic_tts = [r["tts99"] for r in instance_rows if r["solver"] != EXACT_SOLVER and r["status"] == "ok"]
        for row in instance_rows:
            row["tts99_ratio_to_default"] = (
                _ratio(row["tts99"], reference) if reference is not None and row["status"] == "ok" else None
            )
            if row["solver"] == EXACT_SOLVER and row["status"] == "ok":
                # only an exact run that reached E* (certified, or the best known) is faster at all
                row["exact_faster_than_every_heuristic"] = (
                    bool(heuristic_tts) and row["p_s_run"] == 1 and all(row["t_run_mean"] < t for t in heuristic_tts)
                )
        rows.extend(instance_rows)
    return rows


def _instance_e_star(meta: dict[str, Any], runs: Sequence[RunRecord]) -> tuple[float | None, bool]:
    """The certified E*, or the best energy known from the instance and every run on it."""
    if meta["certified"] and meta["e_star"] is not None:
        return float(meta["e_star"]), True
    candidates = [meta["e_star"]] if meta["e_star"] is not None else []
    candidates += [r.e_best for r in runs if r.status == "ok" and r.e_best is not None]
    return (min(candidates), False) if candidates else (None, False)


def _summary_row(
    meta: dict[str, Any], solver: str, runs: list[RunRecord], e_star: float | None, certified: bool
) -> dict[str, Any]:
    ok = [r for r in runs if r.status == "ok" and r.reads > 0]
    row: dict[str, Any] = {
        "instance": meta["name"],
        "instance_sha256": meta["sha256"],
        "source": meta["source"],
        "variables": meta["num_variables"],
        "interactions": meta["num_interactions"],
        "solver": solver,
        "options": runs[0].options,
        "options_hash": runs[0].key.options_hash,
        "e_star": e_star,
        "e_star_certified": certified,
        "runs": len(ok),
        "build_seconds": meta["build_seconds"],
    }
    if not ok:
        errors = sorted({str(r.info.get("error", "no reads")) for r in runs})
        return {**row, "status": "error: " + "; ".join(errors), "tts99": math.inf}
    reads = sum(r.reads for r in ok)
    solve = [r.solve_seconds for r in ok]
    if e_star is None:
        hits_read = 0
        hits_run = [False] * len(ok)
    else:
        hits_read = sum(int(r.occurrences[success_mask(r.energies, e_star)].sum()) for r in ok)
        hits_run = [bool(success_mask([r.e_best], e_star)[0]) for r in ok]
    p_read = hits_read / reads
    p_run = sum(hits_run) / len(ok)
    t_read = sum(solve) / reads
    t_run = statistics.fmean(solve)
    tts_read = tts99(t_read, p_read)
    tts_run = tts99(t_run, p_run)
    run_based = not all(r.info.get("independent_reads", True) for r in ok)
    e_best = min(r.e_best for r in ok if r.e_best is not None)
    gaps = [residual_gap(r.e_best, e_star) for r in ok] if e_star is not None else []
    evaluations = [r.evaluations for r in ok if r.evaluations is not None]
    budgets = sorted({str(r.info["budget"]) for r in ok if "budget" in r.info})
    feasible = [(r.info["feasible_rate"], r.reads) for r in ok if "feasible_rate" in r.info]
    return {
        **row,
        "status": "ok",
        "reads": reads,
        "e_best": e_best,
        "gap_best": residual_gap(e_best, e_star) if e_star is not None else None,
        "gap_median": statistics.median(gaps) if gaps else None,
        "p_s_read": p_read,
        "p_s_run": p_run,
        "t_read": t_read,
        "t_run_mean": t_run,
        "t_run_median": statistics.median(solve),
        "embed_seconds_mean": statistics.fmean(r.embed_seconds for r in ok),
        "tts99_read": tts_read,
        "tts99_run": tts_run,
        "tts99": tts_run if run_based else tts_read,
        "tts99_unit": "run" if run_based else "read",
        "evaluations_mean": statistics.fmean(evaluations) if evaluations else None,
        "stopped_by": ", ".join(sorted({r.stopped_by for r in ok if r.stopped_by})) or None,
        "budget": "; ".join(budgets) or None,
        "feasible_rate": sum(rate * reads for rate, reads in feasible) / sum(reads for _, reads in feasible)
        if feasible
        else None,
        **_raw_figures(ok, e_star, run_based),
        **(_exact_figures(ok) if solver == EXACT_SOLVER else {}),
    }


def _raw_figures(runs: list[RunRecord], e_star: float | None, run_based: bool) -> dict[str, Any]:
    """The ``*_raw`` columns of polished runs: the solver's reads before the polish scored the same
    way (p_s per read and run, best energy and gap, TTS99 in the row's unit over the solver's own
    seconds, feasibility); nothing when some run has no raw reads."""
    raws = [run.info.get("raw") for run in runs]
    if not raws or any(raw is None for raw in raws):
        return {}
    energies = [np.asarray(raw["energies"], dtype=np.float64) for raw in raws]
    occurrences = [np.asarray(raw["occurrences"], dtype=np.int64) for raw in raws]
    reads = sum(int(c.sum()) for c in occurrences)
    hits = [success_mask(e, e_star) if e_star is not None else np.zeros(e.size, bool) for e in energies]
    p_read = sum(int(c[h].sum()) for c, h in zip(occurrences, hits)) / reads
    p_run = sum(bool(h.any()) for h in hits) / len(raws)
    seconds = [raw["solve_seconds"] for raw in raws]
    tts = None
    if all(t is not None for t in seconds):
        tts = tts99(statistics.fmean(seconds), p_run) if run_based else tts99(sum(seconds) / reads, p_read)
    e_best = min(float(e.min()) for e in energies)
    rates = [(raw["feasible_rate"], int(c.sum())) for raw, c in zip(raws, occurrences) if "feasible_rate" in raw]
    return {
        "p_s_read_raw": p_read,
        "p_s_run_raw": p_run,
        "e_best_raw": e_best,
        "gap_best_raw": residual_gap(e_best, e_star) if e_star is not None and math.isfinite(e_best) else None,
        "tts99_raw": tts,
        "feasible_rate_raw": sum(r * n for r, n in rates) / sum(n for _, n in rates) if rates else None,
    }


def _exact_figures(runs: list[RunRecord]) -> dict[str, Any]:
    """The exact reference's proof and timeline: certified (every run), its proven gap at the end
    (the largest), and where the formulation reports them (filters) the mean seconds to its best
    incumbent — the first optimal one when certified — and of its starting search."""
    infos = [run.info.get("solver_info") or {} for run in runs]
    figures: dict[str, Any] = {
        "exact_certified": all(bool(info.get("certified")) for info in infos),
        "exact_gap": max(float(info.get("gap", 0.0)) for info in infos),
    }
    timelines = [(run.info.get("reference") or {}).get("reference_timeline") for run in runs]
    if timelines and all(timelines):
        best = [timeline["best_seconds"] for timeline in timelines]
        figures["exact_best_seconds"] = None if None in best else statistics.fmean(best)
        figures["exact_search_seconds"] = statistics.fmean(timeline["search_seconds"] for timeline in timelines)
        figures["exact_best_found_by"] = ", ".join(sorted({str(timeline["best_found_by"]) for timeline in timelines}))
    return figures


def tts_ratio_lines(rows: Sequence[dict[str, Any]], solvers: Sequence[str] = BUDGETED_SOLVERS) -> list[str]:
    """``TTS99(x)/TTS99(sa)`` per instance for each of ``solvers`` (one line each)."""
    lines = []
    for solver in solvers:
        parts = [
            f"{row['instance']} {_format_ratio(row['tts99_ratio_to_default'])}"
            for row in rows
            if row["solver"] == solver and row.get("tts99_ratio_to_default") is not None
        ]
        if parts:
            lines.append(f"TTS99({solver})/TTS99({DEFAULT_SOLVER}): " + ", ".join(parts))
    return lines


def _format_ratio(value: float) -> str:
    if math.isnan(value):
        return "n/a (both never hit E*)"
    if math.isinf(value):
        return "∞ (never hit E*)"
    return f"{value:.3g}×"


def target_check(rows: Sequence[dict[str, Any]]) -> str | None:
    """The issue's target: the default solver reaches E* with p_s_run ≥ 0.99 on every built-in-model instance."""
    checked = [r for r in rows if r["solver"] == DEFAULT_SOLVER and is_builtin_model_instance(r["instance"])]
    if not checked:
        return None
    failing = [r["instance"] for r in checked if r["status"] != "ok" or r["p_s_run"] < 0.99]
    detail = ", ".join(f"{r['instance']} {r.get('p_s_run', 0):.2f} ({r['runs']} runs)" for r in checked)
    verdict = "met" if not failing else f"NOT met on {', '.join(failing)}"
    return f"target {DEFAULT_SOLVER} p_s_run ≥ 0.99 on every built-in-model instance: {verdict} [{detail}]"

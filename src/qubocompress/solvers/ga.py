"""``ga``: a genetic algorithm (pymoo) on the BQM's own energy, as a baseline for the annealers.

Genome: one bit per BQM variable (all of them). Penalty-free: every genome is a valid plan of the
paper form, which has no constraints, so there is no repair step and no penalty (a constrained
formulation brings its penalties inside its BQM). Fitness: the BQM energy, evaluated for the
whole offspring at once in matrix form (:class:`~qubocompress.solvers.base.BinaryQuadratic`).

Operators: uniformly random initial genomes (``BinaryRandomSampling``), binary tournament
selection, two-point (default) or uniform crossover, bit-flip mutation (each child mutated, each
bit with probability 1/n), duplicate elimination, elitist survival of the ``population`` best.

Budget, per run: ``generations`` (default 1,000), optionally ``max_evaluations`` and a wall-clock
``time_limit`` (seconds for the whole call, shared by the runs), and convergence, which is any of:
the best energy has not improved for ``patience`` generations; the search space is used up, on a BQM
of n <= :data:`ENUMERABLE_VARIABLES` variables: once a run has made 2**n evaluations (an exhaustive
search's cost), or at once if ``population`` >= 2**n, it evaluates in one batch the genomes it has
not met yet (so it may overrun ``max_evaluations`` or ``time_limit`` by under 2**n evaluations) and
stops, its population the best of all genomes and its answer the optimum; or mating finds no genome
outside the population in 100 tries (pymoo's own stop). Without the last two a tiny BQM ran
``patience`` generations on a solved problem (2 variables: 30-80 s of matings that yield only
duplicates). Neither fires at the defaults on over 16 variables (1,000 generations of 100 make under
2**17 evaluations), so the benchmarks' runs (100+ variables) are as before.
``info["stopped_by"]`` says which ended the runs:
``"time_limit"`` if the clock cut any run short, else ``"convergence"`` if every run converged,
else ``"evaluations"`` (the generation / evaluation budget).

Reads: ``num_reads`` independent runs (seeded from one ``SeedSequence``), each contributing the
``keep`` best distinct genomes of its final population (default 1: the run's answer, so a success
probability over reads is one over runs); the ``run`` field says which run a read came from.
"""

from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.solvers.base import (
    BinaryQuadratic,
    Requirement,
    combined_stop_reason,
    empty_sampleset,
    known_options,
    positive_int,
    read_seeds,
    require_all,
    time_limit_seconds,
    timed_sampleset,
)

CROSSOVERS = ("two_point", "uniform")
GA_REQUIRES: tuple[Requirement, ...] = (("pymoo", "ga", "pymoo"),)
ENUMERABLE_VARIABLES = 16  # up to this many variables a run marks each evaluated genome in a 2**n table (64 KiB)


class GeneticAlgorithmSampler(dimod.Sampler):
    """pymoo GA over the binary genome of all BQM variables (see the module docstring).

    Args:
        **defaults: overrides of :attr:`DEFAULTS`: ``num_reads`` (independent runs), ``population``,
            ``generations``, ``max_evaluations`` (None = no cap), ``time_limit`` (s, None = none),
            ``patience`` (generations without improvement; None = never converge), ``crossover``
            (``"two_point"`` | ``"uniform"``), ``keep`` (reads per run).
    """

    DEFAULTS: dict[str, Any] = {
        "num_reads": 1,
        "population": 100,
        "generations": 1000,
        "max_evaluations": None,
        "time_limit": None,
        "patience": 200,
        "crossover": "two_point",
        "keep": 1,
    }

    def __init__(self, **defaults: Any) -> None:
        require_all(GA_REQUIRES, "ga")
        self.defaults = self._checked({**self.DEFAULTS, **defaults})

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.DEFAULTS, "genetic algorithm")
        for key in ("num_reads", "population", "generations", "keep"):
            positive_int(params[key], key, "solver 'ga'")
        for key in ("max_evaluations", "patience"):
            if params[key] is not None:
                positive_int(params[key], key, "solver 'ga'")
        time_limit_seconds(params["time_limit"], "solver 'ga'")
        if params["crossover"] not in CROSSOVERS:
            raise SolverError(
                f"solver 'ga': crossover must be one of {', '.join(CROSSOVERS)}, got {params['crossover']!r}"
            )
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """:attr:`DEFAULTS` keys and ``seed``."""
        return {key: [] for key in (*self.DEFAULTS, "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults in use."""
        return {"defaults": dict(self.defaults)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Run ``num_reads`` independent GA runs on ``bqm``; keyword arguments override the defaults."""
        params = self._checked({**self.defaults, **kwargs})
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"parameters": params, "stopped_by": "evaluations", "evaluations": 0})
        start = time.perf_counter()
        qubo = BinaryQuadratic(bqm)
        runs = params["num_reads"]
        limit = params["time_limit"]
        genomes: list[np.ndarray] = []
        run_index: list[np.ndarray] = []
        reports: list[dict[str, Any]] = []
        for run, run_seed in enumerate(read_seeds(seed, runs)):
            # each run may use its share of the time limit plus whatever earlier runs left over
            deadline = None if limit is None else start + limit * (run + 1) / runs
            best, report = self._run(qubo, params, int(run_seed), deadline)
            genomes.append(best)
            run_index.append(np.full(len(best), run, dtype=np.int32))
            reports.append(report)
        seconds = time.perf_counter() - start
        info = {
            "parameters": params,
            "stopped_by": combined_stop_reason([report["stopped_by"] for report in reports]),
            "evaluations": sum(report["evaluations"] for report in reports),
            "generations": sum(report["generations"] for report in reports),
            "runs": reports,
        }
        return timed_sampleset(
            bqm,
            qubo.to_vartype(np.concatenate(genomes)),
            qubo.variables,
            seconds,
            info,
            vectors={"run": np.concatenate(run_index)},
        )

    @staticmethod
    def _run(
        qubo: BinaryQuadratic, params: dict[str, Any], seed: int, deadline: float | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One GA run: (its ``keep`` best distinct genomes, facts about the run)."""
        from pymoo.algorithms.soo.nonconvex.ga import GA
        from pymoo.core.population import Population
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.pntx import TwoPointCrossover
        from pymoo.operators.crossover.ux import UniformCrossover
        from pymoo.operators.mutation.bitflip import BitflipMutation
        from pymoo.operators.sampling.rnd import BinaryRandomSampling

        # seen[i]: genome i (bit j = variable j) has been evaluated; None above ENUMERABLE_VARIABLES
        bits = np.arange(qubo.num_variables, dtype=np.int64)
        seen = np.zeros(2**qubo.num_variables, dtype=bool) if qubo.num_variables <= ENUMERABLE_VARIABLES else None

        class EnergyProblem(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=qubo.num_variables, n_obj=1, xl=0, xu=1, vtype=bool)

            def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
                out["F"] = qubo.energies(x)[:, None]
                if seen is not None:
                    seen[x.astype(np.int64) @ (1 << bits)] = True

        run_start = time.perf_counter()
        crossover = TwoPointCrossover() if params["crossover"] == "two_point" else UniformCrossover()
        algorithm = GA(
            pop_size=params["population"],
            sampling=BinaryRandomSampling(),
            crossover=crossover,
            mutation=BitflipMutation(),
            eliminate_duplicates=True,
        )
        problem = EnergyProblem()
        algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
        best_energy, stale, generations = np.inf, 0, 0
        while True:
            algorithm.next()
            generations += 1
            exhausted = seen is not None and max(algorithm.evaluator.n_eval, params["population"]) >= seen.size
            if exhausted and not seen.all():
                # an exhaustive search's worth of evaluations spent, or a population that could hold every
                # genome: evaluate the genomes not met yet
                rest = Population.new(X=(np.flatnonzero(~seen)[:, None] >> bits & 1).astype(bool))
                algorithm.evaluator.eval(problem, rest, algorithm=algorithm)
                algorithm.tell(infills=rest)
            energy = float(algorithm.pop.get("F").min())
            if energy < best_energy:
                best_energy, stale = energy, 0
            else:
                stale += 1
            if exhausted or not algorithm.has_next():
                stopped_by = "convergence"
            elif deadline is not None and time.perf_counter() >= deadline:
                stopped_by = "time_limit"
            elif params["patience"] is not None and stale >= params["patience"]:
                stopped_by = "convergence"
            elif generations >= params["generations"] or (
                params["max_evaluations"] is not None and algorithm.evaluator.n_eval >= params["max_evaluations"]
            ):
                stopped_by = "evaluations"
            else:
                continue
            break
        population = algorithm.pop
        order = np.argsort(population.get("F")[:, 0], kind="stable")
        genomes = np.unique(population.get("X")[order].astype(np.int8), axis=0, return_index=True)
        distinct = population.get("X")[order][np.sort(genomes[1])].astype(np.int8)
        report = {
            "generations": generations,
            "evaluations": int(algorithm.evaluator.n_eval),
            "stopped_by": stopped_by,
            "best_energy": best_energy,
            "seconds": time.perf_counter() - run_start,
        }
        return distinct[: params["keep"]], report

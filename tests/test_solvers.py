"""Solvers: dimod conformance, energies, timing info, seeds, exactness, registry."""

from __future__ import annotations

import unittest

import dimod
import dimod.testing
import numpy as np
import pytest
from dwave.samplers import SimulatedAnnealingSampler as DwaveSimulatedAnnealing
from dwave.samplers import TreeDecompositionSolver
from dwave.samplers.sa.sampler import default_beta_range

from qubocompress.errors import SolverError
from qubocompress.problem.paper import PaperFormulation
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.problem.target import calibrate_gamma
from qubocompress.solvers.sa import ising_beta_range
from qubocompress.solvers import (
    SOLVER_NAMES,
    ExactSampler,
    SimulatedAnnealingSampler,
    make_sampler,
    solve,
    solve_exactly,
)


def quick_sa() -> SimulatedAnnealingSampler:
    return SimulatedAnnealingSampler(num_reads=10, num_sweeps=200)


def small_formulation() -> PaperFormulation:
    return calibrate_gamma(synthetic_spec(channels=(4, 8, 8), seed=2), 10.0)


@pytest.mark.filterwarnings("ignore:All bqm biases are zero")  # dwave SA's note on the empty BQMs
@dimod.testing.load_sampler_bqm_tests(quick_sa)
class TestSimulatedAnnealingConformance(unittest.TestCase):
    """dimod's generated sampler tests (empty, 1-variable, path BQMs in every BQM class)."""


@dimod.testing.load_sampler_bqm_tests(ExactSampler)
class TestExactConformance(unittest.TestCase):
    """dimod's generated sampler tests for the generic exact path."""


@dimod.testing.load_sampler_bqm_tests(lambda: ExactSampler(small_formulation()))
class TestBoundExactConformance(unittest.TestCase):
    """A formulation-bound exact sampler still solves other BQMs (generic path)."""


def test_random_states_are_seeded_and_uniform() -> None:
    bqm = dimod.BinaryQuadraticModel({f"v{i}": 0.0 for i in range(40)}, {}, 0.0, "BINARY")
    sampler = make_sampler("random", num_reads=50)
    first, again, other = (sampler.sample(bqm, seed=seed) for seed in (1, 1, 2))
    assert np.array_equal(first.record.sample, again.record.sample)
    assert not np.array_equal(first.record.sample, other.record.sample)
    assert 0.4 < first.record.sample.mean() < 0.6  # 2,000 fair bits
    assert "seed" in sampler.parameters and first.info["parameters"] == {"num_reads": 50, "seed": 1}


@pytest.mark.parametrize("sampler", [quick_sa(), ExactSampler(), ExactSampler(small_formulation())])
def test_sampler_api(sampler: dimod.Sampler) -> None:
    dimod.testing.assert_sampler_api(sampler)


# Quick settings of every solver that runs offline (qpu and hybrid, through a mock QPU and a
# stand-in cloud solver, are in tests/test_solver_suite.py).
QUICK_OPTIONS: dict[str, dict[str, object]] = {
    "sa": {"num_reads": 5, "num_sweeps": 100},
    "tabu": {"num_reads": 2, "num_restarts": 2},
    "greedy": {"num_reads": 10},
    "sqa": {"num_reads": 2, "num_sweeps": 50},
    "sb": {"agents": 4, "max_steps": 100, "device": "cpu"},
    "qpu-decomposed": {"qpu": "mock", "sub_size": 8, "qpu_reads": 5, "tabu_timeout": 10, "max_iter": 3},
    "exact": {},
    "random": {"num_reads": 4},
    "ga": {"population": 10, "generations": 5},
    "rl": {"total_timesteps": 256, "rollouts": 1},
}


@pytest.mark.parametrize("name", [name for name in SOLVER_NAMES if name not in ("qpu", "hybrid", "hybrid-cqm")])
def test_every_registered_solver_returns_bqm_energies_and_timing(name: str) -> None:
    formulation = small_formulation()
    options = QUICK_OPTIONS[name]
    sampleset = solve(make_sampler(name, formulation, **options), formulation.bqm, seed=3)
    dimod.testing.assert_sampleset_energies(sampleset, formulation.bqm)
    assert np.array_equal(sampleset.record.energy, formulation.bqm.energies(sampleset))
    assert sampleset.info["timing"]["solve_seconds"] >= 0.0


# --- simulated annealing ------------------------------------------------------------------------------


def test_sa_same_seed_same_sampleset() -> None:
    bqm = small_formulation().bqm
    first = quick_sa().sample(bqm, seed=11)
    again = quick_sa().sample(bqm, seed=11)
    other = quick_sa().sample(bqm, seed=12)
    assert np.array_equal(first.record.sample, again.record.sample)
    assert np.array_equal(first.record.energy, again.record.energy)
    assert not np.array_equal(first.record.sample, other.record.sample)


def test_sa_defaults_and_overrides() -> None:
    sampler = SimulatedAnnealingSampler(num_reads=7)
    assert sampler.properties["defaults"] == {"num_reads": 7, "num_sweeps": 10_000, "beta_schedule_type": "linear"}
    bqm = dimod.generators.gnp_random_bqm(12, 0.5, "BINARY", random_state=1)
    assert len(sampler.sample(bqm, num_sweeps=50, seed=0)) == 7
    assert len(sampler.sample(bqm, num_reads=3, num_sweeps=50, seed=0)) == 3
    custom = sampler.sample(bqm, beta_schedule=[0.1, 1.0, 10.0], seed=0)
    assert custom.info["beta_schedule_type"] == "custom"


@pytest.mark.parametrize("seed", range(8))
def test_sa_beta_range_is_dwaves_default_computed_faster(seed: int) -> None:
    rng = np.random.default_rng(seed)
    if seed % 2:  # integer biases: several spins share the smallest gap (the cold end counts them)
        bqm = dimod.BQM(
            {i: float(rng.integers(-2, 3)) for i in range(9)},
            {(i, i + 1): float(rng.integers(-1, 2)) for i in range(8)},
            0.0,
            "SPIN",
        )
    else:
        bqm = dimod.generators.gnp_random_bqm(25, 0.4, "BINARY", random_state=seed)
    np.testing.assert_allclose(ising_beta_range(bqm), default_beta_range(bqm), rtol=1e-12)
    ours = SimulatedAnnealingSampler(num_reads=5, num_sweeps=50).sample(bqm, seed=seed)
    theirs = DwaveSimulatedAnnealing().sample(bqm, num_reads=5, num_sweeps=50, beta_schedule_type="linear", seed=seed)
    assert ours.info["parameters"]["beta_schedule_type"] == "linear"
    np.testing.assert_array_equal(ours.record.sample, theirs.record.sample)
    assert ising_beta_range(dimod.BQM("SPIN")) == (0.1, 1.0)


def test_sa_finds_the_certified_optimum_of_a_small_problem() -> None:
    formulation = small_formulation()
    _, optimum = formulation.exact()
    best = SimulatedAnnealingSampler().sample(formulation.bqm, seed=0).first.energy
    assert best == pytest.approx(optimum, rel=1e-9)


def test_sa_rejects_bad_options() -> None:
    with pytest.raises(SolverError, match="simulated annealing has no option sweeps; valid options: .*num_sweeps"):
        SimulatedAnnealingSampler(sweeps=10)
    with pytest.raises(SolverError, match="num_reads must be a positive integer, got 0"):
        SimulatedAnnealingSampler(num_reads=0)
    bqm = dimod.BinaryQuadraticModel({"a": 1.0}, {}, 0.0, "BINARY")
    with pytest.raises(SolverError, match="simulated annealing rejected its parameters: Beta schedule type cubic"):
        SimulatedAnnealingSampler().sample(bqm, beta_schedule_type="cubic")


# --- exact ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vartype", ["BINARY", "SPIN"])
@pytest.mark.parametrize("seed", range(6))
def test_exact_matches_exact_solver_on_small_bqms(vartype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 15))
    bqm = dimod.generators.gnp_random_bqm(size, float(rng.uniform(0.1, 1.0)), vartype, random_state=seed)
    sampleset = ExactSampler().sample(bqm)
    assert sampleset.info["certified"] is True
    assert sampleset.vartype is bqm.vartype
    assert sampleset.first.energy == pytest.approx(dimod.ExactSolver().sample(bqm).first.energy, rel=1e-12, abs=1e-12)


def test_exact_splits_a_large_bqm_into_enumerable_components() -> None:
    parts = [
        dimod.generators.gnp_random_bqm(range(12 * k, 12 * k + 12), 0.6, "BINARY", random_state=k) for k in range(3)
    ]
    bqm = dimod.BinaryQuadraticModel("BINARY")
    for part in parts:
        bqm.update(part)
    bqm.offset = 1.25
    sampleset = ExactSampler().sample(bqm)
    assert sampleset.info["components"] == 3 and sampleset.info["enumerated"] == 3 and sampleset.info["milp"] == 0
    expected = 1.25 + sum(dimod.ExactSolver().sample(part).first.energy - part.offset for part in parts)
    assert sampleset.first.energy == pytest.approx(expected, rel=1e-12)


def test_exact_solves_a_large_connected_component_by_milp() -> None:
    rng = np.random.default_rng(7)
    size = 24
    edges = [(i, i + 1) for i in range(size - 1)] + [tuple(rng.choice(size, 2, replace=False)) for _ in range(12)]
    bqm = dimod.BinaryQuadraticModel(
        {i: rng.uniform(-1, 1) for i in range(size)}, {e: rng.uniform(-1, 1) for e in edges}, 0.5, "SPIN"
    )
    sampleset = ExactSampler().sample(bqm)
    assert sampleset.info["milp"] == 1 and sampleset.info["certified"] is True and sampleset.info["gap"] == 0.0
    reference = TreeDecompositionSolver().sample(bqm).first.energy
    assert sampleset.first.energy == pytest.approx(reference, rel=1e-9)


def test_exact_reports_a_gap_when_the_milp_is_cut_short() -> None:
    # a ±1 spin glass on 40 fully connected spins: HiGHS was 6x from a proof after 3 s here (a random
    # gnp BQM of this size it proved in 3 ms, so a 1 ms limit passed or failed with the machine's speed)
    bqm = dimod.generators.ran_r(1, 40, seed=5)
    sample, info = solve_exactly(bqm, time_limit=0.05)
    assert info["certified"] is False and info["milp"] == 1
    assert info["gap"] > 0 and info["lower_bound"] < bqm.energy(sample)


def test_exact_rejects_a_bad_time_limit() -> None:
    with pytest.raises(SolverError, match="time_limit must be a positive number of seconds, got -1"):
        ExactSampler(time_limit=-1)


def test_bound_exact_returns_the_formulations_certified_optimum() -> None:
    formulation = calibrate_gamma(synthetic_spec(seed=0), 16.0)
    plan, optimum = formulation.exact()
    sampleset = ExactSampler(formulation).sample(formulation.bqm)
    assert len(sampleset) == 1
    assert sampleset.info["certified"] is True and sampleset.info["method"] == "per-component enumeration"
    assert sampleset.first.energy == pytest.approx(optimum, rel=1e-9)
    assert formulation.decode(sampleset.first.sample) == plan


def test_generic_exact_agrees_with_the_formulations_optimum() -> None:
    formulation = small_formulation()
    generic = ExactSampler().sample(formulation.bqm)
    assert generic.info["certified"] is True
    assert generic.first.energy == pytest.approx(formulation.exact()[1], rel=1e-9)


@pytest.mark.slow
def test_generic_exact_agrees_on_the_default_synthetic_spec() -> None:
    """Components of 35 dense variables through HiGHS (about a minute on 2 cores)."""
    formulation = calibrate_gamma(synthetic_spec(seed=1), 8.0)
    generic = ExactSampler().sample(formulation.bqm)
    assert generic.info["certified"] is True
    assert generic.first.energy == pytest.approx(formulation.exact()[1], rel=1e-9)


# --- registry ---------------------------------------------------------------------------------------


def test_registry_builds_each_solver() -> None:
    assert SOLVER_NAMES[0] == "sa" and "exact" in SOLVER_NAMES
    assert isinstance(make_sampler("sa", num_reads=3), SimulatedAnnealingSampler)
    formulation = small_formulation()
    exact = make_sampler("exact", formulation, time_limit=5.0)
    assert isinstance(exact, ExactSampler) and exact.formulation is formulation and exact.time_limit == 5.0


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(
        SolverError, match="unknown solver 'annealer'; choose one of: sa, tabu, .*, exact, random, ga, rl"
    ):
        make_sampler("annealer")
    with pytest.raises(SolverError, match="solver 'exact' does not accept these options \\(num_reads\\)"):
        make_sampler("exact", num_reads=4)


def test_polishing_composite_returns_polished_reads_and_keeps_the_raw_ones():
    from qubocompress.solvers.composites import PolishingComposite

    formulation = small_formulation()
    composite = PolishingComposite(dimod.RandomSampler(), formulation)
    dimod.testing.assert_composite_api(composite)
    assert "seed" in composite.parameters  # the polish is seeded even when the child takes no seed
    polished = composite.sample(formulation.bqm, num_reads=40, seed=3)
    raw = polished.info["raw"]
    assert len(raw) == len(polished) == 40 and "polish_seconds" in polished.info["timing"]
    assert polished.record.energy.mean() <= raw.record.energy.mean()
    direct = formulation.polish(raw, seed=3)
    assert np.array_equal(direct.record.sample, polished.record.sample)
    empty = PolishingComposite(dimod.NullSampler(), formulation).sample(formulation.bqm)
    assert len(empty) == 0

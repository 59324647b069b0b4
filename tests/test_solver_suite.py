"""The solver suite of issue 3: tabu, greedy, sqa, sb, qpu (offline, mock QPU), hybrid, ga, rl.

Conformance (dimod.testing), energies = the BQM's own, seeds, the certified optimum of a small
synthetic instance, info fields, and every user-facing error message.
"""

from __future__ import annotations

import sys
import time
import unittest
from collections.abc import Callable
from typing import Any

import dimod
import dimod.testing
import numpy as np
import pytest
from dwave.samplers import SteepestDescentSolver
from dwave.system.testing import MockDWaveSampler

from qubocompress.errors import SolverError
from qubocompress.problem.paper import PaperFormulation
from qubocompress.problem.plan import Plan
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.problem.target import calibrate_gamma
from qubocompress.solvers import (
    SOLVER_NAMES,
    GeneticAlgorithmSampler,
    HybridSampler,
    QpuSampler,
    ReinforcementLearningSampler,
    SimulatedBifurcationSampler,
    SimulatedQuantumAnnealingSampler,
    SteepestDescentSampler,
    TabuSearchSampler,
    make_sampler,
    solve,
)
from qubocompress.solvers.base import BinaryQuadratic


def tiny_formulation() -> PaperFormulation:
    """22 variables (10 pruning, 12 bit) in 4 layers, calibrated to 10×."""
    return calibrate_gamma(synthetic_spec(channels=(4, 8, 8), seed=2), 10.0)


def mock_qpu(shape: int = 6) -> MockDWaveSampler:
    """A perfect Pegasus P``shape`` whose "QPU" is seeded steepest descent (exact below 17 qubits)."""
    return MockDWaveSampler(topology_type="pegasus", topology_shape=[shape], substitute_kwargs={"seed": 7})


class StandInHybrid(dimod.Sampler):
    """Answers like LeapHybridSampler (one sample, timing in µs at the top of info), offline."""

    parameters: dict[str, list[str]] = {"time_limit": []}
    properties: dict[str, Any] = {"minimum_time_limit": [[1, 3.0], [1024, 3.0]], "category": "hybrid"}

    def min_time_limit(self, bqm: dimod.BinaryQuadraticModel) -> float:
        return 3.0

    def sample(self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None) -> dimod.SampleSet:
        best = SteepestDescentSolver().sample(bqm, num_reads=1, seed=0)
        best.info.update(
            run_time=time_limit * 1e6, qpu_access_time=40_000, charge_time=time_limit * 1e6, problem_id="x"
        )
        return best


# Small, fast configurations of every sampler that runs offline.
QUICK: dict[str, Callable[[], dimod.Sampler]] = {
    "tabu": lambda: TabuSearchSampler(num_reads=2, num_restarts=2),
    "greedy": lambda: SteepestDescentSampler(num_reads=20),
    "sqa": lambda: SimulatedQuantumAnnealingSampler(num_reads=3, num_sweeps=50, trotter=2),
    "sb": lambda: SimulatedBifurcationSampler(agents=4, max_steps=200, device="cpu"),
    "qpu": lambda: QpuSampler(child_sampler=mock_qpu(4), num_reads=5, embedding_timeout=5.0),
    "qpu-clique": lambda: QpuSampler(child_sampler=mock_qpu(4), clique=True, num_reads=5),
    "hybrid": lambda: HybridSampler(child_sampler=StandInHybrid()),
    "ga": lambda: GeneticAlgorithmSampler(population=10, generations=5),
}


# --- dimod conformance ------------------------------------------------------------------------------


@dimod.testing.load_sampler_bqm_tests(QUICK["tabu"])
class TestTabuConformance(unittest.TestCase):
    """dimod's generated sampler tests."""


@dimod.testing.load_sampler_bqm_tests(QUICK["greedy"])
class TestGreedyConformance(unittest.TestCase):
    """dimod's generated sampler tests."""


@dimod.testing.load_sampler_bqm_tests(QUICK["sqa"])
class TestSqaConformance(unittest.TestCase):
    """dimod's generated sampler tests."""


@dimod.testing.load_sampler_bqm_tests(QUICK["sb"])
class TestSbConformance(unittest.TestCase):
    """dimod's generated sampler tests."""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@dimod.testing.load_sampler_bqm_tests(QUICK["qpu"])
class TestQpuConformance(unittest.TestCase):
    """dimod's generated sampler tests through a mock Pegasus QPU (real minor-embedding)."""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@dimod.testing.load_sampler_bqm_tests(QUICK["qpu-clique"])
class TestQpuCliqueConformance(unittest.TestCase):
    """The same with clique embeddings."""


@dimod.testing.load_sampler_bqm_tests(QUICK["hybrid"])
class TestHybridConformance(unittest.TestCase):
    """dimod's generated sampler tests through a stand-in for the cloud solver."""


@dimod.testing.load_sampler_bqm_tests(QUICK["ga"])
class TestGaConformance(unittest.TestCase):
    """dimod's generated sampler tests."""


def quick_rl(formulation: PaperFormulation, **options: Any) -> ReinforcementLearningSampler:
    return ReinforcementLearningSampler(formulation, **{"total_timesteps": 256, "rollouts": 1, **options})


@pytest.mark.parametrize("name", sorted(QUICK))
def test_sampler_api(name: str) -> None:
    dimod.testing.assert_sampler_api(QUICK[name]())


def test_rl_sampler_api() -> None:
    """RL solves only its formulation's BQM, so dimod's generated BQMs do not apply; its API does."""
    dimod.testing.assert_sampler_api(quick_rl(tiny_formulation()))


# --- energies, timing, seeds ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(QUICK))
def test_energies_are_the_bqms_own_and_timed(name: str) -> None:
    formulation = tiny_formulation()
    sampleset = solve(QUICK[name](), formulation.bqm, seed=3)
    dimod.testing.assert_sampleset_energies(sampleset, formulation.bqm)
    assert np.array_equal(sampleset.record.energy, formulation.bqm.energies(sampleset))
    assert sampleset.info["timing"]["solve_seconds"] >= 0.0
    formulation.decode(sampleset.first.sample).validate(formulation.spec)


def test_rl_energies_are_the_bqms_own() -> None:
    formulation = tiny_formulation()
    sampleset = quick_rl(formulation, keep=3).sample(formulation.bqm, seed=3)
    assert np.array_equal(sampleset.record.energy, formulation.bqm.energies(sampleset))
    assert len(sampleset) == 3 and set(sampleset.record.run) == {0}


@pytest.mark.parametrize("name", ["tabu", "greedy", "sqa", "sb", "ga"])
def test_same_seed_same_sampleset(name: str) -> None:
    bqm = tiny_formulation().bqm
    first, again, other = (QUICK[name]().sample(bqm, seed=seed) for seed in (11, 11, 12))
    assert first.variables == again.variables
    assert np.array_equal(first.record.sample, again.record.sample)
    assert np.array_equal(first.record.energy, again.record.energy)
    assert not np.array_equal(first.record.sample, other.record.sample)


def test_rl_same_seed_same_sampleset() -> None:
    formulation = tiny_formulation()
    sampler = quick_rl(formulation, keep=2)
    first, again = (sampler.sample(formulation.bqm, seed=5) for _ in range(2))
    assert np.array_equal(first.record.sample, again.record.sample)
    assert first.info["evaluations"] == again.info["evaluations"]


def test_sqa_reads_are_independent() -> None:
    """OpenJij's own seed= makes every read identical; ours derives one seed per read."""
    bqm = dimod.generators.gnp_random_bqm(30, 0.5, "SPIN", random_state=4)
    sampleset = SimulatedQuantumAnnealingSampler(num_reads=8, num_sweeps=5, trotter=2).sample(bqm, seed=1)
    assert len(np.unique(sampleset.record.sample, axis=0)) > 1


def test_seeded_solvers_leave_global_rngs_alone() -> None:
    import random

    import torch

    formulation = tiny_formulation()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.random(), float(torch.rand(1)))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    QUICK["sb"]().sample(formulation.bqm, seed=9)
    quick_rl(formulation).sample(formulation.bqm, seed=9)
    assert (random.random(), np.random.random(), float(torch.rand(1))) == expected


# --- the certified optimum of a small instance -----------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [
        TabuSearchSampler(),
        SteepestDescentSampler(),
        SimulatedQuantumAnnealingSampler(),
        SimulatedBifurcationSampler(device="cpu"),
        GeneticAlgorithmSampler(population=50, patience=30),
    ],
    ids=["tabu", "greedy", "sqa", "sb", "ga"],
)
def test_heuristic_finds_the_certified_optimum(sampler: dimod.Sampler) -> None:
    formulation = tiny_formulation()
    plan, optimum = formulation.exact()
    sampleset = sampler.sample(formulation.bqm, seed=0)
    assert sampleset.first.energy == pytest.approx(optimum, rel=1e-9)
    assert formulation.decode(sampleset.first.sample) == plan


def random_plan_energies(formulation: PaperFormulation, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    states = rng.integers(0, 2, size=(count, formulation.num_variables))
    return BinaryQuadratic(formulation.bqm).energies(states)


def test_rl_learns_better_plans_than_random() -> None:
    formulation = tiny_formulation()
    _, optimum = formulation.exact()
    sampleset = ReinforcementLearningSampler(formulation, total_timesteps=2048).sample(formulation.bqm, seed=0)
    info = sampleset.info
    assert info["stopped_by"] == "evaluations" and info["runs"][0]["timesteps"] >= 2048
    assert info["episodes"] >= 2048 // len(formulation.spec.layers) and info["evaluations"] >= info["episodes"]
    best = sampleset.first.energy
    assert best < np.min(random_plan_energies(formulation, 500, seed=0))
    assert (best - optimum) / abs(optimum) < 0.05


def test_ga_improves_on_random_plans_and_reports_its_budget() -> None:
    formulation = PaperFormulation(synthetic_spec(seed=3), gamma=5.0)
    sampleset = GeneticAlgorithmSampler(population=20, generations=30, patience=None).sample(formulation.bqm, seed=1)
    info = sampleset.info
    assert info["stopped_by"] == "evaluations" and info["generations"] == 30
    # the first generation is the random initial population; every later one adds 20 children
    assert info["evaluations"] == info["runs"][0]["evaluations"] and 20 * 29 < info["evaluations"] <= 20 * 30
    assert sampleset.first.energy < np.min(random_plan_energies(formulation, 2000, seed=1))


def test_ga_stops_by_convergence_time_limit_and_evaluations() -> None:
    bqm = tiny_formulation().bqm
    converged = GeneticAlgorithmSampler(population=10, generations=10_000, patience=5).sample(bqm, seed=0)
    assert converged.info["stopped_by"] == "convergence" and converged.info["generations"] < 10_000
    capped = GeneticAlgorithmSampler(population=10, max_evaluations=50, patience=None).sample(bqm, seed=0)
    assert capped.info["stopped_by"] == "evaluations" and 50 <= capped.info["evaluations"] < 70
    start = time.perf_counter()
    timed = GeneticAlgorithmSampler(generations=10**9, patience=None, time_limit=0.3).sample(bqm, seed=0)
    assert timed.info["stopped_by"] == "time_limit" and time.perf_counter() - start < 30


def tiny_bqms() -> dict[int, dimod.BinaryQuadraticModel]:
    """The 2-variable BQM of issue 15 §7 and an 8-variable spin glass, by number of variables."""
    return {
        2: dimod.BinaryQuadraticModel({0: 1.0, 1: -1.0}, {(0, 1): 0.5}, 0.0, "BINARY"),
        8: dimod.generators.ran_r(1, 8, seed=5).change_vartype("BINARY", inplace=False),
    }


@pytest.mark.parametrize("num_variables", [2, 8])
def test_ga_stops_once_a_tiny_search_space_is_used_up(num_variables: int) -> None:
    """At the defaults a run makes under two exhaustive searches' worth of evaluations (plus one generation)
    and keeps the best genomes of the whole space; it used to run ``patience`` = 200 generations (30-80 s, ~8 s)."""
    bqm, keep = tiny_bqms()[num_variables], 3
    sampler = GeneticAlgorithmSampler(keep=keep)
    sampleset = sampler.sample(bqm, seed=0)
    info = sampleset.info
    assert info["stopped_by"] == "convergence"
    assert info["evaluations"] < 2 * 2**num_variables + sampler.defaults["population"]
    assert info["generations"] <= 2**num_variables // sampler.defaults["population"] + 2
    lowest = np.sort(dimod.ExactSolver().sample(bqm).record.energy)[:keep]
    assert np.allclose(np.sort(sampleset.record.energy), lowest, rtol=0, atol=1e-12)


def test_ga_stops_when_mating_finds_no_new_genome(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymoo's own stop: a population of all 4 genomes of a 2-variable BQM has no child outside it."""
    monkeypatch.setattr("qubocompress.solvers.ga.ENUMERABLE_VARIABLES", 0)  # no table of evaluated genomes
    sampleset = GeneticAlgorithmSampler().sample(tiny_bqms()[2], seed=0)
    assert sampleset.info["stopped_by"] == "convergence" and sampleset.info["generations"] == 2
    assert sampleset.info["evaluations"] == 4 and sampleset.first.energy == -1.0


def test_ga_and_rl_return_one_read_per_run_by_default() -> None:
    formulation = tiny_formulation()
    ga = GeneticAlgorithmSampler(population=10, generations=5, num_reads=3).sample(formulation.bqm, seed=2)
    assert list(ga.record.run) != [] and sorted(ga.record.run) == [0, 1, 2] and len(ga.info["runs"]) == 3
    kept = GeneticAlgorithmSampler(population=10, generations=5, keep=4).sample(formulation.bqm, seed=2)
    assert len(kept) == 4 and len(np.unique(kept.record.sample, axis=0)) == 4
    rl = quick_rl(formulation, num_reads=2).sample(formulation.bqm, seed=2)
    assert sorted(rl.record.run) == [0, 1] and rl.info["episodes"] > 0


def test_rl_stops_by_convergence_and_time_limit() -> None:
    formulation = tiny_formulation()
    converged = quick_rl(formulation, total_timesteps=100_000, patience=20).sample(formulation.bqm, seed=0)
    assert converged.info["stopped_by"] == "convergence" and converged.info["runs"][0]["timesteps"] < 100_000
    timed = quick_rl(formulation, total_timesteps=10**7, time_limit=1.0).sample(formulation.bqm, seed=0)
    assert timed.info["stopped_by"] == "time_limit"


def test_rl_decides_a_shared_group_once_at_its_first_layer() -> None:
    """A residual-style group spanning two layers: its pruning count comes from the first member."""
    from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec
    from qubocompress.solvers.rl import LayerEnvironment

    damage = np.array([1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0])
    group = ChannelGroup("g", np.array([0.1, 0.2, 0.3, 0.4]), max_pruned=2, members=("a", "b"))
    layers = (
        LayerSpec("a", "conv", 4, 1, kernel_area=9, out_group=0, quant_damage=damage),
        LayerSpec("b", "conv", 4, 4, kernel_area=9, out_group=0, in_group=0, quant_damage=damage),
        LayerSpec("fc", "linear", 3, 4, in_group=0, quant_damage=damage),
    )
    formulation = PaperFormulation(CompressionSpec("shared", layers, (group,)), gamma=1.0)
    world = LayerEnvironment(formulation, BinaryQuadratic(formulation.bqm), prune_levels=2)
    env = world.make_env()
    env.reset(seed=0)
    env.step(np.array([1, 7]))  # layer a: half of max_pruned -> 1 channel, 8 bits
    env.step(np.array([2, 0]))  # layer b: the group is decided already; 1 bit
    _, reward, done, _, info = env.step(np.array([2, 3]))
    plan = world.plan(env.counts, env.bits)
    assert done and plan == Plan(pruned={"g": (0,)}, bits={"a": 8, "b": 1, "fc": 4})
    assert info["energy"] == pytest.approx(formulation.energy(plan), rel=1e-12)
    assert reward == pytest.approx(-info["energy"] / formulation.gamma)


# --- qpu through a mock QPU ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("clique", [False, True])
def test_qpu_reports_timing_chains_and_embedding(clique: bool) -> None:
    formulation = tiny_formulation()
    sampler = QpuSampler(child_sampler=mock_qpu(), clique=clique, num_reads=20, chain_strength=0.05)
    sampleset = sampler.sample(formulation.bqm, seed=1)
    info = sampleset.info
    assert info["chain_strength"] == 0.05 and info["max_chain_length"] >= 1
    assert info["qubits"] >= formulation.num_variables and 0.0 <= info["chain_break_fraction"] <= 1.0
    # a mock's made-up timings are not QPU time: none is reported
    assert info["on_qpu"] is False and info["qpu_timing_us"] == {} and "qpu_access_seconds" not in info["timing"]
    assert info["timing"]["embedding_seconds"] > 0.0
    assert "chain_break_fraction" in sampleset.record.dtype.names
    assert np.array_equal(sampleset.record.energy, formulation.bqm.energies(sampleset))


def test_qpu_rejects_a_problem_it_cannot_embed() -> None:
    dense = dimod.generators.gnp_random_bqm(40, 1.0, "BINARY", random_state=0)
    with pytest.raises(SolverError, match="solver 'qpu' found no minor embedding of 40 variables .* try clique=True"):
        QpuSampler(child_sampler=mock_qpu(2), embedding_timeout=1.0).sample(dense, seed=0)
    with pytest.raises(SolverError, match=r"a clique of 40 variables does not fit this QPU \(largest clique: \d+\)"):
        QpuSampler(child_sampler=mock_qpu(2), clique=True).sample(dense)


def test_qpu_rejects_bad_options() -> None:
    with pytest.raises(SolverError, match="chain_strength must be a positive number or one of uniform_torque"):
        QpuSampler(child_sampler=mock_qpu(2), chain_strength="strong")
    with pytest.raises(SolverError, match="annealing_time must be a positive number of µs, got 0"):
        QpuSampler(child_sampler=mock_qpu(2), annealing_time=0)
    with pytest.raises(SolverError, match="solver 'qpu' has no option reads"):
        QpuSampler(child_sampler=mock_qpu(2), reads=3)


# --- hybrid ---------------------------------------------------------------------------------------


def test_hybrid_reports_its_timing_in_seconds() -> None:
    formulation = tiny_formulation()
    sampleset = HybridSampler(child_sampler=StandInHybrid(), time_limit=5).sample(formulation.bqm)
    assert sampleset.info["time_limit"] == 5.0
    assert sampleset.info["timing"]["run_seconds"] == pytest.approx(5.0)
    assert sampleset.info["timing"]["qpu_access_seconds"] == pytest.approx(0.04)
    with pytest.raises(SolverError, match="time_limit 1 s is below the solver's minimum of 3 s for 22 variables"):
        HybridSampler(child_sampler=StandInHybrid()).sample(formulation.bqm, time_limit=1)


# --- user-facing errors -----------------------------------------------------------------------------


def test_registry_order_and_unknown_solver() -> None:
    assert " ".join(SOLVER_NAMES) == "sa tabu greedy sqa sb qpu qpu-decomposed hybrid hybrid-cqm exact random ga rl"
    with pytest.raises(
        SolverError,
        match="unknown solver 'annealer'; choose one of: sa, tabu, greedy, sqa, sb, qpu, qpu-decomposed, hybrid, "
        "hybrid-cqm, exact, random, ga, rl$",
    ):
        make_sampler("annealer")


@pytest.mark.parametrize(
    ("name", "module", "message"),
    [
        ("sqa", "openjij", "solver 'sqa' needs openjij: pip install 'qubocompress[sqa]'"),
        ("sb", "simulated_bifurcation", "solver 'sb' needs simulated-bifurcation: pip install 'qubocompress[sb]'"),
        ("qpu", "dwave.system", "solver 'qpu' needs dwave-system: pip install 'qubocompress[qpu]'"),
        ("hybrid", "dwave.system", "solver 'hybrid' needs dwave-system: pip install 'qubocompress[qpu]'"),
        ("ga", "pymoo", "solver 'ga' needs pymoo: pip install 'qubocompress[ga]'"),
        ("rl", "stable_baselines3", "solver 'rl' needs stable-baselines3: pip install 'qubocompress[rl]'"),
        ("rl", "gymnasium", "solver 'rl' needs gymnasium: pip install 'qubocompress[rl]'"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, name: str, module: str, message: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(SolverError, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
        make_sampler(name, tiny_formulation())


@pytest.fixture
def no_dwave_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """An empty home and config folder, and no DWAVE_* variables: no token anywhere."""
    import os

    for key in list(os.environ):
        if key.startswith("DWAVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize("name", ["qpu", "hybrid"])
def test_no_token_is_one_clear_line(no_dwave_config: pytest.MonkeyPatch, name: str) -> None:
    with pytest.raises(SolverError) as caught:
        make_sampler(name)
    message = str(caught.value)
    assert message == f"solver {name!r} has no D-Wave API token: run `dwave setup --auth` or set DWAVE_API_TOKEN"


@pytest.mark.parametrize("name", ["qpu", "hybrid"])
def test_no_network_is_one_clear_line(no_dwave_config: pytest.MonkeyPatch, name: str) -> None:
    no_dwave_config.setenv("DWAVE_API_TOKEN", "DEV-0000000000000000000000000000000000000000")
    no_dwave_config.setenv("DWAVE_API_ENDPOINT", "http://127.0.0.1:9/")  # closed port: nothing answers
    start = time.perf_counter()
    with pytest.raises(
        SolverError, match=f"^solver {name!r} cannot reach the D-Wave API .*try `dwave ping`$"
    ) as caught:
        make_sampler(name, client_config={"http_retry_total": 0})
    assert "\n" not in str(caught.value)
    assert time.perf_counter() - start < 15


def test_cloud_failures_become_one_line_solver_errors() -> None:
    from dwave.cloud import exceptions as cloud
    from dwave.cloud.config.exceptions import ConfigFileParseError

    from qubocompress.solvers.qpu import cloud_error

    expected = {
        cloud.SolverAuthenticationError(
            "Invalid token"
        ): "the D-Wave API rejected the token (Invalid token); run `dwave setup",
        cloud.SolverNotFoundError(
            "no such solver"
        ): "no D-Wave solver matches the request (no such solver); see `dwave solvers`",
        cloud.SolverOfflineError("down"): "the D-Wave solver is offline (down); try again later",
        cloud.SolverFailureError("bad parameter"): "rejected or failed the problem (bad parameter)",
        ConfigFileParseError("line 3"): "cannot read the D-Wave config file (line 3)",
        ConnectionError("refused"): "cannot reach the D-Wave API (ConnectionError: refused); check the network",
    }
    for exc, message in expected.items():
        error = cloud_error(exc, "qpu")
        assert isinstance(error, SolverError) and message in str(error) and "\n" not in str(error)
    assert cloud_error(KeyError("not ours"), "qpu") is None


def test_time_limits_must_be_positive() -> None:
    formulation = tiny_formulation()
    for limit in (0, -1.0, float("nan")):
        with pytest.raises(SolverError, match="solver 'ga': time_limit must be a positive number of seconds"):
            make_sampler("ga", time_limit=limit)
        with pytest.raises(SolverError, match="solver 'rl': time_limit must be a positive number of seconds"):
            make_sampler("rl", formulation, time_limit=limit)
        with pytest.raises(SolverError, match="solver 'sb': time_limit must be a positive number of seconds"):
            make_sampler("sb", time_limit=limit)
        with pytest.raises(SolverError, match="solver 'hybrid': time_limit must be a positive number of seconds"):
            make_sampler("hybrid", time_limit=limit, child_sampler=StandInHybrid())
        with pytest.raises(SolverError, match="solver 'hybrid': time_limit must be a positive number of seconds"):
            HybridSampler(child_sampler=StandInHybrid()).sample(formulation.bqm, time_limit=limit)
    with pytest.raises(SolverError, match="solver 'ga': time_limit must be a positive number of seconds, got 0"):
        GeneticAlgorithmSampler().sample(formulation.bqm, time_limit=0)


def test_rl_needs_the_formulation() -> None:
    message = "solver 'rl' needs the formulation (layers and groups), not a bare BQM"
    with pytest.raises(SolverError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        make_sampler("rl")
    formulation = tiny_formulation()
    other = dimod.generators.gnp_random_bqm(5, 0.5, "BINARY", random_state=0)
    with pytest.raises(SolverError, match="this BQM is not the formulation's"):
        quick_rl(formulation).sample(other)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("tabu", {"num_reads": 0}, "tabu search: num_reads must be a positive integer, got 0"),
        ("tabu", {"timeout": -5}, "tabu search: timeout must be None or a positive number of milliseconds"),
        ("tabu", {"restarts": 2}, "tabu search has no option restarts; valid options: .*num_restarts"),
        ("greedy", {"num_reads": 1.5}, "steepest descent: num_reads must be a positive integer"),
        ("sqa", {"trotter": 0}, "solver 'sqa': trotter must be a positive integer, got 0"),
        ("sqa", {"beta": -1.0}, "solver 'sqa': beta must be a positive number, got -1.0"),
        ("sqa", {"sweeps": 10}, "simulated quantum annealing has no option sweeps; valid options: .*num_sweeps"),
        ("sb", {"mode": "heated"}, "solver 'sb': mode must be one of discrete, ballistic, got 'heated'"),
        ("sb", {"device": "tpu"}, "solver 'sb': device must be 'cpu' or 'cuda', got 'tpu'"),
        ("ga", {"population": 0}, "solver 'ga': population must be a positive integer, got 0"),
        ("ga", {"crossover": "one_point"}, "solver 'ga': crossover must be one of two_point, uniform"),
    ],
)
def test_bad_options_are_one_clear_line(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(SolverError, match=message):
        make_sampler(name, **options)


def test_sb_refuses_cuda_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SolverError, match="device 'cuda' asked for, but torch sees no CUDA GPU; use device='cpu'"):
        make_sampler("sb", device="cuda")


def test_sb_num_reads_is_agents() -> None:
    bqm = tiny_formulation().bqm
    sampler = SimulatedBifurcationSampler(max_steps=100, device="cpu")
    assert len(sampler.sample(bqm, num_reads=6, seed=0)) == 6
    with pytest.raises(SolverError, match="num_reads and agents name the same thing"):
        sampler.sample(bqm, num_reads=6, agents=5)

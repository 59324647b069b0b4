"""The budget formulation's slack-free encodings (unbalanced, Lagrangian), its CQM, and ``hybrid-cqm``."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import dimod
import numpy as np
import pytest

from qubocompress.errors import ProblemError, SolverError
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.encodings import ENCODINGS, budget_term_minimum
from qubocompress.problem.target import calibrate_gamma
from qubocompress.problem.synthetic import synthetic_spec, with_synthetic_measurements
from qubocompress.solvers.composites import PolishingComposite
from qubocompress.solvers.registry import make_sampler, preflight

SLACK_FREE = ("unbalanced", "lagrangian")


def tiny(seed: int, encoding: str = "slack", ratio: float = 10.0, **options: Any) -> BudgetFormulation:
    """Two convs and a classifier, one prune option per group, bits 4 or 8: 16 cell states."""
    spec = with_synthetic_measurements(synthetic_spec(channels=(2, 3), seed=seed), seed=seed, prune_steps=1)
    return BudgetFormulation(spec, ratio=ratio, bit_options=(4, 8), encoding=encoding, **options)


def grid(formulation: BudgetFormulation) -> np.ndarray:
    """Every choice vector of the option grid."""
    return np.array(list(itertools.product(*(range(k) for k in formulation.model.counts))))


def budget_term(formulation: BudgetFormulation, index: np.ndarray) -> np.ndarray:
    """``q·m² + l·m`` with ``m`` = the rounded cost in units minus the BQM's budget in units."""
    quadratic, linear = formulation.budget_weights
    rounded = formulation.model.in_units(formulation.unit).costs(index)
    m = (rounded - formulation.budget // formulation.unit).astype(np.float64)
    return quadratic * m * m + linear * m


# --- the slack-free BQMs --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", SLACK_FREE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_of_every_plan_is_its_damage_plus_the_budget_term(encoding: str, seed: int) -> None:
    formulation = tiny(seed, encoding)
    assert not any(v.kind == "slack" for v in formulation.variables.values())
    index = grid(formulation)
    values = formulation._encode_rows(index)
    energies = formulation.bqm.energies((values, list(formulation.variables)))
    expected = formulation.model.damages(index) + budget_term(formulation, index)
    np.testing.assert_allclose(energies, expected, rtol=0, atol=1e-9 * (1 + formulation.penalty))


@pytest.mark.parametrize("encoding", SLACK_FREE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_penalty_keeps_every_broken_one_hot_above_the_encoded_optimum(encoding: str, seed: int) -> None:
    formulation = tiny(seed, encoding)
    samples = dimod.ExactSolver().sample(formulation.bqm)
    values = formulation._sample_matrix(samples)
    index = formulation._decode_rows(values)
    consistent = np.all(values == formulation._encode_rows(index), axis=1)
    lowest_broken = samples.record.energy[~consistent].min()
    encoded_optimum = formulation.energy(formulation.exact_result().plan)
    encoded_optimum += float(
        budget_term(formulation, formulation.model.index_of(formulation.exact_result().plan)[None])[0]
    )
    assert lowest_broken > encoded_optimum
    assert consistent[np.argmin(samples.record.energy)]


def test_the_lagrangian_multiplier_is_the_edge_of_the_budget() -> None:
    formulation = tiny(0, "lagrangian")
    gamma = formulation.multiplier.gamma
    assert gamma > 0 and formulation.budget_weights == (0.0, gamma)
    rounded, capacity = formulation.model.in_units(formulation.unit), formulation.budget // formulation.unit
    index = grid(formulation)

    def optimum_cost(weight: float) -> int:
        values = rounded.damages(index) + weight * rounded.costs(index)
        return int(rounded.costs(index[np.argmin(values)][None])[0])

    assert optimum_cost(gamma) <= capacity < optimum_cost(gamma / 1.01)
    assert formulation.multiplier.damage >= formulation.exact_result().objective - 1e-12
    ground = dimod.ExactSolver().sample(formulation.bqm).first  # the ground state is within the budget
    assert formulation.is_feasible(ground.sample)
    assert formulation.objective(formulation.decode(ground.sample)) == pytest.approx(formulation.multiplier.damage)


def test_lagrangian_bqm_has_no_budget_couplings() -> None:
    slack, lagrangian = tiny(1, "slack"), tiny(1, "lagrangian")
    assert lagrangian.num_interactions < slack.num_interactions
    states = [v for v, meaning in slack.variables.items() if meaning.kind == "state"]
    assert list(lagrangian.variables) == states
    # the couplings left are the damage's blocks, the one-hots and the consistency terms: none across
    # two cells that share no choice and no interaction table
    model = lagrangian.model
    cell_of = {label: meaning.cell for label, meaning in lagrangian.variables.items()}
    for u, v in lagrangian.bqm.quadratic:
        ku, kv = cell_of[u], cell_of[v]
        shared = set(model.cells[ku].axes) & set(model.cells[kv].axes)
        paired = any({a, b} <= set(model.cells[ku].axes) | set(model.cells[kv].axes) for a, b in model.pairs)
        assert ku == kv or shared or paired


def test_budget_term_minimum_is_the_least_value_over_the_reachable_range() -> None:
    for quadratic, linear, spare in [(1.0, 4.0, 10), (1.0, 40.0, 10), (0.0, 3.0, 7), (2.0, 0.0, 5)]:
        m = np.linspace(-spare, 3 * spare, 4001)
        assert budget_term_minimum(quadratic, linear, spare) == pytest.approx(
            (quadratic * m * m + linear * m).min(), abs=1e-3
        )


# --- answers and references stay exact whatever the encoding --------------------------------------


@pytest.mark.parametrize("encoding", SLACK_FREE)
def test_reads_are_measured_by_their_damage_and_the_polish_makes_them_feasible(encoding: str) -> None:
    formulation = tiny(2, encoding)
    reference = formulation.reference()
    assert reference.energy == pytest.approx(formulation.exact_result().objective, abs=1e-12)
    reads = dimod.SampleSet.from_samples_bqm(
        (np.random.default_rng(0).integers(0, 2, (30, formulation.num_variables)), list(formulation.variables)),
        formulation.bqm,
    )
    objectives = formulation.read_objectives(reads)
    feasible = formulation.feasible_reads(reads)
    assert np.all(np.isinf(objectives[~feasible]))
    polished = formulation.polish(reads, seed=0)
    measured = formulation.read_objectives(polished)
    assert formulation.feasible_reads(polished).all() and np.isfinite(measured).all()
    assert measured.min() == pytest.approx(reference.energy, abs=1e-12)
    assert (measured >= reference.energy - 1e-12).all()
    plan, damage, rate = formulation.best_plan(polished)
    assert rate == 1.0 and damage == pytest.approx(formulation.energy(plan))


def test_slack_reads_are_measured_by_their_bqm_energy() -> None:
    formulation = tiny(0)
    reads = dimod.ExactSolver().sample(formulation.bqm)
    np.testing.assert_array_equal(formulation.read_objectives(reads), reads.record.energy)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_parameters_rebuild_the_same_bqm(encoding: str) -> None:
    formulation = tiny(1, encoding)
    params = formulation.parameters()
    assert params["encoding"] == encoding and ("budget_weights" in params) == (encoding != "slack")
    rebuilt = BudgetFormulation.from_parameters(formulation.spec, params)
    assert rebuilt.bqm == formulation.bqm
    assert rebuilt.describe()["encoding"] == encoding


def test_old_parameters_without_an_encoding_mean_slack() -> None:
    formulation = tiny(0)
    params = {k: v for k, v in formulation.parameters().items() if k != "encoding"}
    assert BudgetFormulation.from_parameters(formulation.spec, params).bqm == formulation.bqm


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "exponential"}, "must be one of slack, unbalanced, lagrangian, got 'exponential'"),
        ({"encoding": "slack", "budget_weights": (1.0, 0.0)}, "budget weights are"),
        ({"encoding": "unbalanced", "budget_weights": (1.0,)}, "budget weights are"),
        ({"encoding": "lagrangian", "budget_weights": (0.0, -1.0)}, "budget weights are"),
    ],
)
def test_bad_encodings_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        tiny(0, **options)


# --- the constrained model ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_cqm_feasible_optimum_is_the_milp_optimum(seed: int) -> None:
    formulation = tiny(seed, ratio=[8.0, 10.0, 12.0][seed % 3])
    cqm = formulation.to_cqm()
    states = [v for v, meaning in formulation.variables.items() if meaning.kind == "state"]
    assert set(cqm.variables) == set(states)
    assert len(cqm.constraints) > len(formulation.cells)  # one-hots, agreements and the budget
    feasible = dimod.ExactCQMSolver().sample_cqm(cqm).filter(lambda row: row.is_feasible)
    assert feasible.first.energy == pytest.approx(formulation.exact_result().objective, abs=1e-9)
    plan = formulation.decode(formulation.samples_from_states(feasible).first.sample)
    assert formulation.feasible(plan)
    assert formulation.objective(plan) == pytest.approx(formulation.exact_result().objective, abs=1e-9)


def test_cqm_budget_is_the_true_cost() -> None:
    formulation = tiny(3)
    cqm = formulation.to_cqm()
    for index in grid(formulation)[::3]:
        sample = formulation.encode(formulation.model.plan_of(index))
        state = {v: sample[v] for v in cqm.variables}
        assert cqm.check_feasible(state) == (int(formulation.model.costs(index[None])[0]) <= formulation.budget)
        assert cqm.objective.energy(state) == pytest.approx(formulation.model.damages(index[None])[0], abs=1e-9)


# --- hybrid-cqm -----------------------------------------------------------------------------------


class StandInCQMSolver:
    """Answers like LeapHybridCQMSampler (timing in µs in info), offline, by enumeration."""

    properties: dict[str, Any] = {"category": "hybrid"}

    def __init__(self) -> None:
        self.time_limits: list[float] = []

    def min_time_limit(self, cqm: dimod.ConstrainedQuadraticModel) -> float:
        return 5.0

    def sample_cqm(self, cqm: dimod.ConstrainedQuadraticModel, time_limit: float) -> dimod.SampleSet:
        self.time_limits.append(time_limit)
        every = dimod.ExactCQMSolver().sample_cqm(cqm)
        feasible = every.filter(lambda row: row.is_feasible).truncate(6)
        broken = every.filter(lambda row: not row.is_feasible).truncate(2)  # Leap's answers may hold some
        answer = dimod.concatenate((feasible, broken))
        answer.info.update(run_time=time_limit * 1e6, qpu_access_time=30_000, charge_time=time_limit * 1e6)
        answer.info["problem_id"] = "cqm-1"
        return answer


def test_hybrid_cqm_answers_over_the_bqm_and_the_route_decodes_it() -> None:
    formulation = tiny(4)
    child = StandInCQMSolver()
    sampler = make_sampler("hybrid-cqm", formulation, child_sampler=child)
    polished = PolishingComposite(sampler, formulation).sample(formulation.bqm, seed=0)
    raw = polished.info["raw"]
    assert set(raw.variables) == set(formulation.variables)
    assert child.time_limits == [5.0]
    assert raw.info["timing"]["run_seconds"] == pytest.approx(5.0) and raw.info["problem_id"] == "cqm-1"
    assert len(raw.info["cqm_feasible"]) == len(raw)
    plan, damage, _ = formulation.best_plan(raw)
    assert plan == formulation.exact_result().plan
    assert damage == pytest.approx(formulation.exact_result().objective)
    for row in raw.data(["sample", "energy"]):  # energies are the BQM's
        assert row.energy == pytest.approx(formulation.bqm.energy(row.sample))


def test_hybrid_cqm_time_limit_below_the_minimum_is_one_line() -> None:
    formulation = tiny(0)
    sampler = make_sampler("hybrid-cqm", formulation, child_sampler=StandInCQMSolver())
    with pytest.raises(SolverError, match=r"^solver 'hybrid-cqm': time_limit 1 s is below the solver's minimum of 5 s"):
        sampler.sample(formulation.bqm, time_limit=1)


def test_hybrid_cqm_needs_a_formulation_with_a_constrained_model() -> None:
    paper = calibrate_gamma(synthetic_spec(channels=(4, 8), seed=0), 8.0)
    with pytest.raises(SolverError, match=r"^solver 'hybrid-cqm' needs a formulation with a constrained model"):
        make_sampler("hybrid-cqm", paper, child_sampler=StandInCQMSolver())
    with pytest.raises(SolverError, match="none was given"):
        make_sampler("hybrid-cqm", None, child_sampler=StandInCQMSolver())


@pytest.fixture
def no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DWAVE_* variable and an empty dwave config file: no token anywhere."""
    for name in [name for name in os.environ if name.startswith("DWAVE_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "dwave.conf"
    config.write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(config))


def test_hybrid_cqm_without_a_token_is_one_clear_line(no_token: None) -> None:
    line = "solver 'hybrid-cqm' has no D-Wave API token: run `dwave setup --auth` or set DWAVE_API_TOKEN"
    with pytest.raises(SolverError) as checked:
        preflight("hybrid-cqm")
    assert str(checked.value) == line
    with pytest.raises(SolverError) as built:
        make_sampler("hybrid-cqm", tiny(0))
    assert str(built.value) == line


# --- the command line's --budget-encoding ---------------------------------------------------------


def test_the_config_carries_the_encoding_to_the_formulation() -> None:
    from qubocompress.config import CompressConfig
    from qubocompress.pipeline import build_formulation

    spec = tiny(0).spec
    config = CompressConfig(formulation="budget", budget_encoding="lagrangian", target_ratio=10.0)
    formulation, reference = build_formulation(spec, config)
    assert formulation.encoding == "lagrangian"
    assert reference.energy == pytest.approx(formulation.exact_result().objective)  # E* is the damage
    with pytest.raises(ProblemError, match="^--budget-encoding unbalanced encodes the budget formulation's budget"):
        CompressConfig(formulation="paper", budget_encoding="unbalanced").validate(model_given=True)

"""The filters formulation: the Gram matrix, the penalty proof, the reference, polish, errors, end to end."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import dimod
import numpy as np
import pytest
import torch
from torch import nn

from qubocompress.analysis import analyse_model
from qubocompress.analysis.graph import trace_model
from qubocompress.apply.quantize import fake_quantize
from qubocompress.config import CompressConfig
from qubocompress.errors import ProblemError, SolverError
from qubocompress.problem import FORMULATIONS
from qubocompress.problem.base import Target
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.solvers.exact import ExactSampler

from test_pipeline import data_dir, run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_gram(spec: CompressionSpec, seed: int = 0, samples: int = 64) -> CompressionSpec:
    """``spec`` with a random Gram matrix ``UᵀU/N`` of correlated contributions (PSD)."""
    rng = np.random.default_rng(seed)
    channels = sum(group.size for group in spec.groups)
    mixing = rng.normal(size=(channels, channels)) * (rng.random((channels, channels)) < 0.3)
    u = rng.normal(size=(samples, channels)) @ (np.eye(channels) + mixing) * rng.lognormal(-2, 1, size=channels)
    return replace(spec, filter_gram=u.T @ u / samples)


def tiny_spec(sizes: tuple[int, ...] = (4, 6), gram: np.ndarray | None = None, seed: int = 0) -> CompressionSpec:
    """Convs of ``sizes`` filters (each group may prune all but one) and a classifier."""
    rng = np.random.default_rng(seed)
    groups, layers = [], []
    previous = None
    for n, size in enumerate(sizes):
        groups.append(ChannelGroup(f"g{n}", rng.random(size) + 0.1, size - 1))
        layers.append(
            LayerSpec(f"conv{n}", "conv", size, sizes[n - 1] if n else 1, kernel_area=9, out_group=n, in_group=previous)
        )
        previous = n
    layers.append(LayerSpec("fc", "linear", 3, sizes[-1], in_group=previous))
    spec = CompressionSpec("tiny", tuple(layers), tuple(groups))
    return with_gram(spec, seed) if gram is None else replace(spec, filter_gram=gram)


def full_bits(spec: CompressionSpec) -> dict[str, int]:
    return {layer.name: spec.b_max for layer in spec.layers}


def lowest_states(bqm: dimod.BinaryQuadraticModel) -> dimod.SampleSet:
    """Every state of a small BQM, lowest energy first."""
    states = dimod.ExactSolver().sample(bqm)
    return states.truncate(len(states))


def brute_force(formulation: FiltersFormulation) -> float:
    """The least energy over every state that keeps the counts."""
    states = lowest_states(formulation.bqm)
    feasible = formulation.feasible_reads(states)
    return float(states.record.energy[feasible].min())


# --- the BQM: penalty proof, energies, encoding --------------------------------------------------


@pytest.mark.parametrize("kind", ["gram", "negative", "positive"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_minimiser_and_every_single_flip_local_minimum_keeps_the_counts(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = tiny_spec(seed=seed)
    channels = spec.filter_gram.shape[0]
    if kind != "gram":  # adversarial: large off-diagonals of one sign (not even PSD)
        sign = -1.0 if kind == "negative" else 1.0
        off = sign * rng.uniform(1.0, 5.0, size=(channels, channels))
        gram = np.triu(off, 1) + np.triu(off, 1).T + np.diag(rng.uniform(0.0, 0.5, size=channels))
        spec = replace(spec, filter_gram=gram)
    formulation = FiltersFormulation(spec, {"g0": 1 + seed % 3, "g1": 2 + seed}, full_bits(spec))
    states = lowest_states(formulation.bqm)
    energies = states.record.energy
    feasible = formulation.feasible_reads(states)
    assert feasible[np.isclose(energies, energies.min(), rtol=1e-12, atol=1e-12)].all()
    # no state that breaks a count is a single-flip local minimum (the proof's stronger claim)
    bqm = formulation.bqm
    labels = list(states.variables)
    for row in states.record.sample[~feasible][:200]:
        sample = dict(zip(labels, row.tolist()))
        energy = bqm.energy(sample)
        assert any(bqm.energy({**sample, v: 1 - sample[v]}) < energy for v in labels)


def test_a_penalty_below_the_bound_can_break_the_counts() -> None:
    """The bound is not slack for nothing: with a weak penalty, redundant channels all go."""
    gram = np.full((4, 4), -1.0) + np.diag(np.full(4, 1.5))
    spec = tiny_spec(sizes=(4,), gram=gram)
    weak = FiltersFormulation(spec, {"g0": 1}, full_bits(spec), penalty=0.1)
    states = lowest_states(weak.bqm)
    assert not weak.feasible_reads(states)[0]
    proven = FiltersFormulation(spec, {"g0": 1}, full_bits(spec))
    assert proven.penalty > proven.penalty_bound > 0.1
    assert proven.feasible_reads(lowest_states(proven.bqm))[0]


def random_plan(formulation: FiltersFormulation, rng: np.random.Generator, feasible: bool = True) -> Plan:
    spec = formulation.spec
    pruned = {}
    for group in spec.groups:
        k = formulation.counts[group.name]
        if k and not feasible:
            k = int(rng.integers(0, group.size))
        pruned[group.name] = tuple(rng.choice(group.size, size=k, replace=False).tolist())
    return Plan(pruned=pruned, bits=formulation.bits)


def test_energy_is_the_bqm_energy_of_the_encoding_and_decoding_inverts_encoding() -> None:
    rng = np.random.default_rng(0)
    spec = with_gram(synthetic_spec(channels=(8, 12, 16), seed=1, b_max=4, bit_levels=2, prune_steps=2), seed=3)
    formulation = FiltersFormulation(spec, {"features.0": 2, "features.6": 5}, full_bits(spec))
    assert len(formulation.bqm.variables) == 8 + 16  # the group that prunes none has no variable
    for feasible in (True, False):
        for _ in range(5):
            plan = random_plan(formulation, rng, feasible)
            sample = formulation.encode(plan)
            assert formulation.decode(sample) == plan
            assert formulation.energy(plan) == formulation.bqm.energy(sample)
            if feasible:
                assert formulation.energy(plan) == pytest.approx(formulation.objective(plan), rel=1e-9, abs=1e-12)
            else:
                assert formulation.energy(plan) >= formulation.objective(plan) - 1e-9
    with pytest.raises(ProblemError, match="prunes none here"):
        formulation.encode(Plan(pruned={"features.3": (0,)}, bits=formulation.bits))
    with pytest.raises(ProblemError, match="fixed bits"):
        formulation.encode(Plan(pruned={}, bits={**formulation.bits, "features.0": 2}))


def test_the_quadratic_energy_sees_redundancy_that_a_rank_order_cannot() -> None:
    """Two copies of one channel: pruning one of them is free, pruning both costs four times one."""
    u = np.array([[1.0, 1.0, 0.2], [-1.0, -1.0, 0.1], [0.5, 0.5, -0.3]])
    gram = u.T @ u / 3  # channels 0 and 1 are the same signal
    spec = replace(tiny_spec(sizes=(3,), gram=gram), groups=(ChannelGroup("g0", np.array([0.1, 0.2, 0.3]), 2),))
    formulation = FiltersFormulation(spec, {"g0": 2}, full_bits(spec))
    one = formulation.objective(Plan(pruned={"g0": (0,)}, bits=formulation.bits))
    both = formulation.objective(Plan(pruned={"g0": (0, 1)}, bits=formulation.bits))
    assert both == pytest.approx(4 * one)
    # the rank prefix prunes the redundant pair; the optimum keeps one copy
    assert formulation.rank_prefix_plan().pruned["g0"] == (0, 1)
    assert 2 in formulation.reference().plan.pruned["g0"]


# --- the reference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["highs", "scip"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_exact_reference_equals_brute_force(solver: str, seed: int) -> None:
    pytest.importorskip("pyscipopt") if solver == "scip" else None
    spec = tiny_spec(sizes=(5, 7), seed=seed)  # 12 variables
    formulation = FiltersFormulation(
        spec, {"g0": 2, "g1": 3 + seed % 2}, full_bits(spec), reference_solver=solver, time_limit=30
    )
    reference = formulation.reference()
    assert reference.certified and reference.gap == 0.0
    assert reference.energy == pytest.approx(brute_force(formulation), rel=1e-9, abs=1e-12)
    assert ("HiGHS" if solver == "highs" else "SCIP") in reference.method
    sample = ExactSampler(formulation).sample(formulation.bqm)
    assert sample.info["certified"] and sample.first.energy == pytest.approx(reference.energy)


def test_a_gram_matrix_that_is_not_psd_is_solved_exactly_by_the_milp() -> None:
    pytest.importorskip("pyscipopt")
    rng = np.random.default_rng(4)
    off = rng.normal(size=(10, 10))
    spec = tiny_spec(sizes=(4, 6), gram=(off + off.T) / 2)
    formulation = FiltersFormulation(spec, {"g0": 2, "g1": 3}, full_bits(spec), reference_solver="scip")
    reference = formulation.reference()
    assert "HiGHS" in reference.method and "not positive semidefinite" in reference.method
    assert reference.certified and reference.energy == pytest.approx(brute_force(formulation), rel=1e-9, abs=1e-12)


def test_a_reference_cut_short_reports_its_proven_gap() -> None:
    spec = with_gram(synthetic_spec(channels=(16, 24), seed=0, b_max=4, bit_levels=2), seed=1)
    formulation = FiltersFormulation(spec, {"features.0": 7, "features.3": 11}, full_bits(spec), time_limit=1e-3)
    result = formulation.exact_result()
    assert result.bound <= result.objective
    assert result.certified or result.gap > 0
    assert result.objective <= formulation.objective(formulation.rank_prefix_plan()) + 1e-12


def test_for_target_takes_counts_and_bits_from_the_budget_optimum() -> None:
    spec = with_gram(synthetic_spec(channels=(8, 12, 16), seed=2, b_max=6, bit_levels=2, prune_steps=4), seed=2)
    for metric in ("bits", "bops"):
        target = Target(ratio=12.0, metric=metric, time_limit=10)
        formulation = FORMULATIONS["filters"].for_target(spec, target)
        budget = BudgetFormulation.for_target(spec, target)
        optimum = budget.reference().plan
        assert formulation.bits == dict(optimum.bits)
        assert formulation.counts == {name: len(channels) for name, channels in optimum.pruned.items()}
        assert formulation.rank_prefix_plan() == optimum
        # same counts and bits: every plan of the QUBO costs what the budget optimum costs
        plan = formulation.reference().plan
        assert budget.cost(plan) == budget.cost(optimum) <= budget.budget
        figures = formulation.describe()
        assert figures["rank_prefix_energy"] == pytest.approx(formulation.energy(optimum))
        assert formulation.reference().energy <= figures["rank_prefix_energy"] + 1e-12
        rebuilt = FiltersFormulation.from_parameters(spec, json.loads(json.dumps(formulation.parameters())))
        assert rebuilt.bqm == formulation.bqm


def test_groups_without_prune_options_are_refused_before_the_budget_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """No group offers a prune option: the budget stage could prune nothing, whatever the target."""
    spec = with_gram(synthetic_spec(channels=(8, 12), seed=0))  # no prune options measured
    assert all(group.max_pruned > 0 and not group.prune_options for group in spec.groups)

    def no_milp(*args: object) -> None:
        raise AssertionError("the budget stage ran")

    monkeypatch.setattr(BudgetFormulation, "for_target", no_milp)
    with pytest.raises(ProblemError, match="no prunable channel group: no group offers a prune option") as error:
        FiltersFormulation.for_target(spec, Target(ratio=4.0))
    assert "\n" not in str(error.value)


def unproven_solver(row: np.ndarray | None, bound: float, proven: bool) -> object:
    from qubocompress.problem.filters import _Solve

    return lambda *args: _Solve(row, bound, proven, "stub", 0.0, 0.0, None)


def test_a_plan_of_dead_channels_is_certified_by_the_psd_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels with zero contributions (dead ReLUs): pruning them costs 0 = the PSD bound ½pᵀGp ≥ 0,
    which proves the plan optimal even when the solver proves nothing (no 0/0 = inf gap)."""
    gram = tiny_spec(sizes=(4,)).filter_gram.copy()
    gram[:2, :] = gram[:, :2] = 0.0  # channels 0 and 1 are dead
    spec = replace(tiny_spec(sizes=(4,), gram=gram), groups=(ChannelGroup("g0", np.array([0.1, 0.2, 0.3, 0.4]), 3),))
    monkeypatch.setattr("qubocompress.problem.filters._solve_milp", unproven_solver(None, -np.inf, False))
    formulation = FiltersFormulation(spec, {"g0": 2}, full_bits(spec), reference_solver="highs")
    result = formulation.exact_result()
    assert result.plan.pruned["g0"] == (0, 1) and result.objective == 0.0
    assert result.certified and result.gap == 0.0


def test_a_proof_of_a_solution_off_the_counts_certifies_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tiny_spec(sizes=(5, 7), seed=1)
    off_counts = np.ones(12, dtype=np.int8)  # prunes everything: breaks both counts
    monkeypatch.setattr("qubocompress.problem.filters._solve_milp", unproven_solver(off_counts, -np.inf, True))
    formulation = FiltersFormulation(spec, {"g0": 2, "g1": 3}, full_bits(spec), reference_solver="highs")
    result = formulation.exact_result()
    assert formulation.feasible_reads(
        dimod.SampleSet.from_samples_bqm(formulation.encode(result.plan), formulation.bqm)
    )
    assert not result.certified and result.gap > 0
    assert formulation.reference_timeline.proof_seconds is None


# --- polish ------------------------------------------------------------------------------------------


def test_polish_keeps_the_counts_and_never_raises_the_energy() -> None:
    spec = with_gram(synthetic_spec(channels=(8, 12, 16), seed=0, b_max=4, bit_levels=2), seed=5)
    formulation = FiltersFormulation(spec, {"features.0": 3, "features.3": 5, "features.6": 6}, full_bits(spec))
    rng = np.random.default_rng(1)
    labels = list(formulation.bqm.variables)
    feasible = [formulation.encode(random_plan(formulation, rng)) for _ in range(6)]
    wild = [dict(zip(labels, rng.integers(0, 2, len(labels)).tolist())) for _ in range(6)]
    reads = dimod.SampleSet.from_samples_bqm(feasible + wild, formulation.bqm)
    polished = formulation.polish(reads, seed=3)
    assert formulation.feasible_reads(polished).all()
    assert set(polished.variables) == set(labels)
    before = reads.record.energy
    after = polished.record.energy
    kept = formulation.feasible_reads(reads)
    assert kept[:6].all() and np.all(after[kept] <= before[kept] + 1e-12)
    assert polished.info["polish"]["feasible_before"] == pytest.approx(kept.mean())
    # a polished read has no improving swap left
    best, energy, rate = formulation.best_plan(polished)
    assert rate == 1.0 and energy == pytest.approx(formulation.energy(best))
    assert formulation.local_optimum(best) == best
    assert formulation.polish(reads, seed=3).record.sample.tolist() == polished.record.sample.tolist()


# --- the Gram matrix from the analysis -------------------------------------------------------------


class TiedNet(nn.Module):
    """conv(1→4), residual conv(4→4) + add (one group, two consumers), pool, flatten → fc(64→5), fc(5→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(64, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv(h) + h)
        h = nn.functional.max_pool2d(h, 2).flatten(1)
        return self.head(torch.relu(self.fc(h)))


def direct_gram(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``UᵀU/N`` with u_s the gradient of sample s's loss by per-channel masks at every consumer
    input (one mask per channel, shared by all its consumers), one float64 backward pass per sample."""
    graph = trace_model(model, tuple(x.shape[1:]))
    model = copy.deepcopy(model).double()
    x = x.double()
    modules = dict(model.named_modules())
    masks = [torch.ones(group.channels, dtype=x.dtype, requires_grad=True) for group in graph.groups]
    handles = []
    for mask, group in zip(masks, graph.groups):
        for name, per_channel in group.consumers:

            def scale(module, args, mask=mask, per_channel=per_channel):
                value = args[0]
                factor = mask.repeat_interleave(per_channel)
                shape = (1, -1) + (1,) * (value.dim() - 2)
                return (value * factor.reshape(shape),)

            handles.append(modules[name].register_forward_pre_hook(scale))
    rows = []
    try:
        for sample, label in zip(x, y):
            loss = nn.functional.cross_entropy(model(sample[None]), label[None])
            rows.append(torch.cat(torch.autograd.grad(loss, masks)).numpy())
    finally:
        for handle in handles:
            handle.remove()
    u = np.array(rows)
    return u.T @ u / len(u)


def test_the_analysis_gram_matrix_is_the_per_sample_mask_gradients_gram() -> None:
    torch.manual_seed(0)
    model = TiedNet().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((10, 1, 8, 8), generator=generator)
    y = torch.randint(0, 3, (10,), generator=generator)
    graph, spec = analyse_model(
        model, (x, y), (1, 8, 8), fake_quantize, "tied", b_max=4, bit_levels=2, filter_gram=True
    )
    assert [group.channels for group in graph.groups] == [4, 5]
    assert graph.groups[0].consumers == (("conv", 1), ("fc", 16))
    direct = direct_gram(model, x, y)
    np.testing.assert_allclose(spec.filter_gram, direct, rtol=1e-4, atol=1e-6 * np.abs(direct).max())
    # without asking, nothing is computed or stored
    assert analyse_model(model, (x, y), (1, 8, 8), fake_quantize, "tied", b_max=4, bit_levels=2)[1].filter_gram is None
    with pytest.raises(ProblemError, match="needs measure_damage"):
        analyse_model(model, (x, y), (1, 8, 8), fake_quantize, "t", filter_gram=True, measure_damage=False)


# --- the spec file -------------------------------------------------------------------------------


def test_a_spec_with_a_gram_matrix_round_trips_and_a_corrupt_one_is_one_line() -> None:
    spec = tiny_spec()
    again = CompressionSpec.from_json(spec.to_json())
    np.testing.assert_array_equal(again.filter_gram, spec.filter_gram)
    assert CompressionSpec.from_json(replace(spec, filter_gram=None).to_json()).filter_gram is None
    data = spec.to_dict()
    gram = data["filter_gram"]
    corrupt = {
        "wrong shape": [row[:-1] for row in gram],
        "ragged": [gram[0], gram[1][:3]] + gram[2:],
        "not numbers": [["x"] * len(gram)] * len(gram),
        "not finite": [[float("nan")] * len(gram)] * len(gram),
        "asymmetric": [[float(i) for i in range(len(gram))]] * len(gram),
        "not a list": "G",
    }
    for what, value in corrupt.items():
        with pytest.raises(ProblemError) as error:
            CompressionSpec.from_json(json.dumps({**data, "filter_gram": value}))
        assert "\n" not in str(error.value), what


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tiny_spec()
    bits = full_bits(spec)
    # what the analysis gives a model with no prunable group (a TorchScript one): bits only
    bits_only = CompressionSpec("scripted", (LayerSpec("fc", "linear", 3, 4),), (), filter_gram=np.zeros((0, 0)))
    unprunable = replace(spec, groups=tuple(replace(group, max_pruned=0) for group in spec.groups))
    cases = [
        (lambda: FiltersFormulation(bits_only, {}, {"fc": 8}), "no prunable channel group"),
        (lambda: FiltersFormulation.for_target(bits_only, Target(ratio=2.0)), "no prunable channel group"),
        (lambda: FiltersFormulation(replace(spec, filter_gram=None), {"g0": 1}, bits), "no filter Gram matrix"),
        (lambda: FiltersFormulation(spec, {"g0": 4}, bits), "cannot prune 4 of its 4 filters"),
        (lambda: FiltersFormulation(spec, {"g0": -1}, bits), "cannot prune -1"),
        (lambda: FiltersFormulation(spec, {"g0": 1.5}, bits), "count must be a whole number of filters, got 1.5"),
        (lambda: FiltersFormulation(spec, {"g0": True}, bits), "count must be a whole number of filters, got True"),
        (lambda: FiltersFormulation(unprunable, {}, bits), r"no prunable channel group \(every group's max_pruned"),
        (lambda: FiltersFormulation(spec, {"g9": 1}, bits), "unknown channel groups"),
        (lambda: FiltersFormulation(spec, {}, bits), "prunes no filter"),
        (lambda: FiltersFormulation(spec, {"g0": 1}, bits, time_limit=0), "time_limit must be a positive"),
        (lambda: FiltersFormulation(spec, {"g0": 1}, bits, time_limit=-5), "time_limit must be a positive"),
        (lambda: FiltersFormulation(spec, {"g0": 1}, bits, reference_solver="cplex"), "unknown reference solver"),
        (lambda: FiltersFormulation(spec, {"g0": 1}, {"conv0": 8}), "plan bits do not match"),
        (lambda: FiltersFormulation.for_target(spec, Target(ratio=4.0, beta=1.0)), "has no beta"),
    ]
    for build, message in cases:
        with pytest.raises(ProblemError, match=message) as error:
            build()
        assert "\n" not in str(error.value)
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "pyscipopt" else real_find_spec(name, *a)
    )
    with pytest.raises(SolverError, match=r"qubocompress\[miqp\]") as error:
        FiltersFormulation(spec, {"g0": 1}, bits, reference_solver="scip")
    assert "\n" not in str(error.value)
    # "auto" falls back to HiGHS without SCIP
    assert "HiGHS" in FiltersFormulation(spec, {"g0": 1}, bits).reference().method


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interactions": True}, "drop --interactions"),
        ({"beta": 0.5}, "the filters formulation has no beta"),
        ({"solver": "rl"}, "fixes both"),
    ],
)
def test_settings_the_filters_formulation_cannot_take_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        CompressConfig(formulation="filters", **options).validate()
    assert CompressConfig(formulation="filters").layer_sensitivity() == "fisher"
    CompressConfig(formulation="filters", metric="bops").validate()


# --- end to end --------------------------------------------------------------------------------------


def test_compress_with_the_filters_formulation_runs_end_to_end(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "filters"
    argv = ["compress", "--model", "lenet5", "--formulation", "filters", "--target-ratio", "16"]
    argv += ["--finetune-epochs", "0", "--no-report", "--no-baseline", "--exact-time-limit", "5"]
    assert run(*argv, "--data", data_dir, "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    qubo = metrics["qubo"]
    assert qubo["formulation"] == "filters" and qubo["feasible_rate"] == 1.0
    spec = CompressionSpec.from_json((out / "spec.json").read_text())
    assert spec.filter_gram is not None
    assert qubo["variables"] == sum(group.size for group in spec.groups if qubo["counts"].get(group.name))
    plan = Plan.from_dict(json.loads((out / "plan.json").read_text()))
    formulation = FiltersFormulation(spec, qubo["counts"], plan.bits, penalty=qubo["penalty"])
    assert {name: len(channels) for name, channels in plan.pruned.items() if channels} == qubo["counts"]
    assert formulation.energy(plan) == pytest.approx(qubo["energy"])
    assert qubo["energy"] >= qubo["exact"]["energy"] - 1e-12 or not qubo["exact"]["certified"]
    assert metrics["compressed"]["ratio"] >= 16
    bqm = dimod.BinaryQuadraticModel.from_file((out / "qubo.bqm").open("rb"))
    assert bqm == formulation.bqm

"""The budget formulation: true costs, BQM == damage on feasible plans, certified optimum, errors, polish."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import dimod
import numpy as np
import pytest
from dwave.samplers import TreeDecompositionSolver
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qubocompress.bench.instances import builtin_budget_instance
from qubocompress.errors import ProblemError
from qubocompress.problem.budget import BudgetFormulation, default_bit_options, smallest_plan
from qubocompress.problem.local_search import MoveTables, descend_all, repair_all
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, Interaction, LayerSpec
from qubocompress.problem.synthetic import synthetic_resnet_spec, synthetic_spec, with_synthetic_measurements
from qubocompress.solvers.exact import ExactSampler
from qubocompress.solvers.registry import make_sampler

FLOATS = {"allow_nan": False, "allow_infinity": False, "allow_subnormal": False}


@st.composite
def specs(draw: st.DrawFn, interactions: bool | None = None, max_layers: int = 4) -> CompressionSpec:
    """Small random specs: shared (residual-like) groups, depthwise convs, a classifier without an
    output group, a flatten→linear layer (in_features_per_channel > 1), groups without options."""
    b_max = draw(st.integers(3, 8))
    groups = []
    for g in range(draw(st.integers(1, 3))):
        size = draw(st.integers(2, 6))
        importance = np.array(draw(st.lists(st.floats(0.0, 2.0, **FLOATS), min_size=size, max_size=size)))
        max_pruned = draw(st.integers(1, size - 1))
        options: tuple[int, ...] = ()
        damage = np.zeros(0)
        if draw(st.booleans()) or g == 0:
            extra = draw(st.sets(st.integers(1, max_pruned), min_size=1, max_size=3))
            options = (0, *sorted(extra))
            steps = draw(st.lists(st.floats(0.0, 1.0, **FLOATS), min_size=len(options) - 1, max_size=len(options) - 1))
            damage = np.concatenate([[0.0], np.cumsum(steps)])
        groups.append(ChannelGroup(f"g{g}", importance, max_pruned, prune_options=options, prune_damage=damage))
    layers = []
    for n in range(draw(st.integers(1, max_layers))):
        damage = np.array(draw(st.lists(st.floats(-0.05, 3.0, **FLOATS), min_size=b_max, max_size=b_max)))
        shape = draw(st.sampled_from(["conv", "depthwise", "linear", "classifier"]))
        if shape == "depthwise":
            g = draw(st.integers(0, len(groups) - 1))
            size = groups[g].size
            layers.append(
                LayerSpec(
                    f"l{n}",
                    "conv",
                    size,
                    size,
                    groups=size,
                    kernel_area=9,
                    out_group=g,
                    in_group=g,
                    quant_damage=damage,
                )
            )
            continue
        out_group = None if shape == "classifier" else draw(st.integers(0, len(groups) - 1))
        out = groups[out_group].size if out_group is not None else draw(st.integers(1, 4))
        in_group = draw(st.none() | st.integers(0, len(groups) - 1))
        cin = groups[in_group].size if in_group is not None else draw(st.integers(1, 3))
        linear = shape != "conv"
        layers.append(
            LayerSpec(
                f"l{n}",
                "linear" if linear else "conv",
                out,
                cin,
                kernel_area=1 if linear else 9,
                in_features_per_channel=draw(st.sampled_from([1, 4])) if linear else 1,
                out_positions=1 if linear else draw(st.sampled_from([1, 16])),
                out_group=out_group,
                in_group=in_group,
                quant_damage=damage,
            )
        )
    spec = CompressionSpec(
        "random", tuple(layers), tuple(groups), b_max=b_max, bit_levels=min(3, int(math.log2(b_max)))
    )
    if interactions is None:
        interactions = draw(st.booleans())
    terms = []
    if interactions:
        families = [f"bits:{layer.name}" for layer in layers] + [f"prune:{g.name}" for g in groups if g.prune_options]
        for first, second in draw(
            st.lists(st.tuples(st.sampled_from(families), st.sampled_from(families)), max_size=4)
        ):
            shape_of = [spec._family_size(f) for f in (first, second)]
            table = np.array(
                draw(
                    st.lists(
                        st.floats(-0.5, 0.5, **FLOATS),
                        min_size=shape_of[0] * shape_of[1],
                        max_size=shape_of[0] * shape_of[1],
                    )
                )
            ).reshape(shape_of)
            terms.append(Interaction(first, second, table))
    return CompressionSpec(
        "random", tuple(layers), tuple(groups), b_max=b_max, bit_levels=spec.bit_levels, interactions=tuple(terms)
    )


@st.composite
def formulations(draw: st.DrawFn, interactions: bool | None = None, max_layers: int = 4) -> BudgetFormulation:
    spec = draw(specs(interactions=interactions, max_layers=max_layers))
    metric = draw(st.sampled_from(["bits", "bops"]))
    bit_options = draw(st.sampled_from([None, (spec.b_max - 1, spec.b_max), (spec.min_bits, spec.b_max)]))
    ratio = draw(st.floats(4.1, 40.0, **FLOATS))
    try:
        return BudgetFormulation(spec, ratio=ratio, metric=metric, bit_options=bit_options)
    except ProblemError as exc:
        assume("not reachable" not in str(exc))
        raise


def grid_plans(formulation: BudgetFormulation) -> list[Plan]:
    """Every plan on the option grid."""
    model = formulation.model
    return [model.plan_of(np.array(x)) for x in itertools.product(*(range(k) for k in model.counts))]


def random_grid_plan(formulation: BudgetFormulation, rng: np.random.Generator) -> Plan:
    return formulation.model.plan_of(np.array([rng.integers(k) for k in formulation.model.counts]))


def scale_of(formulation: BudgetFormulation) -> float:
    return 1.0 + abs(formulation.exact()[1]) + formulation.penalty


# --- sizes, damage, encode/decode ---------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_encoded_plans_cost_damage_and_energy(formulation: BudgetFormulation, seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = formulation.spec
    for _ in range(5):
        plan = random_grid_plan(formulation, rng)
        index = formulation.model.index_of(plan)
        truth = plan.weight_bits(spec) if formulation.metric == "bits" else plan.bops(spec)
        assert formulation.model.costs(index)[0] == truth == formulation.cost(plan)
        assert formulation.feasible(plan) == (truth <= formulation.budget)
        assert formulation.model.damages(index)[0] == pytest.approx(formulation.objective(plan), abs=1e-9)
        sample = formulation.encode(plan)
        assert formulation.decode(sample) == plan
        assert formulation.is_feasible(sample) == formulation.feasible(plan)
        energy = formulation.energy(plan)
        if formulation.within_rounded_budget(plan):
            assert formulation.feasible(plan)
            assert energy == pytest.approx(formulation.objective(plan), abs=1e-7 * scale_of(formulation))
        else:  # over the BQM's budget: pays at least the penalty
            assert energy >= formulation.objective(plan) + formulation.penalty - 1e-7 * scale_of(formulation)


def test_damages_too_small_to_scale_still_give_a_certified_plan_within_budget() -> None:
    """Every damage near 1e-305 nats (found by hypothesis): the MILP's objective scale would
    overflow; such damages count as zero and any plan within the budget is optimal."""
    spec = synthetic_spec(prune_steps=2, seed=1)
    tiny = replace(
        spec,
        layers=[replace(layer, quant_damage=layer.quant_damage * 1e-306) for layer in spec.layers],
        groups=[replace(group, prune_damage=group.prune_damage * 1e-306) for group in spec.groups],
        interactions=[replace(term, table=term.table * 1e-306) for term in spec.interactions],
    )
    formulation = BudgetFormulation(tiny, ratio=16.0)
    plan, damage = formulation.exact()
    assert formulation.feasible(plan) and formulation.exact_result().certified
    assert 0.0 <= formulation.objective(plan) < 1e-300 and damage == pytest.approx(0.0, abs=1e-12)


def test_energy_equals_damage_on_a_realistic_spec() -> None:
    formulation = BudgetFormulation(synthetic_spec(prune_steps=4, interactions=True, hidden=32, seed=3), ratio=20.0)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        plan = random_grid_plan(formulation, rng)
        if formulation.within_rounded_budget(plan):
            assert formulation.energy(plan) == pytest.approx(formulation.objective(plan), rel=1e-9, abs=1e-9)
            checked += 1
    assert checked > 10


def test_objective_is_the_sum_of_the_measurements() -> None:
    spec = synthetic_spec(channels=(4, 8), prune_steps=2, interactions=True, seed=2)
    formulation = BudgetFormulation(spec, ratio=8.0)
    plan = formulation.model.plan_of(np.array([1, 2, 0, 3, 5]))  # groups: 1, 2 steps; bits of 3 layers
    expected = spec.groups[0].prune_damage[1] + spec.groups[1].prune_damage[2]
    position = {"prune:features.0": 1, "prune:features.3": 2}
    for layer in spec.layers:
        b = plan.bits[layer.name]
        expected += layer.quant_damage[b - 1]
        position[f"bits:{layer.name}"] = b - 1
    for term in spec.interactions:
        expected += term.table[position[term.first], position[term.second]]
    assert formulation.objective(plan) == pytest.approx(expected, rel=1e-12)
    assert plan.bits == {"features.0": 2, "features.3": 5, "classifier": 8}


def test_decode_of_a_broken_sample_is_deterministic_and_infeasible() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4, 8), prune_steps=2, seed=1), ratio=8.0)
    plan, _ = formulation.exact()
    sample = formulation.encode(plan)
    empty = {label: 0 for label in sample}
    assert formulation.decode(empty) == formulation.decode(dict(empty))
    assert formulation.decode(empty).bits == {layer.name: 8 for layer in formulation.spec.layers}
    assert not formulation.is_feasible(empty)
    doubled = dict(sample)
    extra = next(label for label, var in formulation.variables.items() if var.kind == "state" and not sample[label])
    doubled[extra] = 1
    assert not formulation.is_feasible(doubled)
    assert formulation.decode(doubled) == formulation.decode(doubled)
    assert formulation.bqm.energy(doubled) >= formulation.exact()[1] + formulation.penalty - 1e-7 * scale_of(
        formulation
    )


def test_encode_rejects_plans_off_the_grid() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4, 8), prune_steps=2, seed=1), ratio=8.0)
    plan, _ = formulation.exact()
    with pytest.raises(ProblemError, match="bits; the options are"):
        formulation.encode(Plan(pruned=plan.pruned, bits={**plan.bits, "classifier": 7}))
    group = formulation.spec.groups[1]
    with pytest.raises(ProblemError, match="prunes 1 channels of group 'features.3'; the options are"):
        formulation.encode(Plan(pruned={**plan.pruned, group.name: (int(group.prune_order()[0]),)}, bits=plan.bits))
    most = int(group.prune_order()[-1])
    with pytest.raises(ProblemError, match="other than its 2 least important ones"):
        formulation.encode(
            Plan(pruned={**plan.pruned, group.name: (int(group.prune_order()[0]), most)}, bits=plan.bits)
        )
    assert not formulation.feasible(Plan(pruned=plan.pruned, bits={**plan.bits, "classifier": 7}))


def test_decode_rejects_incomplete_samples() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4,), prune_steps=2), ratio=8.0)
    with pytest.raises(ProblemError, match="sample lacks variable"):
        formulation.decode({})


# --- exact reference ------------------------------------------------------------------------------


def brute_force(formulation: BudgetFormulation) -> float:
    feasible = [formulation.objective(p) for p in grid_plans(formulation) if formulation.feasible(p)]
    return min(feasible)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(max_layers=3))
def test_exact_equals_brute_force(formulation: BudgetFormulation) -> None:
    assume(int(np.prod(formulation.model.counts)) <= 3000)
    result = formulation.exact_result()
    assert result.certified and result.gap == 0.0
    assert formulation.feasible(result.plan)
    assert result.objective == pytest.approx(brute_force(formulation), abs=1e-9)
    plan, energy = formulation.exact()
    assert plan == result.plan
    assert energy == pytest.approx(result.objective, abs=1e-7 * scale_of(formulation))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(max_layers=2))
def test_ground_state_of_the_bqm_is_the_exact_optimum(formulation: BudgetFormulation) -> None:
    assume(formulation.num_variables <= 18)
    ground = dimod.ExactSolver().sample(formulation.bqm).first
    _, energy = formulation.exact()
    assert ground.energy == pytest.approx(energy, abs=1e-7 * scale_of(formulation))
    plan = formulation.decode(ground.sample)
    assert formulation.is_feasible(ground.sample)
    assert formulation.objective(plan) == pytest.approx(formulation.exact_result().objective, abs=1e-9)


def test_ground_state_with_interactions_by_tree_decomposition() -> None:
    spec = with_synthetic_measurements(synthetic_spec(channels=(4, 4), seed=5), seed=5, prune_steps=1)
    formulation = BudgetFormulation(spec, ratio=12.0, bit_options=(2, 4, 8))
    assert spec.interactions and 18 < formulation.num_variables <= 60
    ground = TreeDecompositionSolver().sample(formulation.bqm).first
    _, energy = formulation.exact()
    assert ground.energy == pytest.approx(energy, abs=1e-7 * scale_of(formulation))
    assert formulation.is_feasible(ground.sample)
    assert formulation.decode(ground.sample) == formulation.exact_result().plan


@pytest.mark.parametrize("metric", ["bits", "bops"])
def test_exact_on_a_resnet_shaped_spec_beats_every_sampled_plan(metric: str) -> None:
    spec = synthetic_resnet_spec(widths=(4, 8), blocks=1, prune_steps=2, interactions=True, seed=1)
    formulation = BudgetFormulation(spec, ratio=12.0, metric=metric)
    result = formulation.exact_result()
    assert result.certified and formulation.feasible(result.plan)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        plan = random_grid_plan(formulation, rng)
        if formulation.feasible(plan):
            assert formulation.objective(plan) >= result.objective - 1e-12


def test_exact_sampler_answers_from_the_certified_optimum() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4, 8), prune_steps=2, seed=1), ratio=8.0)
    result = ExactSampler(formulation).sample(formulation.bqm)
    assert result.info["certified"] is True and result.info["gap"] == 0.0
    assert "MILP" in result.info["method"]
    assert formulation.decode(result.first.sample) == formulation.exact_result().plan
    assert result.first.energy == pytest.approx(formulation.exact()[1], rel=1e-12)


# --- budgets and errors ---------------------------------------------------------------------------


def test_budget_from_ratio_and_absolute_agree() -> None:
    spec = synthetic_spec(prune_steps=4, seed=0)
    by_ratio = BudgetFormulation(spec, ratio=16.0)
    assert by_ratio.budget == spec.fp32_weight_bits() // 16
    by_absolute = BudgetFormulation(spec, absolute=by_ratio.budget)
    assert by_absolute.exact_result().objective == pytest.approx(by_ratio.exact_result().objective)
    assert by_ratio.exact_result().plan.compression_ratio(spec) >= 16.0


def test_bops_budget_is_met_in_bops() -> None:
    spec = synthetic_spec(prune_steps=4, seed=0)
    formulation = BudgetFormulation(spec, ratio=40.0, metric="bops")
    plan = formulation.exact_result().plan
    fp32_bops = spec.fp32_macs() * 32 * spec.activation_bits
    assert plan.bops(spec) <= fp32_bops / 40.0
    assert formulation.energy(plan) == pytest.approx(formulation.objective(plan), rel=1e-9, abs=1e-9)


def test_unreachable_budget_names_the_smallest_plan() -> None:
    spec = synthetic_spec(prune_steps=4, seed=0)
    smallest = smallest_plan(spec, (2, 4, 8))
    ratio = smallest.compression_ratio(spec)
    with pytest.raises(ProblemError) as info:
        BudgetFormulation(spec, ratio=ratio * 1.01, bit_options=(2, 4, 8))
    message = str(info.value)
    assert message == (
        f"budget {ratio * 1.01:g}x is not reachable: the smallest plan on offer is {math.floor(10 * ratio) / 10:.1f}x "
        "smaller than fp32 (all layers at 2 bits, 50% of filters pruned)"
    )
    assert "\n" not in message
    BudgetFormulation(spec, ratio=float(message.split(" is ")[2].split("x")[0]), bit_options=(2, 4, 8))  # as named
    BudgetFormulation(spec, ratio=ratio * 0.999, bit_options=(2, 4, 8))  # just reachable


def test_unreachable_absolute_and_bops_budgets_say_what_is_needed() -> None:
    spec = synthetic_spec(prune_steps=4, seed=0)
    with pytest.raises(
        ProblemError, match=r"budget of 1000 bits is not reachable: the smallest plan on offer needs \d+ bits"
    ):
        BudgetFormulation(spec, absolute=1000)
    with pytest.raises(ProblemError, match=r"budget 1e\+06x is not reachable: .*x fewer BOPs than fp32"):
        BudgetFormulation(spec, ratio=1e6, metric="bops")


def test_no_prune_options_means_no_pruning_in_the_message() -> None:
    spec = synthetic_spec(channels=(4,), seed=0)  # no prune options measured
    with pytest.raises(ProblemError, match=r"all layers at 2 bits, no filters pruned \(no prune options on offer\)"):
        BudgetFormulation(spec, ratio=100.0)
    assert BudgetFormulation(spec, ratio=8.0).exact_result().plan.pruned == {"features.0": ()}


@pytest.mark.parametrize("ratio", [1.0, 0.5, -3.0, float("nan"), float("inf")])
def test_meaningless_ratios_are_rejected(ratio: float) -> None:
    with pytest.raises(ProblemError, match="budget ratio must be a finite number > 1"):
        BudgetFormulation(synthetic_spec(channels=(4,), prune_steps=2), ratio=ratio)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "either as a ratio vs fp32 or as an absolute cost, not both or neither"),
        ({"ratio": 8.0, "absolute": 1e5}, "either as a ratio vs fp32 or as an absolute cost, not both or neither"),
        ({"absolute": 0}, "absolute budget must be a finite number > 0"),
        ({"absolute": float("nan")}, "absolute budget must be a finite number > 0"),
        ({"ratio": 8.0, "metric": "bytes"}, "budget metric must be 'bits', 'bops' or 'file'"),
        ({"ratio": 8.0, "bit_options": (1, 9)}, r"bit options \[1, 9\] must lie in 1..8"),
        ({"ratio": 8.0, "bit_options": ()}, "bit options must not be empty"),
        ({"ratio": 8.0, "bit_options": (2.5, 8)}, "bit options must be integers"),  # was read as 2 bits
        ({"ratio": 8.0, "bit_options": (True, 8)}, "bit options must be integers"),
        ({"ratio": 8.0, "penalty": -1.0}, "penalty must be a finite number > 0"),
        ({"ratio": 8.0, "time_limit": 0}, "time_limit must be a positive number of seconds"),
    ],
)
def test_bad_arguments_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        BudgetFormulation(synthetic_spec(channels=(4,), prune_steps=2), **options)


def test_missing_measurements_are_clear_errors() -> None:
    spec = synthetic_spec(channels=(4,), prune_steps=2)
    no_prune_damage = CompressionSpec(
        spec.model,
        spec.layers,
        (ChannelGroup("features.0", spec.groups[0].importance, 2, prune_options=(0, 2)),),
    )
    with pytest.raises(ProblemError, match="offers prune options but no measured prune_damage"):
        BudgetFormulation(no_prune_damage, ratio=8.0)
    layers = (LayerSpec("a", "linear", 4, 4, quant_damage=np.zeros(0)),)
    with pytest.raises(ProblemError, match="layer 'a' has no measured quantization damage"):
        BudgetFormulation(CompressionSpec("m", layers, ()), ratio=8.0)
    assert BudgetFormulation(CompressionSpec("m", layers, ()), ratio=8.0, bit_options=(2,)).exact()[1] == 0.0


def test_default_bit_options_follow_the_spec() -> None:
    assert default_bit_options(synthetic_spec(channels=(4,))) == (2, 3, 4, 5, 6, 8)
    assert default_bit_options(synthetic_spec(channels=(4,), b_max=4, bit_levels=2)) == (2, 3, 4)


# --- reading samples: feasibility rate, best feasible read, polish ---------------------------------


def test_best_feasible_never_returns_an_infeasible_read() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4, 8), prune_steps=2, seed=1), ratio=8.0)
    plan, energy = formulation.exact()
    labels = list(formulation.variables)
    empty = {label: 0 for label in labels}
    sampleset = dimod.SampleSet.from_samples_bqm([empty, empty], formulation.bqm)
    assert formulation.best_feasible(sampleset) == (None, None, 0.0)
    good = formulation.encode(plan)
    mixed = dimod.SampleSet.from_samples_bqm([empty, good, empty, empty], formulation.bqm)
    best, objective, rate = formulation.best_feasible(mixed)
    assert best == plan and objective == pytest.approx(formulation.exact_result().objective) and rate == 0.25


def test_polish_turns_any_reads_into_feasible_ones() -> None:
    formulation = BudgetFormulation(synthetic_spec(prune_steps=4, interactions=True, seed=2), ratio=24.0)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 2, size=(20, formulation.num_variables))
    sampleset = dimod.SampleSet.from_samples((noise, list(formulation.variables)), dimod.BINARY, 0.0)
    polished = formulation.polish(sampleset, chains=2, chain_length=5)
    assert polished.info["polish"]["feasible_before"] == 0.0
    for sample, energy in polished.data(["sample", "energy"]):
        assert formulation.is_feasible(sample)
        assert energy == pytest.approx(formulation.objective(formulation.decode(sample)), rel=1e-9, abs=1e-9)
        assert energy >= formulation.exact()[1] - 1e-9
    assert polished.info["timing"]["polish_seconds"] > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_move_tables_predict_every_double_move(formulation: BudgetFormulation, seed: int) -> None:
    model = formulation.model
    tables = MoveTables(model)
    rng = np.random.default_rng(seed)
    vectors = np.array([[rng.integers(k) for k in model.counts] for _ in range(2)])  # two rows at once
    singles, corrections = tables.single(vectors), tables.related_corrections(vectors)
    related = {tuple(pair): u for u, pair in enumerate(tables.related.tolist())}
    for x, d, k, e, f in zip(vectors, *singles, *corrections):
        base_damage, base_cost = model.damages(x)[0], model.costs(x)[0]
        for m1, m2 in itertools.product(range(tables.size), repeat=2):
            c1, c2 = tables.move_choice[m1], tables.move_choice[m2]
            if c1 >= c2:
                continue
            y = x.copy()
            y[c1], y[c2] = o1, o2 = tables.move_option[m1], tables.move_option[m2]
            u = related.get((c1, c2))
            extra_damage, extra_cost = (0.0, 0) if u is None else (e[u, o1, o2], f[u, o1, o2])  # unrelated: additive
            assert model.damages(y)[0] == pytest.approx(base_damage + d[m1] + d[m2] + extra_damage, abs=1e-9)
            assert model.costs(y)[0] == base_cost + k[m1] + k[m2] + extra_cost


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_descent_ends_where_no_single_or_double_change_helps(formulation: BudgetFormulation, seed: int) -> None:
    model = formulation.model.in_units(formulation.unit)
    capacity = formulation.budget // formulation.unit
    tables = MoveTables(model)
    rng = np.random.default_rng(seed)
    starts = np.array([[rng.integers(k) for k in model.counts] for _ in range(3)])
    ends = descend_all(model, repair_all(model, starts, capacity, tables), capacity, tables)
    for x in ends:
        assert model.costs(x)[0] <= capacity
        damage = model.damages(x)[0]
        for c1, c2 in itertools.combinations_with_replacement(model.free, 2):
            for o1, o2 in itertools.product(range(model.counts[c1]), range(model.counts[c2])):
                y = x.copy()
                y[c1], y[c2] = o1, o2
                if c1 == c2 and o1 != o2 or model.costs(y)[0] > capacity:
                    continue
                assert model.damages(y)[0] >= damage - 2 * tables.tolerance


def test_repair_restarts_a_row_that_no_single_move_makes_cheaper() -> None:
    # found by hypothesis: with BOPs rounded up to 4 coarse units, some plans over the budget
    # cannot get cheaper by changing one choice (each change saves less than a unit)
    layer = {"kind": "conv", "kernel_area": 9, "in_features_per_channel": 1, "quant_damage": [0.0, 0.0, 0.0, 0.0, 0.0]}
    spec = CompressionSpec.from_dict(
        {
            "model": "random",
            "b_max": 5,
            "bit_levels": 2,
            "activation_bits": 32,
            "interactions": [],
            "groups": [
                {
                    "name": "g0",
                    "importance": [0.0] * 5,
                    "max_pruned": 1,
                    "members": [],
                    "prune_options": [0, 1],
                    "prune_damage": [0.0, 0.0],
                },
                {
                    "name": "g1",
                    "importance": [0.0] * 2,
                    "max_pruned": 1,
                    "members": [],
                    "prune_options": [],
                    "prune_damage": [],
                },
            ],
            "layers": [
                {
                    **layer,
                    "name": "l0",
                    "out_channels": 2,
                    "in_channels": 1,
                    "groups": 1,
                    "out_positions": 1,
                    "out_group": 1,
                    "in_group": None,
                },
                {
                    **layer,
                    "name": "l1",
                    "out_channels": 5,
                    "in_channels": 5,
                    "groups": 5,
                    "out_positions": 1,
                    "out_group": 0,
                    "in_group": 0,
                },
                {
                    **layer,
                    "name": "l2",
                    "out_channels": 5,
                    "in_channels": 5,
                    "groups": 5,
                    "out_positions": 1,
                    "out_group": 0,
                    "in_group": 0,
                },
                {
                    **layer,
                    "name": "l3",
                    "out_channels": 5,
                    "in_channels": 1,
                    "groups": 1,
                    "out_positions": 16,
                    "out_group": 0,
                    "in_group": None,
                    "quant_damage": [0.0, 0.0, 1.0, 0.0, 1.0],
                },
            ],
        }
    )
    formulation = BudgetFormulation(spec, ratio=5.0, metric="bops", bit_options=(2, 3, 4, 5))
    model, capacity = formulation.model.in_units(formulation.unit), formulation.budget // formulation.unit
    tables = MoveTables(model)
    grid = np.array(list(itertools.product(*(range(k) for k in model.counts))))
    over = grid[model.costs(grid) > capacity]
    stuck = over[~(tables.single(over)[1] < 0).any(axis=1)]
    assert len(stuck) > 0  # the case this test is about
    repaired = repair_all(model, stuck, capacity, tables)
    assert np.all(model.costs(repaired) <= capacity)
    assert np.all(model.costs(descend_all(model, repaired, capacity, tables)) <= capacity)


@pytest.mark.parametrize("interactions", [False, True])
def test_sa_with_polish_reaches_the_optimum_on_a_vgg_like_spec(interactions: bool) -> None:
    spec = synthetic_spec(channels=(4, 8, 8, 16), hidden=16, prune_steps=2, interactions=interactions, seed=4)
    formulation = BudgetFormulation(spec, ratio=20.0)
    _, e_star = formulation.exact()
    options = formulation.recommended_sampler_options("sa")
    sampler = make_sampler("sa")
    for seed in range(3):
        reads = sampler.sample(formulation.bqm, seed=seed, **options)
        polished = formulation.polish(reads, seed=seed)
        assert polished.first.energy <= e_star + 1e-9 * abs(e_star)
        plan, objective, rate = formulation.best_feasible(polished)
        assert rate == 1.0 and plan == formulation.exact_result().plan
        assert objective == pytest.approx(formulation.exact_result().objective)


def test_polish_is_deterministic_and_never_worse_than_descent() -> None:
    formulation = BudgetFormulation(synthetic_spec(prune_steps=4, seed=6), ratio=24.0)
    rng = np.random.default_rng(1)
    index = np.stack([rng.integers(k, size=8) for k in formulation.model.counts], axis=1)
    reads = dimod.SampleSet.from_samples_bqm(
        (formulation._encode_rows(index), list(formulation.variables)), formulation.bqm
    )
    once = formulation.polish(reads, chains=4, chain_length=5)
    again = formulation.polish(reads, chains=4, chain_length=5)
    assert np.array_equal(once.record.sample, again.record.sample)
    assert once.info["polish"]["seed"] == again.info["polish"]["seed"]
    no_search = formulation.polish(reads, chain_length=0)
    assert np.all(once.record.energy <= no_search.record.energy + 1e-12)
    with pytest.raises(ProblemError, match="polish needs chains >= 1, chain_length >= 0 and kick >= 1"):
        formulation.polish(reads, kick=0)


def test_polish_kicks_a_quarter_of_the_free_choices_and_at_least_five() -> None:
    few = BudgetFormulation(synthetic_spec(prune_steps=4, seed=6), ratio=24.0)
    many = builtin_budget_instance("resnet20", 32).formulation
    assert len(few.model.free) < 4 * 5 and few.default_kick == 5
    assert (len(many.model.free), many.default_kick) == (34, 8)
    rng = np.random.default_rng(1)
    index = np.stack([rng.integers(k, size=4) for k in few.model.counts], axis=1)
    reads = dimod.SampleSet.from_samples_bqm((few._encode_rows(index), list(few.variables)), few.bqm)
    assert few.polish(reads, chains=2, chain_length=1).info["polish"]["kick"] == 5


@pytest.mark.slow
def test_sa_and_polish_reach_the_optimum_in_99_percent_of_reads_on_the_hardest_builtin_instance() -> None:
    # the figure docs/benchmarks.md §2.2 reports (bench --formulation budget: seeds 0-9, 20 reads each)
    formulation = builtin_budget_instance("resnet20", 32).formulation
    _, e_star = formulation.exact()
    sampler = make_sampler("sa")
    options = formulation.recommended_sampler_options("sa")
    records = [formulation.polish(sampler.sample(formulation.bqm, seed=seed, **options)).record for seed in range(10)]
    reads = np.concatenate([record.num_occurrences for record in records])
    optimal = np.concatenate([record.energy <= e_star + 1e-9 * abs(e_star) for record in records])
    assert reads.sum() == 200
    assert reads[optimal].sum() >= 0.99 * 200


def test_recommended_options_are_for_simulated_annealing_only() -> None:
    formulation = BudgetFormulation(synthetic_spec(channels=(4,), prune_steps=2), ratio=8.0)
    assert formulation.recommended_sampler_options("sa") == {"num_reads": 20, "num_sweeps": 100}
    assert formulation.recommended_sampler_options("exact") == {}


# --- synthetic measurements -------------------------------------------------------------------------


def test_measurements_leave_the_base_spec_unchanged() -> None:
    plain = synthetic_spec(seed=3)
    measured = synthetic_spec(seed=3, prune_steps=4, interactions=True)
    for a, b in zip(plain.layers, measured.layers):
        assert np.array_equal(a.quant_damage, b.quant_damage)
    for a, b in zip(plain.groups, measured.groups):
        assert np.array_equal(a.importance, b.importance) and not a.prune_options
        assert b.prune_options == tuple(round(i * b.max_pruned / 4) for i in range(5))
        assert b.prune_damage[0] == 0.0 and np.all(np.diff(b.prune_damage) >= 0)
    assert synthetic_spec(seed=3, prune_steps=4, interactions=True).to_json() == measured.to_json()


def test_interaction_terms_vanish_where_a_choice_leaves_its_layer_alone() -> None:
    spec = synthetic_resnet_spec(prune_steps=4, interactions=True, seed=2)
    assert len(spec.interactions) > 50
    signs = set()
    for term in spec.interactions:
        for family, axis in ((term.first, 0), (term.second, 1)):
            untouched = spec.b_max - 1 if family.startswith("bits:") else 0
            assert np.all(np.take(term.table, untouched, axis=axis) == 0.0)
        signs.update(np.sign(term.table[term.table != 0]).tolist())
    assert signs == {-1.0, 1.0}


def test_resnet_spec_ties_residual_channels() -> None:
    spec = synthetic_resnet_spec(seed=0)
    assert [layer.name for layer in spec.layers][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert len(spec.layers) == 22 and len(spec.groups) == 12
    stem = spec.groups[spec.group_index("conv1")]
    assert stem.members == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    fc = spec.layers[spec.layer_index("fc")]
    assert fc.in_group == spec.group_index("layer3.0.shortcut.0") and fc.out_group is None
    shortcut = spec.layers[spec.layer_index("layer2.0.shortcut.0")]
    assert shortcut.kernel_area == 1 and shortcut.in_group == spec.group_index("conv1")
    assert spec.fp32_weight_bits() // 32 == 270608


def test_vgg_spec_with_a_hidden_linear_layer() -> None:
    spec = synthetic_spec(hidden=128)
    hidden, classifier = spec.layers[-2], spec.layers[-1]
    assert hidden.in_features_per_channel == 9 and hidden.out_group == 6 and hidden.in_group == 5
    assert classifier.in_features_per_channel == 1 and classifier.in_group == 6
    with pytest.raises(ProblemError, match="hidden must be >= 0"):
        synthetic_spec(hidden=-1)


def test_an_unproven_milp_reports_its_gap_and_a_missing_one_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import qubocompress.problem.budget as budget_module
    from qubocompress.problem.milp import MilpOutcome

    spec = synthetic_spec(channels=(4, 8), prune_steps=2, seed=1)
    optimum = BudgetFormulation(spec, ratio=8.0).exact_result()
    index = BudgetFormulation(spec, ratio=8.0).model.index_of(optimum.plan)
    monkeypatch.setattr(
        budget_module, "solve_budget_milp", lambda *a: MilpOutcome(index, optimum.objective - 0.1, False)
    )
    unproven = BudgetFormulation(spec, ratio=8.0).exact_result()
    assert not unproven.certified and unproven.gap == pytest.approx(0.1 / optimum.objective)
    assert unproven.bound == pytest.approx(optimum.objective - 0.1)
    monkeypatch.setattr(budget_module, "solve_budget_milp", lambda *a: MilpOutcome(None, -math.inf, False))
    fallback = BudgetFormulation(spec, ratio=8.0)
    result = fallback.exact_result()
    assert not result.certified and result.gap == math.inf and "local search" in result.method
    assert fallback.feasible(result.plan)
    info = ExactSampler(fallback).sample(fallback.bqm).info
    assert info["certified"] is False and info["gap"] == math.inf


def test_a_bound_that_reaches_the_objective_certifies_it_even_at_zero_damage(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unproven solve whose bound equals its objective is proven optimal: gap 0, not 0/0 = inf."""
    import qubocompress.problem.budget as budget_module
    from qubocompress.problem.budget import ExactResult
    from qubocompress.problem.milp import MilpOutcome

    plan = smallest_plan(synthetic_spec(channels=(4,), prune_steps=2))
    zero = ExactResult.of(plan, 0.0, False, 0.0, 0.0, "test")
    assert zero.certified and zero.gap == 0.0 and zero.bound == 0.0
    short = ExactResult.of(plan, 2.0, False, 1.0, 0.0, "test")
    assert not short.certified and short.gap == 0.5 and short.bound == 1.0
    spec = synthetic_spec(channels=(4, 8), prune_steps=2, seed=1)
    optimum = BudgetFormulation(spec, ratio=8.0).exact_result()
    index = BudgetFormulation(spec, ratio=8.0).model.index_of(optimum.plan)
    monkeypatch.setattr(budget_module, "solve_budget_milp", lambda *a: MilpOutcome(index, optimum.objective, False))
    reached = BudgetFormulation(spec, ratio=8.0).exact_result()
    assert reached.certified and reached.gap == 0.0

"""The paper formulation: BQM == independent energy, decode/encode, certified optimum, γ calibration."""

from __future__ import annotations

import math

import dimod
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qubocompress.errors import ProblemError
from qubocompress.problem.paper import (
    MAX_EXACT_COMBINATIONS,
    PaperFormulation,
    Variable,
    balanced_beta,
    check_certifiable,
    quant_sensitivity,
)
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.problem.target import calibrate_gamma, most_compressed_plan

FLOATS = {"allow_nan": False, "allow_infinity": False, "allow_subnormal": False}


@st.composite
def specs(draw: st.DrawFn, max_group_size: int = 6, max_layers: int = 4, max_bit_levels: int = 3) -> CompressionSpec:
    """Small random specs: shared groups (several member layers), depthwise layers, unprunable layers."""
    b_max = draw(st.integers(2, 8))
    bit_levels = draw(st.integers(1, min(max_bit_levels, int(math.log2(b_max)))))
    groups = []
    for g in range(draw(st.integers(0, 3))):
        size = draw(st.integers(1, max_group_size))
        importance = draw(st.lists(st.floats(0.0, 2.0, **FLOATS), min_size=size, max_size=size))
        groups.append(ChannelGroup(f"g{g}", np.array(importance), draw(st.integers(0, size - 1))))
    layers = []
    for n in range(draw(st.integers(1, max_layers))):
        out_group = draw(st.none() | st.integers(0, len(groups) - 1)) if groups else None
        out = groups[out_group].size if out_group is not None else draw(st.integers(1, 5))
        damage = np.array(draw(st.lists(st.floats(-0.1, 3.0, **FLOATS), min_size=b_max, max_size=b_max)))
        if out_group is not None and draw(st.booleans()):  # depthwise conv on its own group
            layers.append(
                LayerSpec(
                    f"l{n}",
                    "conv",
                    out,
                    out,
                    groups=out,
                    kernel_area=9,
                    out_group=out_group,
                    in_group=out_group,
                    quant_damage=damage,
                )
            )
            continue
        in_group = draw(st.none() | st.integers(0, len(groups) - 1)) if groups else None
        cin = groups[in_group].size if in_group is not None else draw(st.integers(1, 4))
        kind = draw(st.sampled_from(["conv", "linear"]))
        layers.append(
            LayerSpec(
                f"l{n}",
                kind,
                out,
                cin,
                kernel_area=9 if kind == "conv" else 1,
                in_features_per_channel=1 if kind == "conv" else draw(st.sampled_from([1, 4])),
                out_group=out_group,
                in_group=in_group,
                quant_damage=damage,
            )
        )
    return CompressionSpec("random", tuple(layers), tuple(groups), b_max=b_max, bit_levels=bit_levels)


@st.composite
def formulations(draw: st.DrawFn, **spec_options: int) -> PaperFormulation:
    spec = draw(specs(**spec_options))
    beta = draw(st.none() | st.floats(0.0, 10.0, **FLOATS))
    return PaperFormulation(spec, beta=beta, gamma=draw(st.floats(0.0, 50.0, **FLOATS)))


def random_plan(formulation: PaperFormulation, rng: np.random.Generator) -> Plan:
    spec = formulation.spec
    pruned = {group.name: tuple(int(i) for i in group.candidates() if rng.random() < 0.5) for group in spec.groups}
    bits = {layer.name: int(rng.integers(spec.min_bits, spec.b_max + 1)) for layer in spec.layers}
    return Plan(pruned=pruned, bits=bits)


def energy_scale(formulation: PaperFormulation) -> float:
    """Magnitude of the terms summed into H (for an absolute tolerance next to rel 1e-9)."""
    bqm = formulation.bqm
    biases = [*bqm.linear.values(), *bqm.quadratic.values()]
    return 1.0 + formulation.gamma + sum(abs(b) for b in biases)


def assert_close(a: float, b: float, scale: float) -> None:
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 * scale), (a, b)


# --- BQM and the independent energy agree ---------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_bqm_energy_of_encoded_plan_equals_direct_energy(formulation: PaperFormulation, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(5):
        plan = random_plan(formulation, rng)
        sample = formulation.encode(plan)
        assert_close(formulation.bqm.energy(sample), formulation.energy(plan), energy_scale(formulation))
        decoded = formulation.decode(sample)
        assert decoded.bits == plan.bits
        assert decoded.pruned == {g.name: plan.pruned[g.name] for g in formulation.spec.groups}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_energy_of_decoded_random_sample_equals_bqm_energy(formulation: PaperFormulation, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = list(formulation.bqm.variables)
    for _ in range(5):
        sample = dict(zip(labels, rng.integers(0, 2, len(labels)).tolist()))
        plan = formulation.decode(sample)
        assert formulation.encode(plan) == sample
        assert_close(formulation.energy(plan), formulation.bqm.energy(sample), energy_scale(formulation))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(formulations(), st.integers(0, 2**32 - 1))
def test_canonical_plan_keeps_counts_and_bits_and_never_raises_the_energy(
    formulation: PaperFormulation, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(5):
        plan = random_plan(formulation, rng)
        canonical = formulation.canonical(plan)
        assert canonical.bits == plan.bits
        for group in formulation.spec.groups:
            count = len(plan.pruned.get(group.name, ()))
            assert canonical.pruned[group.name] == tuple(sorted(int(i) for i in group.prune_order()[:count]))
        assert formulation.energy(canonical) <= formulation.energy(plan) + 1e-12 * energy_scale(formulation)


def test_polish_makes_reads_canonical_with_bqm_energies() -> None:
    formulation = calibrate_gamma(synthetic_spec(channels=(8, 16, 16), seed=2), 8.0)
    labels = list(formulation.bqm.variables)
    rng = np.random.default_rng(0)
    raw = dimod.SampleSet.from_samples_bqm((rng.integers(0, 2, (25, len(labels))), labels), formulation.bqm)
    polished = formulation.polish(raw)
    assert polished.record.num_occurrences.sum() == 25
    assert 0.0 < polished.info["polish"]["changed"] <= 1.0
    assert np.allclose(polished.record.energy, formulation.bqm.energies(polished))
    for sample, energy in raw.data(["sample", "energy"]):
        plan = formulation.decode(sample)
        better = formulation.energy(formulation.canonical(plan))
        assert better <= energy + 1e-12 * energy_scale(formulation)
    # every polished read is its own canonical form, and no read got worse
    for sample in polished.samples():
        plan = formulation.decode(sample)
        assert formulation.canonical(plan) == plan
    assert polished.record.energy.min() <= raw.record.energy.min() + 1e-12


def test_bqm_offset_makes_the_uncompressed_plan_cost_nothing() -> None:
    spec = synthetic_spec(channels=(4, 8), seed=3)
    formulation = PaperFormulation(spec, gamma=2.5)
    untouched = Plan(pruned={}, bits={layer.name: spec.b_max for layer in spec.layers})
    # L_p = L_q = 0 and R = 0.
    assert formulation.energy(untouched) == pytest.approx(0.0, abs=1e-12)
    assert formulation.bqm.energy(formulation.encode(untouched)) == pytest.approx(0.0, abs=1e-12)


def test_energy_matches_hand_computation() -> None:
    group = ChannelGroup("g", np.array([0.5, 0.1, 0.3]), max_pruned=2, members=("a",))
    damage = np.array([3.0, 1.0, 0.25, 0.0])  # b_max = 4, K = 2: d = 1, 2, 3
    conv = LayerSpec("a", "conv", 3, 2, kernel_area=9, out_group=0, quant_damage=damage)
    head = LayerSpec("b", "linear", 2, 3, in_features_per_channel=4, in_group=0, quant_damage=damage)
    spec = CompressionSpec("toy", (conv, head), (group,), b_max=4, bit_levels=2)
    formulation = PaperFormulation(spec, beta=2.0, gamma=3.0)
    plan = Plan(pruned={"g": (1,)}, bits={"a": 2, "b": 3})
    s = (0.25 * 1 + 1.0 * 4 + 3.0 * 9) / (1 + 16 + 81)  # Ω(1)=damage[2], Ω(2)=damage[1], Ω(3)=damage[0]
    assert quant_sensitivity(conv, spec) == pytest.approx(s)
    m0 = 4 * (3 * 18 + 2 * 12)
    reward = 1 - (18 * 2 * 2 + 12 * 2 * 3) / m0
    expected = 0.1**2 + 2.0 * (s * 2**2 + s * 1**2) - 3.0 * reward
    assert formulation.energy(plan) == pytest.approx(expected, rel=1e-12)
    assert formulation.bqm.energy(formulation.encode(plan)) == pytest.approx(expected, rel=1e-12)
    assert set(formulation.bqm.variables) == {"p[g:1]", "p[g:2]", "q[a:0]", "q[a:1]", "q[b:0]", "q[b:1]"}
    assert formulation.variables["p[g:2]"] == Variable("prune", 0, 2)
    assert formulation.variables["q[b:1]"] == Variable("bit", 1, 1)


# --- sensitivity and β -----------------------------------------------------------------------------


def test_quant_sensitivity_is_the_least_squares_fit() -> None:
    spec = synthetic_spec(seed=5)
    for layer in spec.layers:
        removed = np.arange(1, 2**spec.bit_levels)
        omega = np.maximum(layer.quant_damage[spec.b_max - removed - 1], 0)
        fit, *_ = np.linalg.lstsq((removed**2)[:, None].astype(float), omega, rcond=None)
        assert quant_sensitivity(layer, spec) == pytest.approx(fit[0], rel=1e-12)


def test_quant_sensitivity_ignores_negative_damage() -> None:
    layer = LayerSpec("a", "linear", 2, 2, quant_damage=np.array([-1.0, -0.5, -0.1, 0.0]))
    spec = CompressionSpec("toy", (layer,), (), b_max=4, bit_levels=2)
    assert quant_sensitivity(layer, spec) == 0.0
    assert balanced_beta(spec) == 1.0


def test_missing_quant_damage_is_a_clear_error() -> None:
    layer = LayerSpec("head", "linear", 2, 2)
    spec = CompressionSpec("toy", (layer,), ())
    with pytest.raises(ProblemError, match="layer 'head' has no measured quantization damage"):
        PaperFormulation(spec)


def test_balanced_beta_equates_the_largest_losses() -> None:
    spec = synthetic_spec(seed=2)
    formulation = PaperFormulation(spec)
    largest_lp = sum(float(g.importance[g.candidates()].sum()) ** 2 for g in spec.groups)
    largest_lq = float(np.sum(formulation.sensitivity)) * (2**spec.bit_levels - 1) ** 2
    assert formulation.beta * largest_lq == pytest.approx(largest_lp)
    assert PaperFormulation(spec, beta=0.25).beta == 0.25


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
        ({"gamma": math.inf}, "gamma must be a finite number >= 0"),
        ({"beta": math.nan}, "beta must be a finite number >= 0"),
    ],
)
def test_bad_weights_are_rejected(options: dict[str, float], message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        PaperFormulation(synthetic_spec(channels=(4,)), **options)


def test_bad_groups_are_rejected() -> None:
    damage = np.array([1.0, 0.0])
    layer = LayerSpec("a", "linear", 2, 2, out_group=0, quant_damage=damage)
    twins = (ChannelGroup("g", np.ones(2), 1), ChannelGroup("g", np.ones(2), 1))
    with pytest.raises(ProblemError, match="group names .* must be unique"):
        PaperFormulation(CompressionSpec("toy", (layer,), twins, b_max=2, bit_levels=1))
    negative = (ChannelGroup("g", np.array([1.0, -0.5]), 1),)
    with pytest.raises(ProblemError, match="importance must be finite and >= 0"):
        PaperFormulation(CompressionSpec("toy", (layer,), negative, b_max=2, bit_levels=1))


# --- decode / encode errors ------------------------------------------------------------------------


def test_encode_rejects_channels_that_are_not_candidates() -> None:
    spec = synthetic_spec(channels=(4, 8), seed=1)
    formulation = PaperFormulation(spec)
    kept = int(spec.groups[0].prune_order()[-1])
    plan = Plan(pruned={spec.groups[0].name: (kept,)}, bits={layer.name: 8 for layer in spec.layers})
    with pytest.raises(ProblemError, match=f"plan prunes channels \\[{kept}\\] of group 'features.0'"):
        formulation.encode(plan)


def test_encode_rejects_unreachable_bits() -> None:
    spec = synthetic_spec(channels=(4,), bit_levels=2)
    plan = Plan(pruned={}, bits={layer.name: 3 for layer in spec.layers})
    with pytest.raises(ProblemError, match="allowed 5..8"):
        PaperFormulation(spec).encode(plan)


def test_decode_rejects_incomplete_samples() -> None:
    formulation = PaperFormulation(synthetic_spec(channels=(4,)))
    sample = dict.fromkeys(formulation.bqm.variables, 0)
    del sample["q[classifier:2]"]
    with pytest.raises(ProblemError, match="sample lacks variable 'q\\[classifier:2\\]'"):
        formulation.decode(sample)


# --- the certified optimum ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(formulations(max_group_size=4, max_layers=3, max_bit_levels=2))
def test_exact_equals_brute_force(formulation: PaperFormulation) -> None:
    assume(formulation.num_variables <= 16)
    plan, energy = formulation.exact()
    brute = dimod.ExactSolver().sample(formulation.bqm).first.energy
    scale = energy_scale(formulation)
    assert_close(energy, brute, scale)
    assert_close(formulation.bqm.energy(formulation.encode(plan)), energy, scale)
    assert_close(formulation.energy(plan), energy, scale)


def test_exact_beats_random_plans_on_a_realistic_spec() -> None:
    formulation = PaperFormulation(synthetic_spec(seed=4), gamma=5.0)
    plan, energy = formulation.exact()
    assert formulation.bqm.energy(formulation.encode(plan)) == pytest.approx(energy, rel=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert formulation.energy(random_plan(formulation, rng)) >= energy - 1e-12


def test_exact_refuses_components_too_large_to_enumerate() -> None:
    group = ChannelGroup("shared", np.ones(3), 1)
    damage = np.array([1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0])
    members = tuple(LayerSpec(f"l{n}", "conv", 3, 3, kernel_area=9, out_group=0, quant_damage=damage) for n in range(6))
    spec = CompressionSpec("toy", members, (group,))
    with pytest.raises(ProblemError, match=f"needs 262144 joint bit choices \\(limit {MAX_EXACT_COMBINATIONS}\\)"):
        PaperFormulation(spec).exact()


def test_a_group_without_candidates_ties_no_layers_and_is_certified() -> None:
    """max_pruned 0: no prune variable couples its six layers, so each is enumerated alone."""
    rng = np.random.default_rng(3)
    damages = [np.sort(rng.random(8))[::-1] for _ in range(6)]
    members = tuple(
        LayerSpec(f"l{n}", "conv", 3, 3, kernel_area=9, out_group=0, quant_damage=damages[n]) for n in range(6)
    )
    spec = CompressionSpec("toy", members, (ChannelGroup("shared", np.ones(3), 0),))
    formulation = PaperFormulation(spec, gamma=0.5)
    plan, energy = formulation.exact()
    ground = dimod.ExactSolver().sample(formulation.bqm).first
    assert_close(energy, ground.energy, energy_scale(formulation))
    assert formulation.decode(ground.sample) == plan and plan.pruned == {"shared": ()}
    check_certifiable("shared", 6, 3, prunable=False)
    with pytest.raises(ProblemError, match="needs 262144 joint bit choices"):
        check_certifiable("shared", 6, 3)


def test_canonical_refuses_more_pruned_channels_than_candidates() -> None:
    spec = synthetic_spec(channels=(4, 8), seed=1)
    formulation = PaperFormulation(spec)
    group = spec.groups[1]
    over = tuple(int(i) for i in group.prune_order()[: group.max_pruned + 1])
    plan = Plan(pruned={group.name: over}, bits={layer.name: 8 for layer in spec.layers})
    with pytest.raises(ProblemError, match=f"can prune at most {group.max_pruned}"):  # was: silently fewer
        formulation.canonical(plan)


def test_exact_plan_names_every_group() -> None:
    spec = synthetic_spec(channels=(8, 8), seed=0)
    plan, _ = PaperFormulation(spec, gamma=0.0).exact()
    assert plan.pruned == {g.name: () for g in spec.groups}
    assert plan.bits == {layer.name: spec.b_max for layer in spec.layers}


# --- γ calibration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [6.0, 16.0, 40.0])
def test_calibrated_gamma_is_nearly_the_smallest_that_reaches_the_target(target: float) -> None:
    spec = synthetic_spec(seed=1)
    tol = 1e-2
    formulation = calibrate_gamma(spec, target, tol=tol)
    plan, energy = formulation.exact()
    assert plan.compression_ratio(spec) >= target
    assert formulation.bqm.energy(formulation.encode(plan)) == pytest.approx(energy, rel=1e-9)
    below = PaperFormulation(spec, beta=formulation.beta, gamma=formulation.gamma / (1 + tol) * (1 - 1e-6))
    assert below.exact()[0].compression_ratio(spec) < target


def test_target_reached_without_compression_reward_gives_gamma_zero() -> None:
    spec = synthetic_spec(seed=0)
    assert calibrate_gamma(spec, 3.0).gamma == 0.0  # 8-bit weights are already 4× smaller than fp32


def test_unreachable_target_names_the_reachable_maximum() -> None:
    spec = synthetic_spec(seed=0, max_prune_fraction=0.5)
    best = most_compressed_plan(spec).compression_ratio(spec)
    message = (
        f"target ratio 400.0× is not reachable: the most this model can be compressed with bits ≥ 1 "
        f"and at most 50% of each layer's filters pruned is {best:.1f}×"
    )
    with pytest.raises(ProblemError, match=message):
        calibrate_gamma(spec, 400.0)
    formulation = calibrate_gamma(spec, best)
    assert formulation.exact()[0].compression_ratio(spec) >= best


@pytest.mark.parametrize("target", [1.0, 0.5, math.nan, math.inf])
def test_meaningless_targets_are_rejected(target: float) -> None:
    with pytest.raises(ProblemError, match="target compression ratio must be a finite number > 1"):
        calibrate_gamma(synthetic_spec(channels=(4,)), target)


def test_negative_tolerance_is_rejected() -> None:
    with pytest.raises(ProblemError, match="tol must be a finite number >= 0, got -0.1"):
        calibrate_gamma(synthetic_spec(channels=(4,)), 8.0, tol=-0.1)


# --- synthetic specs ----------------------------------------------------------------------------------


def test_synthetic_spec_is_a_vgg_like_chain() -> None:
    spec = synthetic_spec()
    assert spec.to_json() == synthetic_spec().to_json()
    assert spec.to_json() != synthetic_spec(seed=1).to_json()
    convs, head = spec.layers[:-1], spec.layers[-1]
    assert [layer.out_channels for layer in convs] == [16, 16, 32, 32, 64, 64]
    assert [layer.out_positions for layer in convs] == [784, 784, 196, 196, 49, 49]
    assert convs[0].in_group is None and convs[0].in_channels == 1
    for n, layer in enumerate(convs[1:], start=1):
        assert layer.in_group == convs[n - 1].out_group == n - 1
        assert layer.in_channels == convs[n - 1].out_channels
    assert (head.kind, head.out_group, head.in_group, head.in_features_per_channel) == ("linear", None, 5, 9)
    assert [g.max_pruned for g in spec.groups] == [8, 8, 16, 16, 32, 32]
    for layer in spec.layers:
        damage = layer.quant_damage
        assert damage[-1] == 0 and np.all(np.diff(damage) <= 0) and damage[0] > 0
    assert CompressionSpec.from_json(spec.to_json()).to_json() == spec.to_json()


def test_synthetic_spec_scales_past_ten_thousand_variables() -> None:
    spec = synthetic_spec(width=16, depth=6)
    assert len(spec.layers) == 37
    assert PaperFormulation(spec).num_variables >= 10_000


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": ()}, "channels must be a non-empty list"),
        ({"width": 0.0}, "width must be > 0"),
        ({"max_prune_fraction": 1.0}, "max_prune_fraction must be in \\[0, 1\\)"),
    ],
)
def test_synthetic_spec_rejects_bad_shapes(options: dict[str, object], message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        synthetic_spec(**options)


@pytest.mark.parametrize("blocks", [2.7, "2", True, 0])
def test_a_spec_file_with_a_bad_blocks_value_is_a_problem_error(blocks: object) -> None:
    data = synthetic_spec(seed=0).to_dict()
    data["groups"][0]["blocks"] = blocks
    with pytest.raises(ProblemError, match="blocks must be an integer >= 1"):
        CompressionSpec.from_dict(data)

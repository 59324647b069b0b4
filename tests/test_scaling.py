"""The array-built budget BQM and CQM against the dense build they replaced (small specs only),
and the QUBO scaling script on a tiny curve."""

from __future__ import annotations

from dataclasses import replace

import dimod
import numpy as np
import pytest

from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.encodings import ENCODINGS
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, FileLayout, Interaction, LayerSpec
from qubocompress.problem.synthetic import synthetic_resnet_spec, synthetic_spec, with_synthetic_filter_gram

from test_scripts import load_script


def dense_bqm(formulation: BudgetFormulation) -> dimod.BinaryQuadraticModel:
    """The budget BQM as it was built before (one dense matrix over all variables): the oracle."""
    f = formulation
    starts, weights, _ = f._layout
    count = int(starts[-1])
    total = count + len(weights)
    penalty = f.penalty
    quadratic_weight, linear_weight = f.budget_weights
    damage_linear, blocks, offset = f._objective_terms
    linear = np.zeros(total)
    linear[:count] = damage_linear
    quadratic = np.zeros((total, total))
    for (ka, kb), block in blocks.items():
        quadratic[starts[ka] : starts[ka + 1], starts[kb] : starts[kb + 1]] += block
    units = [-(-cell.size.ravel() // f.unit) for cell in f.cells]
    spare = float(f._spare)
    a = np.concatenate([u - u.min() for u in units] + [np.array(weights, dtype=np.int64)]).astype(np.float64)
    linear += quadratic_weight * (a * a - 2.0 * spare * a) + linear_weight * a
    if quadratic_weight:
        quadratic += 2.0 * quadratic_weight * np.triu(np.outer(a, a), 1)
    offset += quadratic_weight * spare**2 - linear_weight * spare
    for k in range(len(f.cells)):
        block = slice(starts[k], starts[k + 1])
        size = starts[k + 1] - starts[k]
        linear[block] -= penalty
        quadratic[block, block] += 2.0 * penalty * np.triu(np.ones((size, size)), 1)
        offset += penalty
    half = penalty / 2.0
    for c in f.model.free:
        for k1, k2 in zip(f.model.cells_of[c], f.model.cells_of[c][1:]):
            o1 = f.cells[k1].states[:, f.cells[k1].axes.index(c)]
            o2 = f.cells[k2].states[:, f.cells[k2].axes.index(c)]
            for k, o in ((k1, o1), (k2, o2)):
                block = slice(starts[k], starts[k + 1])
                linear[block] += half
                quadratic[block, block] += 2.0 * half * np.triu(o[:, None] == o[None, :], 1)
            quadratic[starts[k1] : starts[k1 + 1], starts[k2] : starts[k2 + 1]] -= (
                2.0 * half * (o1[:, None] == o2[None, :])
            )
    rows, cols = np.nonzero(quadratic)
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, quadratic[rows, cols]), offset, dimod.BINARY, variable_order=list(f.variables)
    )


SPECS = {
    "vgg": lambda: synthetic_spec(channels=(8, 8, 16), hidden=16, seed=3, prune_steps=3, interactions=True),
    "resnet": lambda: synthetic_resnet_spec(seed=1, widths=(4, 8), blocks=1, prune_steps=2, interactions=True),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("shape", sorted(SPECS))
def test_array_built_bqm_equals_the_dense_build(shape: str, encoding: str) -> None:
    formulation = BudgetFormulation(SPECS[shape](), ratio=12.0, encoding=encoding, time_limit=20)
    built, oracle = formulation.bqm, dense_bqm(formulation)
    assert list(built.variables) == list(oracle.variables)
    assert built.num_interactions == oracle.num_interactions
    assert set(map(frozenset, built.quadratic)) == set(map(frozenset, oracle.quadratic))
    rng = np.random.default_rng(7)
    labels = list(formulation.variables)
    samples = rng.integers(0, 2, size=(200, len(labels)), dtype=np.int8)
    samples[:20] = formulation._encode_rows(formulation.model.index_of(formulation.exact_result().plan)[None, :])
    scale = 1.0 + formulation.penalty
    np.testing.assert_allclose(
        built.energies((samples, labels)), oracle.energies((samples, labels)), rtol=1e-12, atol=1e-10 * scale
    )
    if encoding == "lagrangian":  # no budget couplings: every bias is summed as before, bit for bit
        assert built == oracle


def random_spec(rng: np.random.Generator) -> CompressionSpec:
    """A small random spec with what the synthetic nets lack: grouped-conv blocks, concatenated
    inputs (``extra_in_groups``), groups no layer touches, interactions and a file layout."""
    groups = []
    for g in range(int(rng.integers(1, 4))):
        blocks = int(rng.choice([1, 2]))
        size = blocks * int(rng.integers(2, 5))
        most = blocks * int(rng.integers(1, size // blocks))
        extra = sorted({blocks * int(v) for v in rng.integers(1, most // blocks + 1, size=2)})
        damage = np.concatenate([[0.0], np.cumsum(rng.random(len(extra)))])
        groups.append(ChannelGroup(f"g{g}", rng.random(size), most, (), (0, *extra), damage, blocks))
    layers = []
    for n in range(int(rng.integers(1, 4))):
        out = int(rng.integers(-1, len(groups)))
        ins = [int(g) for g in rng.choice(len(groups), size=int(rng.integers(0, len(groups) + 1)), replace=False)]
        layers.append(
            LayerSpec(
                f"l{n}",
                "conv",
                groups[out].size if out >= 0 else 3,
                sum(groups[g].size for g in ins) + int(rng.integers(0, 3)) or 1,
                kernel_area=int(rng.choice([1, 9])),
                out_positions=int(rng.choice([1, 4])),
                out_group=out if out >= 0 else None,
                in_group=ins[0] if ins else None,
                extra_in_groups=tuple(ins[1:]),
                quant_damage=2 * rng.random(4),
            )
        )
    base = CompressionSpec("random", tuple(layers), tuple(groups), b_max=4, bit_levels=2)
    families = [f"bits:{layer.name}" for layer in layers] + [f"prune:{group.name}" for group in groups]
    terms = []
    for first, second in rng.choice(families, size=(int(rng.integers(0, 4)), 2)):
        shape = (base._family_size(str(first)), base._family_size(str(second)))
        terms.append(Interaction(str(first), str(second), 0.3 * rng.normal(size=shape)))
    layout = FileLayout(tuple(int(b) for b in rng.integers(0, 10, len(layers))), int(rng.integers(0, 100)), 10**5)
    return replace(base, interactions=tuple(terms), file_layout=layout)


@pytest.mark.parametrize("seed", range(12))
def test_array_built_bqm_equals_the_dense_build_on_random_specs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    metric = ("bits", "bops", "file")[seed % 3]
    ratio = 1.2 if metric == "file" else 4.0
    formulation = BudgetFormulation(spec, ratio=ratio, metric=metric, bit_options=(1, 2, 4), time_limit=10)
    built, oracle = formulation.bqm, dense_bqm(formulation)
    assert list(built.variables) == list(oracle.variables)
    labels = list(formulation.variables)
    samples = rng.integers(0, 2, size=(100, len(labels)), dtype=np.int8)
    scale = 1.0 + formulation.penalty * (1 + formulation._spare) ** 2
    np.testing.assert_allclose(
        built.energies((samples, labels)), oracle.energies((samples, labels)), rtol=1e-12, atol=1e-12 * scale
    )
    # encoded plans within the BQM's budget have energy = damage; the others pay the penalty
    index = np.stack([rng.integers(0, k, size=50) for k in formulation.model.counts], axis=1)
    energies = built.energies((formulation._encode_rows(index), labels))
    damages = formulation.model.damages(index)
    fits = formulation.model.in_units(formulation.unit).costs(index) <= formulation.budget // formulation.unit
    np.testing.assert_allclose(energies[fits], damages[fits], atol=1e-9 * scale)
    assert np.all(energies[~fits] >= damages[~fits] + formulation.penalty * (1 - 1e-9))


def test_cqm_objective_is_the_damage_part_of_the_bqm() -> None:
    formulation = BudgetFormulation(SPECS["vgg"](), ratio=12.0, time_limit=20)
    cqm = formulation.to_cqm()
    index = np.random.default_rng(2).integers(0, formulation.model.counts, size=(30, len(formulation.model.counts)))
    count = int(formulation._layout[0][-1])
    labels = list(formulation.variables)[:count]
    states = [dict(zip(labels, row.tolist())) for row in formulation._encode_rows(index)[:, :count]]
    np.testing.assert_allclose(
        [cqm.objective.energy(state) for state in states], formulation.model.damages(index), rtol=1e-12, atol=1e-12
    )
    assert len(cqm.discrete) == len(formulation.cells)
    assert all(
        cqm.check_feasible(state) == (cost <= formulation.budget)
        for state, cost in zip(states, formulation.model.costs(index))
    )


def test_filters_bqm_equals_the_dense_build() -> None:
    spec = with_synthetic_filter_gram(synthetic_spec(channels=(8, 12, 16), seed=4), seed=4)
    counts = {group.name: max(1, group.max_pruned // 2) for group in spec.groups}
    formulation = FiltersFormulation(spec, counts, {layer.name: spec.b_max for layer in spec.layers})
    f = formulation  # the build before (one dense matrix, np.nonzero): the oracle
    same = f._group_of[:, None] == f._group_of[None, :]
    linear = np.diag(f.gram) / 2 + f.penalty * (1 - 2 * f._k[f._group_of])
    quadratic = np.triu(f.gram + 2 * f.penalty * same, 1)
    rows, cols = np.nonzero(quadratic)
    offset = f.penalty * float(np.sum(f._k**2)) + f.quant_damage
    oracle = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, quadratic[rows, cols]), offset, dimod.BINARY, variable_order=f.labels
    )
    assert list(formulation.bqm.variables) == f.labels
    assert formulation.bqm == oracle  # same biases, bit for bit


def test_script_builds_a_small_filters_qubo_and_skips_a_dense_one_over_the_memory_cap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = load_script("qubo_scaling")
    assert script.main(["--sizes", "300", "--kinds", "filters"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| filters |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    variables = int(cells[1].replace(",", ""))
    assert variables >= 300 and int(cells[2].replace(",", "")) == variables * (variables - 1) // 2
    assert float(cells[5]) > 0  # a peak was measured
    assert script.main(["--sizes", "1000", "--kinds", "slack", "--max-gib", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "not built: would need 1,728,870 couplings" in out  # 1,860 states: every pair


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--sizes", "1,x"], "--sizes takes positive integers"), (["--kinds", "dense"], "unknown kinds ['dense']")],
)
def test_script_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert load_script("qubo_scaling").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]

"""The Python API: a model defined in the caller's code goes through qc.compress with DataLoaders
and comes back smaller and runnable; bad input is a QubocompressError."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import qubocompress as qc
from qubocompress.data.datasets import synthetic_dataset
from qubocompress.errors import QubocompressError

DATA = synthetic_dataset(num_classes=4, n_train=320, n_val=1, n_test=96, seed=5)


class NotebookNet(nn.Module):
    """A model as a user writes it in a notebook cell: not a built-in, not in any file we know."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


def trained_net() -> NotebookNet:
    torch.manual_seed(0)
    net = NotebookNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(DATA.train.x), DATA.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def loaders() -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(DATA.train.x, DATA.train.y), batch_size=64)
    test = DataLoader(TensorDataset(DATA.test.x, DATA.test.y), batch_size=64)
    return train, test


@pytest.fixture(scope="module")
def result() -> qc.CompressResult:
    return qc.compress(
        trained_net(), loaders(), target_ratio=8, formulation="budget", finetune_epochs=1, baseline=False, seed=0
    )


def test_a_notebook_model_comes_back_smaller_and_runnable(result, tmp_path):
    assert isinstance(result.model, NotebookNet) and not result.model.training
    metrics = result.metrics
    assert metrics.ratio >= 8 and metrics.model_file_bytes * 3 < metrics.figures["model"]["fp32_state_dict_bytes"]
    assert metrics.fp32_test_acc > 0.7 and metrics.test_acc > 0.6
    assert metrics.to_dict()["data"]["normalize"] == "none"
    x = DATA.test.x[:8]
    with torch.no_grad():
        logits = result.model(x)
    assert logits.shape == (8, 4)
    assert not list(tmp_path.iterdir())  # nothing written without save or out
    folder = result.save(tmp_path / "run")
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "metrics.json", "plan.json", "qubo.bqm"}
    reloaded = qc.load(folder / "model.safetensors", model=NotebookNet())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(QubocompressError, match="loading never imports or calls what a file names"):
        qc.load(folder / "model.safetensors")


def test_own_evaluate_and_finetune_are_used(tmp_path):
    calls = {"evaluate": 0, "finetune": 0}

    def evaluate(model: nn.Module) -> float:
        calls["evaluate"] += 1
        return 0.5

    def finetune(model: nn.Module) -> None:
        calls["finetune"] += 1

    x, y = DATA.train.x, DATA.train.y
    out = tmp_path / "out"
    result = qc.compress(
        trained_net(), (x, y), target_ratio=6, formulation="budget", baseline=False,
        evaluate=evaluate, finetune=finetune, out=out,
    )  # fmt: skip
    assert calls == {"evaluate": 4, "finetune": 1}  # fp32, before, after, reloaded; one plan fine-tuned
    assert result.metrics.test_acc == 0.5 and (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("model", "data", "options", "needle"),
    [
        (42, None, {}, "model must be a torch.nn.Module or a built-in model name, got a int"),
        ("nn", (DATA.train.x[:, 0], DATA.train.y), {}, "images must be a float tensor N×C×H×W"),
        (None, (DATA.train.x, DATA.train.y.float()), {}, "labels must be"),
        (None, (DATA.train.x, DATA.train.y), {"targt_ratio": 8}, "unknown option 'targt_ratio'"),
        (None, (DATA.train.x, DATA.train.y), {"seed": -1}, "--seed must be a whole number"),
        (None, [1, 2, 3], {}, "data must be a name or folder"),
        (None, (DATA.train.x, DATA.train.y), {"metric": "file"}, "need --formulation budget"),
        (
            None,
            (DATA.train.x, DATA.train.y),
            {"metric": "file", "formulation": "budget", "search": "ga-acc"},
            "--metric file budgets the QUBO",
        ),
        (None, (DATA.train.x, DATA.train.y), {"search": "rl-acc", "search_batch": "4"}, "--search-batch must be a"),
        (None, (DATA.train.x, DATA.train.y), {"search_evaluations": 2.5}, "--search-evaluations must be a whole"),
    ],
)
def test_bad_input_is_one_error(model, data, options, needle):
    with pytest.raises(QubocompressError) as error:
        qc.compress(NotebookNet() if model in (None, "nn") else model, data, **options)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_a_model_for_other_classes_or_shapes_is_refused_before_the_work():
    three = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    with pytest.raises(QubocompressError, match="outputs 3 logits per sample, but the data set has 4 classes"):
        qc.compress(three, (DATA.train.x, DATA.train.y))
    wrong_input = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(QubocompressError, match="does not run on inputs of shape"):
        qc.compress(wrong_input, (DATA.train.x, DATA.train.y))


@pytest.mark.parametrize("budget", ["6KiB", "4500B"])
def test_a_file_budget_gives_a_model_file_of_at_most_that_many_bytes(budget, tmp_path):
    from qubocompress.config import parse_budget

    result = qc.compress(
        trained_net(), (DATA.train.x, DATA.train.y), budget=budget, metric="file", formulation="budget",
        finetune_epochs=0, baseline=False, out=tmp_path / "run",
    )  # fmt: skip
    limit = parse_budget(budget, "file") / 8
    on_disk = (tmp_path / "run" / "model.safetensors").stat().st_size
    assert on_disk == result.metrics.model_file_bytes <= limit
    compressed = result.metrics.figures["compressed"]
    assert compressed["cost_ratio"] <= result.metrics.figures["model"]["fp32_state_dict_bytes"] / on_disk
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "weights / file vs fp32" in summary


def test_the_file_cost_of_a_plan_bounds_its_file_from_above_and_closely(tmp_path):
    """The budget's model of the file is an upper bound on the real file, a few header bytes above it."""
    from qubocompress.apply.prune import prune_model
    from qubocompress.data.datasets import dataset_from_tensors
    from qubocompress.problem.choices import plan_cost
    from qubocompress.problem.plan import uniform_plan
    from qubocompress.problem.spec import CompressionSpec
    from qubocompress.pipeline import file_layout_of, file_metadata
    from qubocompress.apply.model_file import model_file_bytes
    from qubocompress.analysis.analyse import analyse_model
    from qubocompress.apply.quantize import fake_quantize
    import dataclasses

    net = trained_net()
    dataset = dataset_from_tensors((DATA.train.x, DATA.train.y), (DATA.test.x, DATA.test.y))
    graph, spec = analyse_model(
        net, (DATA.train.x[:64], DATA.train.y[:64]), (1, 28, 28), fake_quantize, "nb", layer_sensitivity="fisher",
        prune_options=(0.25, 0.5),
    )  # fmt: skip
    arch = {"factory": "test_api:NotebookNet", "kwargs": {}}
    spec = dataclasses.replace(spec, file_layout=file_layout_of(net, graph, spec, arch, dataset))
    assert isinstance(CompressionSpec.from_dict(spec.to_dict()).file_layout, type(spec.file_layout))
    for bits in (2, 4, 8):
        for fraction in (0.0, 0.25, 0.5):
            plan = uniform_plan(spec, bits, fraction)
            real = len(model_file_bytes(prune_model(net, graph, plan), plan.bits, arch, file_metadata(plan, dataset)))
            modelled = plan_cost(spec, plan, "file") // 8
            assert real <= modelled <= real + 64, (bits, fraction, real, modelled)


def test_a_model_the_onnx_exporter_cannot_translate_is_refused_before_the_analysis(monkeypatch):
    import qubocompress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "analyse", lambda *a, **k: pytest.fail("analysed before the export check"))

    class Bessel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(28 * 28, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.bessel_j0(self.head(torch.flatten(x, 1)))

    with pytest.raises(QubocompressError, match="cannot export Bessel to ONNX"):
        qc.compress(Bessel(), (DATA.train.x, DATA.train.y), export_onnx=True, formulation="budget", baseline=False)


def test_export_onnx_of_the_result_model_keeps_its_bits(result, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime

    from qubocompress.apply.quantize import inferred_bits

    assert inferred_bits(result.model) == {k: v for k, v in result.plan.bits.items() if v < 32}
    assert inferred_bits(NotebookNet()) == {}  # float weights are quantized at no width up to 8
    size = qc.export_onnx(result.model, tmp_path / "m.onnx", input_shape=(1, 28, 28))
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert size == (tmp_path / "m.onnx").stat().st_size and any(n.op_type == "DequantizeLinear" for n in graph.node)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = DATA.test.x[:6]
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], result.model(x).numpy(), atol=1e-4)


def test_a_sweep_refuses_an_rl_acc_batch_it_would_not_use():
    with pytest.raises(QubocompressError, match="qubocompress.sweep has no search_batch"):
        qc.sweep(NotebookNet(), (DATA.train.x, DATA.train.y), routes=("rl-acc",), search_batch=4)

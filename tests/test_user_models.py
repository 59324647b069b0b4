"""Loading the user's model (built-in, package.module:factory + weights, TorchScript) and its artifact."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qubocompress.analysis import analyse_model
from qubocompress.analysis.graph import TORCHSCRIPT_REASON, trace_model
from qubocompress.apply.artifact import load_artifact, save_artifact
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import fake_quantize, quantize_model_weights
from qubocompress.errors import ArtifactError, ModelError
from qubocompress.models.train import save_checkpoint
from qubocompress.models.user import load_user_model, script_archive
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv-BN-ReLU, depthwise conv, pointwise conv with a residual add, pool, linear; 1x8x8 in."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.pw(self.dw(h)) + h)
        return self.fc(h.mean((2, 3)))


def make(width=4, classes=3):
    torch.manual_seed(width)
    return Net(width, classes)


class Checked(Net):
    """Net that checks its input's rank in its forward: torch.fx cannot trace that."""

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError("expects N x C x H x W")
        return super().forward(x)


def checked(width=4, classes=3):
    torch.manual_seed(width)
    return Checked(width, classes)


def with_aux():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            features = self.conv(x).mean((2, 3))
            return self.fc(features), features

    return Aux()


def maps():
    return nn.Sequential(nn.Conv2d(1, 3, 3))


def broken(**kwargs):
    raise ValueError("width must be even")


def not_a_model():
    return 42


def no_layers():
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def with_conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(2), nn.Conv1d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 34, 3))

CONSTANT = 3
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def package(tmp_path, monkeypatch) -> str:
    """A package with a ``nets`` module on sys.path, named uniquely for this test; returns its name."""
    name = "qcuser_" + re.sub(r"\W", "_", tmp_path.name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def sample(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# factory + weights
# ---------------------------------------------------------------------------------------------


def test_factory_with_a_state_dict_or_a_checkpoint(package, tmp_path):
    reference = load_user_model(f"{package}.nets:make", kwargs={"width": 6})[0]
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1)
    plain = tmp_path / "plain.pt"
    torch.save(reference.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": reference.state_dict()}, wrapped)
    for weights in (plain, wrapped):
        model, arch = load_user_model(
            f"{package}.nets:make", weights=weights, kwargs={"width": 6}, input_shape=(1, 8, 8)
        )
        assert arch == {"factory": f"{package}.nets:make", "kwargs": {"width": 6}}
        assert not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(sample()), reference.eval()(sample()))


def test_built_in_model_with_a_qubocompress_checkpoint(tmp_path):
    kwargs = {"num_classes": 3, "in_channels": 1, "input_size": 12}
    trained = build_model("lenet5", **kwargs)
    save_checkpoint(tmp_path / "c.pt", trained, {"name": "lenet5", "kwargs": kwargs}, {})
    model, arch = load_user_model("lenet5", weights=tmp_path / "c.pt", kwargs=kwargs)
    assert arch == {"name": "lenet5", "kwargs": kwargs}
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x))


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (
            "nosuchpkg_qc.mod:make",
            r"^cannot import 'nosuchpkg_qc.mod' for --model nosuchpkg_qc.mod:make: No module named 'nosuchpkg_qc'$",
        ),
        ("{pkg}.nets:missing", r"^module '{pkg}.nets' has no attribute 'missing' \(from --model {pkg}.nets:missing\)$"),
        ("{pkg}.nets:broken", r"^factory {pkg}.nets:broken raised ValueError: width must be even$"),
        ("{pkg}.nets:not_a_model", r"^factory {pkg}.nets:not_a_model returned a int, not a torch.nn.Module$"),
        ("{pkg}.nets:CONSTANT", r"^{pkg}.nets:CONSTANT is a int, not a callable that builds a model$"),
        ("{pkg}.nets:no_layers", r"^model {pkg}.nets:no_layers has no compressible layer \(Conv2d or Linear\)$"),
        (
            "{pkg}.nets:",
            r"^unknown model '{pkg}.nets:': use a built-in name \(lenet5, mobilenet, resnet20, resnet56, vgg, vgg16\)",
        ),
        ("resnet99", r"^unknown model 'resnet99'"),
        ("missing/model.pt", r"^model file missing/model.pt does not exist$"),
    ],
)
def test_bad_models_are_one_line_model_errors(package, spec, pattern):
    with pytest.raises(ModelError) as exc:
        load_user_model(spec.format(pkg=package))
    assert re.search(pattern.format(pkg=re.escape(package)), one_line(exc))


def test_factory_that_does_not_run_on_the_input_shape(package):
    with pytest.raises(ModelError) as exc:
        load_user_model(f"{package}.nets:make", input_shape=(3, 8, 8))
    assert one_line(exc).startswith(
        f"model {package}.nets:make does not run on inputs of shape (3, 8, 8) (RuntimeError: "
    )


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        ("with_aux", {}, "returns a tuple, not one tensor of logits (N, classes)"),
        ("maps", {}, "returns shape (2, 3, 6, 6) for 2 inputs, not logits of shape (2, classes)"),
        ("make", {"classes": 2}, "outputs 2 logits per sample, but the data set has 3 classes"),
    ],
)
def test_a_model_that_does_not_return_enough_logits_is_a_one_line_error(package, factory, kwargs, message):
    with pytest.raises(ModelError) as exc:
        load_user_model(f"{package}.nets:{factory}", kwargs=kwargs, input_shape=(1, 8, 8), num_classes=3)
    assert one_line(exc) == f"model {package}.nets:{factory} {message}"
    load_user_model(f"{package}.nets:make", kwargs={"classes": 4}, input_shape=(1, 8, 8), num_classes=3)  # more is fine


def test_bad_weights_are_one_line_model_errors(package, tmp_path):
    spec = f"{package}.nets:make"
    other = load_user_model(spec, kwargs={"width": 5})[0].state_dict()
    other["extra.weight"] = torch.zeros(1)
    del other["fc.bias"]
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ModelError) as exc:
        load_user_model(spec, weights=tmp_path / "other.pt")
    message = one_line(exc)
    assert message.startswith(f"checkpoint {tmp_path / 'other.pt'} does not match the {spec} architecture (")
    assert "missing: fc.bias" in message and "unexpected: extra.weight" in message
    assert "wrong shape: stem.weight (5, 1, 3, 3) vs (4, 1, 3, 3)" in message
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ModelError) as exc:
        load_user_model(spec, weights=tmp_path / "junk.pt")
    assert (
        one_line(exc)
        == f"weights file {tmp_path / 'junk.pt'} is unreadable: not a torch.save file, or truncated or damaged"
    )
    torch.save({"step": torch.zeros(1), "lr": 0.1}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_user_model(spec, weights=tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="^weights file .*nothing.pt does not exist$"):
        load_user_model(spec, weights=tmp_path / "nothing.pt")


def test_layers_that_cannot_be_compressed_are_listed_not_an_error(package):
    model, _ = load_user_model(f"{package}.nets:with_conv1d", input_shape=(1, 8, 8))
    graph = trace_model(model, (1, 8, 8))
    assert [layer.name for layer in graph.layers] == ["0", "4"]
    assert graph.frozen_reasons["2"] == "Conv1d is not compressible (only Conv2d and Linear are); kept as it is"


def test_factory_model_prunes_and_reloads_through_the_default_builder(package, tmp_path, monkeypatch):
    spec = f"{package}.nets:make"
    model, arch = load_user_model(spec, kwargs={"width": 6})
    graph = trace_model(model, (1, 8, 8))
    assert len(graph.groups) == 1 and graph.groups[0].depthwise == ("dw",)
    assert set(graph.groups[0].producers) == {"stem", "pw"}
    plan = Plan(pruned={graph.groups[0].name: (1, 4)}, bits={"stem": 3, "dw": 4, "pw": 2, "fc": 8})
    pruned = prune_model(model, graph, plan)
    path = tmp_path / "m.qcz"
    save_artifact(path, pruned, plan.bits, arch)
    expected = quantize_model_weights(pruned, plan.bits).eval()(sample())
    nets = __import__("sys").modules[f"{package}.nets"]
    for factory in (spec, nets.make):
        loaded, _ = load_artifact(path, factory=factory)
        with torch.no_grad():
            torch.testing.assert_close(loaded(sample()), expected)
    with pytest.raises(ArtifactError) as exc:
        load_artifact(path)
    assert one_line(exc) == (
        f"{path}: cannot rebuild its {spec} model: its model is built by {spec}, and loading never imports or "
        f"calls what a file names: pass that factory yourself (load_artifact(path, factory=...) in Python, "
        f"--model {spec} on the command line)"
    )
    with pytest.raises(ArtifactError, match=f"it records the factory {spec}, not {package}.nets:checked"):
        load_artifact(path, factory=nets.checked)
    monkeypatch.delitem(__import__("sys").modules, f"{package}.nets")
    monkeypatch.delitem(__import__("sys").modules, package)
    (tmp_path / package / "nets.py").unlink()
    with pytest.raises(ArtifactError) as exc:
        load_artifact(path, factory=spec)
    assert one_line(exc) == (
        f"{path}: cannot rebuild its {spec} model: cannot import '{package}.nets' for --model {spec}: "
        f"No module named '{package}.nets'"
    )


def test_a_forward_fx_cannot_trace_is_compressed_by_bits_only(package, tmp_path):
    model, arch = load_user_model(f"{package}.nets:checked", kwargs={"width": 6}, input_shape=(1, 8, 8))
    x = sample(32, seed=1)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    graph, spec = analyse_model(model, (x, y), (1, 8, 8), fake_quantize, "checked", layer_sensitivity="fisher")
    assert graph.groups == [] and spec.groups == ()
    reasons = set(graph.frozen_reasons.values())
    assert len(reasons) == 1 and reasons.pop().startswith("torch.fx cannot trace Checked's forward (TraceError: ")
    reference = trace_model(load_user_model(f"{package}.nets:make", kwargs={"width": 6})[0], (1, 8, 8))
    geometry = ("name", "kind", "out_channels", "in_channels", "groups", "kernel_area", "out_positions")
    assert [tuple(getattr(l, g) for g in geometry) for l in graph.layers] == [
        tuple(getattr(l, g) for g in geometry) for l in reference.layers
    ]
    assert all(layer.quant_damage[0] > layer.quant_damage[-1] >= 0 for layer in spec.layers)
    bits = {"stem": 3, "dw": 4, "pw": 2, "fc": 8}
    path = tmp_path / "checked.qcz"
    save_artifact(path, prune_model(model, graph, Plan({}, bits)), bits, arch)
    loaded, _ = load_artifact(path, factory=f"{package}.nets:checked")
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample()), quantize_model_weights(model, bits).eval()(sample()))


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------


def scripted(tmp_path: Path, package: str, kind: str = "script") -> tuple[Path, nn.Module]:
    model = load_user_model(f"{package}.nets:make", kwargs={"width": 6})[0]
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    compiled = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, sample(2))
    path = tmp_path / f"model.{kind}.pt"
    torch.jit.save(compiled, str(path))
    return path, model


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_model_is_analysed_for_bits_only(package, tmp_path, kind):
    path, original = scripted(tmp_path, package, kind)
    model, arch = load_user_model(str(path), input_shape=(1, 8, 8))
    assert arch == {"torchscript": True} and isinstance(model, torch.jit.ScriptModule)
    x = sample(32, seed=1)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    graph, spec = analyse_model(model, (x, y), (1, 8, 8), fake_quantize, "ts", b_max=4, bit_levels=2)
    assert spec.groups == () and graph.groups == []
    assert set(graph.frozen_reasons.values()) == {TORCHSCRIPT_REASON}
    reference = trace_model(original, (1, 8, 8))
    geometry = ("name", "kind", "out_channels", "in_channels", "groups", "kernel_area", "out_positions")
    assert [tuple(getattr(l, g) for g in geometry) for l in graph.layers] == [
        tuple(getattr(l, g) for g in geometry) for l in reference.layers
    ]
    assert spec.layer_index("dw") == 1 and spec.layers[1].depthwise
    _, reference_spec = analyse_model(original, (x, y), (1, 8, 8), fake_quantize, "nn", b_max=4, bit_levels=2)
    for ours, theirs in zip(spec.layers, reference_spec.layers):
        np.testing.assert_allclose(ours.quant_damage, theirs.quant_damage, atol=1e-6)
    _, hessian_spec = analyse_model(
        model,
        (x, y),
        (1, 8, 8),
        fake_quantize,
        "ts",
        b_max=4,
        bit_levels=2,
        layer_sensitivity="hessian",
        hessian_samples=2,
    )
    assert all(np.isfinite(layer.quant_damage).all() for layer in hessian_spec.layers)


def test_torchscript_artifact_is_small_and_loads_with_equal_outputs(package, tmp_path):
    path, original = scripted(tmp_path, package)
    model, arch = load_user_model(str(path))
    bits = {"stem": 2, "dw": 5, "pw": 3, "fc": 32}
    artifact = tmp_path / "ts.qcz"
    size = save_artifact(artifact, prune_model(model, trace_model(model, (1, 8, 8)), Plan({}, bits)), bits, arch)
    archive = script_archive(model)
    assert len(archive) < 8000 < path.stat().st_size
    weights = sum(p.numel() for p in original.parameters())
    assert size < len(archive) + 4 * weights + 2000
    with pytest.raises(ArtifactError) as exc:
        load_artifact(artifact)
    assert one_line(exc) == (
        f"{artifact} holds TorchScript code, which loading would "
        "run: pass trust_torchscript=True only for a file you trust (its checksum shows it is undamaged, "
        "not who wrote it)"
    )
    loaded, _ = load_artifact(artifact, trust_torchscript=True)
    assert isinstance(loaded, torch.jit.ScriptModule) and not loaded.training
    with torch.no_grad():
        expected = quantize_model_weights(original, bits).eval()(sample())
        torch.testing.assert_close(loaded(sample()), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ArtifactError, match="arch says torchscript, but the model is a Net"):
        save_artifact(tmp_path / "bad.qcz", original, bits, arch)


def test_bad_torchscript_files_are_one_line_model_errors(package, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ModelError) as exc:
        load_user_model(str(text))
    assert one_line(exc).startswith(f"{text} is not a TorchScript file that torch.jit.load accepts (")
    path, _ = scripted(tmp_path, package)
    with pytest.raises(ModelError, match="holds its own weights"):
        load_user_model(str(path), weights=tmp_path / "w.pt")
    empty = tmp_path / "empty.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.ReLU())), str(empty))
    with pytest.raises(ModelError) as exc:
        load_user_model(str(empty))
    assert one_line(exc) == f"model {empty} has no compressible layer (Conv2d or Linear)"

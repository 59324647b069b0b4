"""Tests of the models layer: the zoo, counts, training, the model cache and checkpoints."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import sys
import pytest
import torch
import torch.fx
from torch import nn

from qubocompress.data.datasets import Dataset, synthetic_dataset
from qubocompress.errors import ModelError
from qubocompress.models.stats import count_macs, count_params, describe
from qubocompress.models.train import (
    TrainConfig,
    channels_last_is_safe,
    default_cache_dir,
    default_config,
    evaluate,
    evaluate_loss,
    load_checkpoint,
    load_or_train,
    resolve_device,
    save_checkpoint,
    train,
    training_layout,
)
from qubocompress.models.zoo import MODELS, build_model

FAST = TrainConfig(epochs=2, batch_size=32, lr=0.05, hflip=False, seed=0)
TINY = {"width": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic_dataset(num_classes=4, n_train=256, n_val=64, n_test=64)


def tiny_kwargs(name: str) -> dict[str, int]:
    return {} if name == "lenet5" else dict(TINY)


# ---------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_build_run_and_trace(name: str) -> None:
    model = build_model(name)
    model.eval()
    inputs = torch.randn(3, 1, 28, 28)
    assert model(inputs).shape == (3, 10)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(inputs), model(inputs))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_other_classes_channels_and_sizes(name: str) -> None:
    model = build_model(name, num_classes=4, in_channels=3, input_size=32)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_vgg_layout() -> None:
    model = build_model("vgg")
    modules = dict(model.named_modules())
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert isinstance(modules["features.0"], nn.Conv2d) and isinstance(modules["features.1"], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 3
    gap = build_model("vgg", head="gap", width=8)
    assert isinstance(gap.classifier[-1], nn.Linear) and gap.classifier[-1].in_features == 32


def test_resnet20_layout() -> None:
    model = build_model("resnet20")
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2  # 19 conv3x3 + two option-B 1x1 shortcuts
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d) and model.layer2[0].shortcut[0].stride == (2, 2)
    assert isinstance(model.layer3[1].shortcut, nn.Identity)
    adds = [n for n in torch.fx.symbolic_trace(model).graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 9


def test_resnet56_layout() -> None:
    model = build_model("resnet56", width=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 55 + 2  # 1 + 3 stages x 9 blocks x 2 conv3x3, two option-B 1x1 shortcuts
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [9, 9, 9]
    assert [model.layer1[0].conv1.out_channels, model.layer3[8].conv2.out_channels] == [4, 16]
    adds = [n for n in torch.fx.symbolic_trace(model).graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 27
    # the CIFAR layout at width 16 has the paper's 0.85 M parameters
    assert count_params(build_model("resnet56", in_channels=3, input_size=32)) == 855770


def test_vgg16_layout() -> None:
    model = build_model("vgg16")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    assert model.classifier[-1].in_features == 128
    # width 64 is CIFAR VGG-16 with BatchNorm (14,728,266 parameters with conv biases; 4,224 of them)
    original = build_model("vgg16", in_channels=3, input_size=32, width=64)
    assert [c.out_channels for c in original.features if isinstance(c, nn.Conv2d)][-1] == 512
    assert count_params(original) == 14_728_266 - 4_224
    with pytest.raises(ModelError, match="vgg16 needs inputs of at least 16x16 pixels, got 12"):
        build_model("vgg16", input_size=12)
    with pytest.raises(ModelError, match="resnet56 width must be at least 1, got 0"):
        build_model("resnet56", width=0)


def test_mobilenet_has_depthwise_blocks() -> None:
    model = build_model("mobilenet")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 6
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_unknown_model_lists_names() -> None:
    expected = "unknown model 'alexnet'; built-in models are: lenet5, mobilenet, resnet20, resnet56, vgg, vgg16"
    with pytest.raises(ModelError, match=expected):
        build_model("alexnet")


def test_bad_model_arguments() -> None:
    with pytest.raises(ModelError, match="bad arguments for model 'lenet5'"):
        build_model("lenet5", width=3)
    with pytest.raises(ModelError, match="lenet5 needs inputs of at least 12x12"):
        build_model("lenet5", input_size=8)
    with pytest.raises(ModelError, match="unknown vgg head 'big'"):
        build_model("vgg", head="big")


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("vgg16", {"width": True}, "bad arguments for model 'vgg16': width must be a whole number, got True"),
        ("resnet56", {"input_size": 7.5}, "bad arguments for model 'resnet56': input_size must be a whole number"),
        ("lenet5", {"num_classes": 10.0}, "bad arguments for model 'lenet5': num_classes must be a whole number"),
        ("vgg", {"hidden": 0}, "vgg width and hidden must be at least 1, got 16 and 0"),
        ("mobilenet", {"width": 0}, "mobilenet width must be at least 1, got 0"),
    ],
)
def test_model_arguments_that_count_must_be_whole_and_positive(name: str, kwargs: dict, message: str) -> None:
    # a checkpoint's arch kwargs come from a file: a bool, float or zero there built a model
    with pytest.raises(ModelError, match=re.escape(message)):
        build_model(name, **kwargs)


# ---------------------------------------------------------------- counts


def test_counts_on_known_layers() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 + 8 = 224 params; 10*10*8 outputs * 27 = 21600 MACs
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # 72 params; 5*5*8 * 9 = 1800
        nn.Flatten(),
        nn.Linear(200, 5),  # 1005 params; 1000 MACs
    )
    assert count_params(model) == 224 + 72 + 1005
    assert count_macs(model, (3, 10, 10)) == 21600 + 1800 + 1000
    assert describe(model, (3, 10, 10), "toy") == "toy: 0.00 M params, 0.0 M MACs"


def test_counts_of_builtin_models() -> None:
    lenet = build_model("lenet5")
    assert count_params(lenet) == 61706
    # conv1 28*28*6*25, conv2 10*10*16*150, fc 400*120 + 120*84 + 84*10
    assert count_macs(lenet, (1, 28, 28)) == 117600 + 240000 + 48000 + 10080 + 840
    vgg = build_model("vgg")
    vgg.train()
    count_macs(vgg, (1, 28, 28))
    assert vgg.training  # mode restored


# ---------------------------------------------------------------- training


def test_training_beats_chance_quickly(data: Dataset) -> None:
    torch.manual_seed(0)
    model = build_model("vgg", num_classes=4, **TINY)
    before = evaluate(model, data.test)
    messages: list[str] = []
    history = train(model, data, FAST, progress=messages.append)
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert set(history[0]) == {"epoch", "seconds", "train_loss", "val_acc"}
    assert len(messages) == 2 and messages[0].startswith("epoch 1/2: train loss")
    after = evaluate(model, data.test)
    assert after >= 0.6 > before - 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert not model.training


def test_training_is_deterministic(data: Dataset) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        model = build_model("resnet20", num_classes=4, **TINY)
        train(model, data, replace(FAST, epochs=1, seed=seed, hflip=True))
        return model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_channels_last_only_where_torch_handles_it() -> None:
    assert channels_last_is_safe(build_model("vgg"))
    assert channels_last_is_safe(build_model("mobilenet"))
    assert channels_last_is_safe(build_model("resnet20"))  # shortcuts see 16 and 32 channels
    assert not channels_last_is_safe(build_model("resnet20", width=4))  # a 4-channel 1x1 stride-2 conv


class ViewingNet(nn.Module):
    """A conv whose output is flattened with ``.view``: no channels-last layout for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x))
        return self.fc(features.view(features.size(0), -1))


def test_training_layout_probes_the_models_own_code(data: Dataset) -> None:
    inputs = data.train.x
    vgg = build_model("vgg", num_classes=4, **TINY).train()
    assert training_layout(vgg, inputs) == torch.channels_last
    assert vgg.training and all(p.is_contiguous() for p in vgg.parameters())  # left as it was
    assert training_layout(vgg, inputs.flatten(1)) == torch.contiguous_format  # not image batches
    assert training_layout(build_model("resnet20", width=4), inputs) == torch.contiguous_format  # torch's crash
    viewing = ViewingNet()
    assert training_layout(viewing, inputs) == torch.contiguous_format
    assert viewing.training and all(p.is_contiguous() for p in viewing.parameters())
    history = train(viewing, data, replace(FAST, epochs=1))  # trains in the default layout
    assert len(history) == 1


def test_training_leaves_model_contiguous(data: Dataset) -> None:
    model = build_model("vgg", num_classes=4, **TINY)
    train(model, data, replace(FAST, epochs=1))
    assert all(p.is_contiguous() for p in model.parameters())


def test_training_leaves_global_rng_alone(data: Dataset) -> None:
    model = build_model("lenet5", num_classes=4)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train(model, data, replace(FAST, epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_evaluate_restores_mode_and_loss(data: Dataset) -> None:
    model = build_model("mobilenet", num_classes=4, **TINY)
    model.train()
    accuracy = evaluate(model, data.test)
    loss = evaluate_loss(model, data.test)
    assert model.training
    assert 0.0 <= accuracy <= 1.0
    assert 0.0 < loss < 20.0


def test_default_config_per_dataset(data: Dataset) -> None:
    config = default_config(data)
    assert config.hflip is False
    assert config.epochs > TrainConfig().epochs  # 256 samples: more epochs for enough steps
    assert default_config(replace(data, name="fashion-mnist")).hflip is True


# ---------------------------------------------------------------- cache


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUBOCOMPRESS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("QUBOCOMPRESS_CACHE")
    assert "qubocompress" in str(default_cache_dir())


def test_load_or_train_caches(data: Dataset, tmp_path: Path) -> None:
    config = replace(FAST, epochs=1)
    model, info = load_or_train("vgg", data, seed=3, config=config, cache_dir=tmp_path, model_kwargs=TINY)
    assert info["cached"] is False
    path = info["cache_path"]
    assert path.parent == tmp_path / "models" and path.name.startswith("vgg-synthetic-s3-")
    assert info["arch"] == {
        "name": "vgg",
        "kwargs": {"num_classes": 4, "in_channels": 1, "input_size": 28, "width": 4},
    }
    assert info["params"] == count_params(model) and info["macs"] == count_macs(model, (1, 28, 28))
    assert info["test_acc"] == evaluate(model, data.test)

    again, info2 = load_or_train("vgg", data, seed=3, config=config, cache_dir=tmp_path, model_kwargs=TINY)
    assert info2["cached"] is True and info2["cache_path"] == path
    assert info2["test_acc"] == info["test_acc"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert evaluate(again, data.test) == info["test_acc"]

    _, other_seed = load_or_train("vgg", data, seed=4, config=config, cache_dir=tmp_path, model_kwargs=TINY)
    assert other_seed["cached"] is False and other_seed["cache_path"] != path


@pytest.mark.parametrize("name", ["resnet56", "vgg16"])
def test_bigger_models_train_on_rgb_images_and_are_cached(name: str, tmp_path: Path) -> None:
    rgb = synthetic_dataset(num_classes=3, n_train=64, n_val=16, n_test=16, shape=(3, 32, 32))
    config = replace(FAST, epochs=1)
    kwargs = {"width": 2}
    model, info = load_or_train(name, rgb, config=config, cache_dir=tmp_path, model_kwargs=kwargs)
    assert info["cached"] is False and info["cache_path"].name.startswith(f"{name}-synthetic-s0-")
    assert info["arch"]["kwargs"] == {"num_classes": 3, "in_channels": 3, "input_size": 32, "width": 2}
    assert model(rgb.test.x[:2]).shape == (2, 3)
    again, cached = load_or_train(name, rgb, config=config, cache_dir=tmp_path, model_kwargs=kwargs)
    assert cached["cached"] is True and evaluate(again, rgb.test) == info["test_acc"]


def test_device_names_and_the_cpu_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", lines.append) == torch.device("cpu")
    assert resolve_device("auto", lines.append) == torch.device("cpu") and lines == []
    assert resolve_device("cuda:1", lines.append) == torch.device("cpu")
    assert lines == [
        "warning: --device cuda:1: torch sees no CUDA GPU (torch.cuda.is_available() is false); using the CPU"
    ]
    for bad in ("gpu", "cuda:", "CUDA", "cuda:x", ""):
        with pytest.raises(ModelError, match=r"^--device must be cpu, cuda, cuda:N .* or auto .*; got "):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ModelError, match=r"^--device cuda:2: torch sees 1 CUDA GPU\(s\), cuda:0 to cuda:0$"):
        resolve_device("cuda:2")


def test_corrupt_cache_is_retrained(data: Dataset, tmp_path: Path) -> None:
    config = replace(FAST, epochs=1)
    _, info = load_or_train("lenet5", data, config=config, cache_dir=tmp_path)
    path = info["cache_path"]
    path.write_bytes(path.read_bytes()[:100])
    messages: list[str] = []
    _, retrained = load_or_train("lenet5", data, config=config, cache_dir=tmp_path, progress=messages.append)
    assert retrained["cached"] is False
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and warnings[0].endswith("retraining")
    _, third = load_or_train("lenet5", data, config=config, cache_dir=tmp_path)
    assert third["cached"] is True


# ---------------------------------------------------------------- checkpoints


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("vgg", num_classes=4, **TINY)
    path = tmp_path / "model.pt"
    arch = {"name": "vgg", "kwargs": {"num_classes": 4, "in_channels": 1, "input_size": 28, **TINY}}
    save_checkpoint(path, model, arch, {"test_acc": 0.5})
    return path


def test_checkpoint_round_trip(checkpoint: Path, data: Dataset) -> None:
    model, info = load_checkpoint(checkpoint, name="vgg", dataset=data)
    assert info["test_acc"] == 0.5 and info["arch"]["name"] == "vgg" and info["path"] == checkpoint
    torch.manual_seed(0)
    reference = build_model("vgg", num_classes=4, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert not model.training


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint {path} is unreadable: not a torch.save file, or truncated or damaged"


def test_truncated_checkpoint(checkpoint: Path) -> None:
    checkpoint.write_bytes(checkpoint.read_bytes()[:-200])
    with pytest.raises(ModelError, match="is unreadable: not a torch.save file, or truncated or damaged"):
        load_checkpoint(checkpoint)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_non_checkpoint_pickle(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="not a qubocompress checkpoint .no weights found"):
        load_checkpoint(path)


def test_checkpoint_architecture_mismatch(tmp_path: Path) -> None:
    model = build_model("vgg", num_classes=4, **TINY)
    path = tmp_path / "wrong.pt"
    save_checkpoint(path, model, {"name": "vgg", "kwargs": {"num_classes": 4, "width": 8}}, {})
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "does not match the vgg architecture (wrong shape: features.0.weight (4, 1, 3, 3) vs (8, 1, 3, 3)" in message
    assert "\n" not in message


def test_checkpoint_name_and_dataset_mismatch(checkpoint: Path) -> None:
    with pytest.raises(ModelError, match="holds a vgg model, not resnet20"):
        load_checkpoint(checkpoint, name="resnet20")
    ten_classes = synthetic_dataset(num_classes=10, n_train=20, n_val=10, n_test=10)
    with pytest.raises(ModelError, match="does not fit data set synthetic .model vs data: num_classes 4 vs 10"):
        load_checkpoint(checkpoint, dataset=ten_classes)


def test_bare_state_dict(tmp_path: Path, data: Dataset) -> None:
    path = tmp_path / "bare.pt"
    torch.save(build_model("lenet5", num_classes=4).state_dict(), path)
    with pytest.raises(ModelError, match="is a bare state_dict; give the model name and data set"):
        load_checkpoint(path)
    model, info = load_checkpoint(path, name="lenet5", dataset=data)
    assert isinstance(model, nn.Module) and info["arch"]["kwargs"]["num_classes"] == 4
    with pytest.raises(ModelError, match="does not match the vgg architecture .missing: features.1.weight"):
        load_checkpoint(path, name="vgg", dataset=data)


def test_bad_training_settings() -> None:
    expected = "bad training settings: epochs must be at least 1, got 0; lr must be positive"
    with pytest.raises(ModelError, match=expected):
        TrainConfig(epochs=0, lr=-1.0)


def test_unwritable_cache(data: Dataset, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(
        ModelError, match="model cache is not writable: .*file is a file, not a folder; set QUBOCOMPRESS_CACHE"
    ):
        load_or_train("lenet5", data, config=replace(FAST, epochs=1), cache_dir=blocker)


def test_read_only_cache_is_refused_before_training(data: Dataset, read_only_dir: Path, monkeypatch) -> None:
    train_module = sys.modules["qubocompress.models.train"]
    monkeypatch.setattr(train_module, "train", lambda *args, **kwargs: pytest.fail("trained before checking the cache"))
    with pytest.raises(ModelError, match="model cache is not writable: .*read-only; set QUBOCOMPRESS_CACHE"):
        load_or_train("lenet5", data, config=replace(FAST, epochs=1), cache_dir=read_only_dir)


def test_checkpoint_with_bad_layout(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"format": "qubocompress-checkpoint", "arch": {"name": "vgg"}, "state_dict": {}}, path)
    with pytest.raises(ModelError, match="odd.pt is corrupt or not a qubocompress checkpoint .bad layout"):
        load_checkpoint(path)
    torch.save({"format": "qubocompress-checkpoint", "arch": {"name": "vgg", "kwargs": {}}, "state_dict": [1]}, path)
    with pytest.raises(ModelError, match="odd.pt is corrupt or not a qubocompress checkpoint .bad weights"):
        load_checkpoint(path)

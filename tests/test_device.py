"""--device: training, analysis, fine-tuning and sb on a GPU where asked for and present; asked for
without one (as on a box with no CUDA GPU), one warning line and everything on the CPU. CIFAR-style
data: a folder of 32x32 RGB images through train, compress and sweep, with the bigger built-ins."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qubocompress as qc
from qubocompress.cli import main
from qubocompress.models.zoo import build_model

train_module = importlib.import_module("qubocompress.models.train")  # the package exports its train function
WARNING = "warning: --device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is false); using the CPU"


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees no CUDA GPU, as this box has none (and the same on a box with one); a small
    data set trains 10 epochs, not the 200 its recipe would give it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "MAX_AUTO_EPOCHS", 10)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/*.png and test/<class>/*.png: 3 learnable classes of 32x32 RGB images (a
    colour and a bright quadrant per class, plus noise)."""
    root = tmp_path_factory.mktemp("data") / "cifar"
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)
    for split, count in (("train", 30), ("test", 8)):
        for label, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.broadcast_to(colours[label], (32, 32, 3)) + rng.normal(0, 40, (32, 32, 3))
                row, col = divmod(label, 2)
                pixels[16 * row : 16 * row + 16, 16 * col : 16 * col + 16] += 50
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning: --device")]


def test_train_asked_for_cuda_warns_once_and_trains_on_the_cpu(
    cifar_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--model", "lenet5", "--data", str(cifar_folder), "--device", "cuda"]) == 0
    captured = capsys.readouterr()
    assert warnings_in(captured.err) == [WARNING]
    assert "training lenet5 on cifar" in captured.err and "on cpu)" in captured.err
    assert captured.out.startswith("lenet5 on cifar:")


def test_compress_asked_for_cuda_warns_once_and_records_the_cpu(
    cifar_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["compress", "--model", "lenet5", "--data", str(cifar_folder), "--out", str(out), "--device", "cuda"]
    options = [
        "--formulation",
        "budget",
        "--finetune-epochs",
        "1",
        "--no-baseline",
        "--no-report",
        "--target-ratio",
        "8",
    ]
    assert main([*argv, *options]) == 0
    assert warnings_in(capsys.readouterr().err) == [WARNING]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["device"] == "cpu"
    assert metrics["data"]["name"] == "cifar" and metrics["compressed"]["ratio"] >= 8


@pytest.mark.parametrize("bad", ["gpu", "cuda:x"])
def test_a_bad_device_is_a_one_line_error_before_any_work(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["compress", "--out", str(tmp_path / "run")], ["train"]):
        assert main([*command, "--data", str(tmp_path / "absent"), "--device", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qubocompress: error: --device must be cpu, cuda, cuda:N") and err.count("\n") == 1
        assert bad in err


@pytest.mark.slow
def test_api_compress_of_vgg16_with_sb_on_rgb_images_falls_back_once(cifar_folder: Path) -> None:
    lines: list[str] = []
    model = build_model("vgg16", num_classes=3, in_channels=3, input_size=32, width=2)
    result = qc.compress(
        model,
        str(cifar_folder),
        device="cuda",
        formulation="budget",
        solver="sb",
        solver_options={"agents": 8, "max_steps": 300},  # the device is added to them
        target_ratio=8,
        finetune_epochs=0,
        baseline=False,
        log=lines.append,
    )
    figures = result.metrics.figures
    assert warnings_in("\n".join(lines)) == [WARNING]
    assert figures["config"]["device"] == "cpu" and figures["qubo"]["solver_options"]["device"] == "cpu"
    assert next(result.model.parameters()).device.type == "cpu"
    assert figures["model"]["name"] == "qubocompress.models.zoo:VGG16" and result.metrics.ratio >= 8


def test_api_sweep_resolves_the_device_once_for_all_its_cases(cifar_folder: Path) -> None:
    lines: list[str] = []
    model = build_model("vgg16", num_classes=3, in_channels=3, input_size=32, width=2)
    table = qc.sweep(
        model, str(cifar_folder), target_ratios=[4, 8], routes=["uniform"], device="cuda", log=lines.append
    )
    assert [row.status for row in table.rows] == ["ok", "ok"]
    assert warnings_in("\n".join(lines)) == [WARNING]


@pytest.mark.slow
def test_resnet56_on_rgb_images_through_compress(cifar_folder: Path) -> None:
    model = build_model("resnet56", num_classes=3, in_channels=3, input_size=32, width=2)
    result = qc.compress(
        model, str(cifar_folder), formulation="budget", target_ratio=8, finetune_epochs=1, baseline=False
    )
    assert result.metrics.ratio >= 8 and result.metrics.figures["data"]["name"] == "cifar"
    assert len(result.plan.bits) == 57 + 1  # every conv and the fc

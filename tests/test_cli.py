"""The command line as scripts use it: --version, --quiet, --json, help that answers at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_pipeline import compress_args, data_dir, run  # noqa: F401


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("--version")
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "qubocompress 0.1.0"


def test_quiet_json_compress_prints_only_the_metrics(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(*compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline", "--quiet", "--json")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    metrics = json.loads(captured.out)
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["compressed"]["ratio"] >= 16


def test_progress_lines_go_to_stderr_without_quiet(data_dir, tmp_path, capsys):
    assert run(*compress_args(data_dir, tmp_path / "out", "--finetune-epochs", "0", "--no-baseline")) == 0
    captured = capsys.readouterr()
    assert "analysing the model" in captured.err and "top-1 %" in captured.out


@pytest.mark.parametrize(
    "argv, exit_code",
    [
        (["--help"], 0),
        (["compress", "--help"], 0),
        (["bench", "--help"], 0),
        (["compress", "--seed", "x"], 2),
        (["bench", "--seeds", "x"], 2),
    ],
)
def test_help_and_argument_errors_load_neither_torch_nor_scipy_nor_dimod(argv, exit_code):
    code = (
        "import sys\n"
        "from qubocompress.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, sorted(m for m in ('torch', 'scipy', 'dimod') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.splitlines()[-1] == f"{exit_code} []"


def test_compress_export_onnx_inspect_and_export(data_dir, tmp_path, capsys):
    import numpy as np
    import onnxruntime
    import torch

    from qubocompress.apply.model_file import load_model_file

    out = tmp_path / "out"
    args = compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline", "--export", "onnx", "--json")
    assert run(*args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["compressed"]["onnx_bytes"] * 3 < metrics["model"]["fp32_onnx_bytes"]
    model, _ = load_model_file(out / "model.safetensors")
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-4)

    assert run("inspect", out) == 0
    table = capsys.readouterr().out
    assert "shape before" in table and "model.safetensors:" in table
    assert run("export", out, "--onnx", tmp_path / "again.onnx") == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'again.onnx'}: ")
    assert (tmp_path / "again.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_inspect_of_a_damaged_file_is_one_line(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert run("inspect", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qubocompress: error: ") and "model.safetensors is truncated" in err[0]


def test_export_of_a_model_file_without_an_input_shape_is_one_line(tmp_path, capsys):
    from qubocompress.apply.model_file import save_model_file
    from qubocompress.models.zoo import build_model

    kwargs = {"num_classes": 3, "in_channels": 1, "input_size": 8, "width": 2}
    path = tmp_path / "model.safetensors"
    save_model_file(path, build_model("vgg", **kwargs), {}, {"name": "vgg", "kwargs": kwargs})
    assert run("export", path, "--onnx", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"qubocompress: error: {path} records no input shape (written before qubocompress recorded it); compress again"
    ]
    assert not (tmp_path / "m.onnx").exists()

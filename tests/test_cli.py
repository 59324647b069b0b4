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


def test_json_stdout_holds_only_the_metrics_when_a_compiled_library_prints(data_dir, tmp_path, capfd, monkeypatch):
    import os

    from qubocompress import pipeline

    real = pipeline.compress

    def noisy(*args, **kwargs):  # as scipy's HiGHS prints a debug line on some MILPs, on file descriptor 1
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compress", noisy)
    out = tmp_path / "out"
    assert run(*compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline", "--quiet", "--json")) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out) == json.loads((out / "metrics.json").read_text())
    assert "tmpSolver.run()" in captured.err


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
        (["bench", "--device", "gpu"], 2),
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


def test_inspect_with_a_factory_for_a_built_in_model_is_one_line(tmp_path, capsys):
    from qubocompress.apply.model_file import save_model_file
    from qubocompress.models.zoo import build_model

    kwargs = {"num_classes": 3, "in_channels": 1, "input_size": 8, "width": 2}
    path = tmp_path / "model.safetensors"
    save_model_file(path, build_model("vgg", **kwargs), {}, {"name": "vgg", "kwargs": kwargs})
    assert run("inspect", path) == 0
    capsys.readouterr()
    assert run("inspect", path, "--model", "test_apply:SeqNet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"qubocompress: error: {path}: cannot rebuild its vgg model: it holds the built-in model 'vgg', which is "
        "rebuilt from qubocompress's own table: pass no factory (no --model on the command line)"
    ]


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


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("qubocompress: error: ") and err.count("\n") == 1, err
    return err.strip().removeprefix("qubocompress: error: ")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-prune", "nan"], "--max-prune must be a fraction from 0 up to (not including) 1, got nan"),
        (["--max-prune", "-0.1"], "--max-prune must be a fraction from 0 up to (not including) 1, got -0.1"),
        (["--max-prune", "1"], "--max-prune must be a fraction from 0 up to (not including) 1, got 1.0"),
        (["--beta", "nan"], "--beta must be a finite number >= 0, got nan"),
        (["--beta", "-2"], "--beta must be a finite number >= 0, got -2.0"),
        (["--model", "nosuch"], "unknown model 'nosuch': use a built-in name"),
        (["--weights", "{tmp}/absent.pt"], "weights file {tmp}/absent.pt does not exist"),
        (["--checkpoint", "{tmp}/absent.pt"], "checkpoint {tmp}/absent.pt does not exist"),
        (["--checkpoint", "{tmp}"], "checkpoint {tmp} is a folder"),
        (["--solver-option", "foo=1"], "simulated annealing has no option foo; valid options: "),
        (["--solver-option", "num_reads=-5"], "simulated annealing: num_reads must be a positive integer, got -5"),
        (["--solver", "exact", "--solver-option", "time_limit=0"], "exact solver: time_limit must be a positive"),
        (["--solver", "exact", "--num-reads", "10"], "--num-reads: solver 'exact' takes no number of reads"),
        (["--search", "ga-acc", "--num-reads", "10"], "--num-reads and --solver-option set the QUBO's solver"),
        (["--search", "uniform", "--solver-option", "x=1"], "--num-reads and --solver-option set the QUBO's solver"),
    ],
)
def test_bad_compress_values_are_one_line_errors_before_the_data_loads(flags, message, tmp_path, capsys):
    # --data names no folder: had the value passed the checks, the error would be about the data
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    assert run("compress", "--data", tmp_path / "absent", "--out", tmp_path / "out", *flags) == 2
    assert one_error_line(capsys).startswith(message.format(tmp=tmp_path))


@pytest.mark.parametrize("command", ["sweep", "ablate"])
def test_sweep_and_ablate_check_max_prune_and_the_model_before_the_data_loads(command, tmp_path, capsys):
    base = [command, "--data", tmp_path / "absent", "--out", tmp_path / "out"]
    assert run(*base, "--max-prune", "2") == 2
    assert one_error_line(capsys).startswith("--max-prune must be a fraction")
    assert run(*base, "--model", "nosuch") == 2
    assert one_error_line(capsys).startswith("unknown model 'nosuch'")


def test_a_bad_sweep_seed_names_the_seeds_flag(tmp_path, capsys):
    assert run("sweep", "--data", tmp_path / "absent", "--out", tmp_path / "out", "--seeds", "0,-1") == 2
    assert one_error_line(capsys) == "--seeds must be a whole number from 0 to 2,147,483,647, got -1"


def test_train_refuses_an_unknown_model_before_the_data_loads(tmp_path, capsys):
    assert run("train", "--data", tmp_path / "absent", "--model", "nosuch") == 2
    assert one_error_line(capsys) == (
        "unknown model 'nosuch'; built-in models are: lenet5, mobilenet, resnet20, resnet56, vgg, vgg16"
    )


@pytest.mark.parametrize("device", ["gpu", "auto", "cuda:x", "CUDA"])
def test_bench_refuses_a_device_the_sb_solver_cannot_take_before_any_instance(device, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("bench", "--instances", "n100", "--out", tmp_path / "bench", "--device", device)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --device: expected cpu, cuda or cuda:N (the sb solver's device), got {device!r}" in err
    assert not (tmp_path / "bench").exists()

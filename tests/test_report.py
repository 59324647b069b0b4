"""report.html of run, sweep and bench folders: self-contained, every figure there and non-blank,
text from files escaped, nothing written for a folder with nothing to report, and the same in a browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qubocompress.errors import ArtifactError
from qubocompress.report import write_report
from qubocompress.report.browser import check_in_browser, find_chromium, screenshot
from qubocompress.report.figures import pareto_front
from qubocompress.report.sources import command_of_config, shown_folder

from test_pipeline import assert_one_line_error, data_dir, run  # noqa: F401  (data_dir is a fixture)
from test_scripts import load_script

IMAGE = re.compile(r"<img\b[^>]*>")
DATA_URI = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
DATA_URI_NAMES = re.compile(r'<img alt="([^"]+)" src="data:')
QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def sweep_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases of LeNet-5: 4x and 8x, qubo (sa, exact) and uniform, seeds 0 and 1 (the paper QUBO)."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    args = ["--model", "lenet5", "--data", data_dir, "--out", out, "--target-ratio", "4,8", "--routes", "qubo,uniform"]
    args += ["--solvers", "sa,exact", "--seeds", "0,1", "--finetune-epochs", "1", "--num-reads", "30"]
    assert run("sweep", *args, "--no-report", "--quiet") == 0
    return out


@pytest.fixture(scope="module")
def run_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compress run of the budget QUBO (feasible shares recorded) with its uniform baseline."""
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["--model", "lenet5", "--data", data_dir, "--out", out, "--target-ratio", "8", "--formulation", "budget"]
    assert run("compress", *args, "--finetune-epochs", "1", "--no-report", "--quiet") == 0
    return out


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "bench"
    args = ["--instances", "n40,n60", "--solvers", "sa,exact", "--seeds", "2", "--num-reads", "10", "--out", out]
    assert run("bench", *args) == 0
    return out


def assert_self_contained_and_drawn(folder: Path) -> str:
    """The report's every <img> is an embedded PNG, non-blank, equal to the PNG beside it; nothing
    outside the file is referenced. Returns the page."""
    page = (folder / "report.html").read_text(encoding="utf-8")
    tags = IMAGE.findall(page)
    images = DATA_URI.findall(page)
    assert tags and len(images) == len(tags), "an <img> is not an embedded PNG"
    for name, data in images:
        png = base64.b64decode(data, validate=True)
        assert (folder / name).read_bytes() == png, f"{name} differs from the file beside the report"
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        assert pixels.std() > 0, f"{name} is blank"
    for outside in ("http://", "https://", "<link", "<script", "url(", "@import"):
        assert outside not in page, outside
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    return page


def test_a_sweep_report_shows_every_route_the_chosen_plan_the_search_and_the_commands(sweep_folder: Path) -> None:
    lines: list[str] = []
    path = write_report(sweep_folder, log=lines.append)
    assert path == sweep_folder / "report.html" and len(lines) == 2 and str(path) in lines[-1]
    page = assert_self_contained_and_drawn(sweep_folder)
    names = set(DATA_URI_NAMES.findall(page))
    assert names == {"report-accuracy-vs-size.png", "report-plan.png", "report-energies.png", "report-time.png"}
    assert re.search(r"<title>lenet5 on idx\w*: compression sweep</title>", page)
    assert "<li>4x: qubo (" in page and "<li>8x: qubo (" in page and "against uniform" in page  # the headline
    assert re.search(r"The plan of 8x-qubo-\w+-seed\d: the best top-1 of the QUBO cases at 8x", page)
    assert "beside 8x-uniform-seed" in page and "Pareto front" in page
    for route in ("qubo (sa)", "qubo (exact)", "uniform"):
        assert f"<td>{route}</td>" in page
    assert "<th>polish</th>" in page and "<th>fine-tune</th>" in page and "<td>all cases</td>" in page
    assert "per-component enumeration" in page and "at E* polished" in page
    assert page.count('<tr class="failed">') == 0 and page.count("<td>yes</td>") >= 1  # Pareto cases
    command = page.split("<pre>")[1].split("</pre>")[0]
    assert command.startswith("qubocompress sweep --model lenet5") and f"qubocompress report {sweep_folder}" in command


def test_a_run_report_shows_the_run_its_uniform_baseline_and_its_command(run_folder: Path) -> None:
    write_report(run_folder, **QUIET)
    page = assert_self_contained_and_drawn(run_folder)
    assert len(DATA_URI.findall(page)) == 4
    metrics = json.loads((run_folder / "metrics.json").read_text())
    base = metrics["baseline_uniform"]
    label = f"uniform {base['bit_width']} b + {100 * base['prune_ratio']:.0f}% L1"
    assert f"<td>{label}</td>" in page and "grey square is the run" in page
    assert "feasible polished" in page and "certified" in page
    command = page.split("<pre>")[1].split("</pre>")[0].splitlines()
    assert command[0].startswith("qubocompress compress --model lenet5") and "--formulation budget" in command[0]
    assert command[1] == f"qubocompress report {run_folder}"


def test_a_bench_report_has_the_benchmarks_figures_and_its_table(bench_folder: Path) -> None:
    write_report(bench_folder, **QUIET)
    page = assert_self_contained_and_drawn(bench_folder)
    names = set(DATA_URI_NAMES.findall(page))
    assert {"report-tts99-vs-variables.png", "report-success-probability.png"} <= names
    assert "report-energy-synthetic-n40.png" in names and "<td>synthetic-n60</td>" in page and "<th>tts99</th>" in page


def test_text_from_a_file_is_escaped_and_failed_cases_show_their_reason(sweep_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_folder, copy, ignore=shutil.ignore_patterns("report*", ".*.lock"))
    with sqlite3.connect(copy / "sweep.sqlite") as db:
        db.execute(
            "INSERT INTO cases VALUES ('99x-ga-acc-seed0', '99x', 'ga-acc', NULL, 0, 'failed', "
            "'<script>alert(1)</script> & no plan', 0.5, NULL, 0.0)"
        )
    page = write_report(copy, **QUIET).read_text(encoding="utf-8")
    assert "<script" not in page
    assert "failed: &lt;script&gt;alert(1)&lt;/script&gt; &amp; no plan" in page
    assert page.count('<tr class="failed">') == 1 and "1 failed" in page


def assert_nothing_written(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("report*")]


def test_a_folder_with_nothing_to_report_is_one_line_and_nothing_is_written(
    tmp_path: Path, sweep_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="holds no run, sweep or bench results") as caught:
        write_report(empty, **QUIET)
    assert "\n" not in str(caught.value) and str(empty) in str(caught.value)
    assert run("report", empty) == 2
    assert_one_line_error(
        capsys, "holds no run, sweep or bench results (no metrics.json, sweep.sqlite or results.sqlite)"
    )
    assert_nothing_written(empty)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"cannot read .*metrics\.json") as caught:
        write_report(broken, **QUIET)
    assert "\n" not in str(caught.value)
    (broken / "metrics.json").write_text(json.dumps({"model": {}, "data": {}, "compressed": {}}))
    with pytest.raises(ArtifactError, match="lack the field"):
        write_report(broken, **QUIET)
    assert_nothing_written(broken)

    failed_only = tmp_path / "failed"
    shutil.copytree(sweep_folder, failed_only, ignore=shutil.ignore_patterns("report*", ".*.lock"))
    with sqlite3.connect(failed_only / "sweep.sqlite") as db:
        db.execute("UPDATE cases SET status = 'failed', reason = 'x', metrics_json = NULL")
    with pytest.raises(ArtifactError, match="has no finished case") as caught:
        write_report(failed_only, **QUIET)
    assert "\n" not in str(caught.value)
    assert_nothing_written(failed_only)


def test_a_run_folder_being_published_is_named_by_its_final_name() -> None:
    assert shown_folder(Path("runs/.x.partial-ab12")) == Path("runs/x")
    assert shown_folder(Path("runs/x")) == Path("runs/x")


def test_the_command_of_a_config_takes_paths_ignores_unknown_keys_and_gives_a_budget_alone() -> None:
    config = {"model": "lenet5", "weights": "net.pt", "out": "runs/a b", "target_ratio": 12.5, "budget": "32KiB"}
    command = command_of_config({**config, "formulation": "budget", "no_such_field": 1})
    assert (
        command
        == "qubocompress compress --model lenet5 --weights net.pt --budget 32KiB --formulation budget --out 'runs/a b'"
    )
    assert command_of_config(None) is None


def test_the_pareto_front_keeps_the_points_no_other_beats_on_size_and_accuracy() -> None:
    points = [(10, 90.0), (20, 95.0), (15, 89.0), (20, 94.0), (30, 95.0), (5, 80.0)]
    front = pareto_front(points, lambda p: p[0], lambda p: p[1], smaller_is_better=True)
    assert front == [(5, 80.0), (10, 90.0), (20, 95.0)]
    assert pareto_front(points, lambda p: p[0], lambda p: p[1], smaller_is_better=False) == [(30, 95.0)]


def browser() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("no chromium binary found (make test installs Debian's chromium where root and apt allow)")
    return found


def test_the_reports_load_in_headless_chromium_with_every_figure_drawn(
    sweep_folder: Path, run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = browser()
    for folder in (sweep_folder, run_folder):
        report = folder / "report.html"
        if not report.is_file():
            write_report(folder, **QUIET)
        check = check_in_browser(report, chromium)
        assert check.console == ()
        assert len(check.images) == len(IMAGE.findall(report.read_text(encoding="utf-8"))) >= 4
        for image in check.images:
            assert image.width > 100 and image.height > 100 and image.spread > 5, image
    shot = tmp_path / "shot.png"
    assert load_script("report_screenshot").main([str(sweep_folder / "report.html"), str(shot), "--height", "900"]) == 0
    assert "4 figures drawn" in capsys.readouterr().out
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (900, 1200) and pixels.std() > 5


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    chromium = browser()
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img alt="gone" src="gone.png"><script>notDefined();</script></body></html>')
    check = check_in_browser(page, chromium)
    assert [(image.alt, image.width) for image in check.images] == [("gone", 0)]
    assert len(check.console) == 1 and "notDefined" in check.console[0]
    assert screenshot(page, tmp_path / "broken.png", 400, 300, chromium).is_file()

"""``preflight``: the cheap solver check run before any work (issue 15 §5). No network, no samplers built."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubocompress.errors import SolverError
from qubocompress.solvers import registry
from qubocompress.solvers.hybrid import HybridSampler
from qubocompress.solvers.qpu import QpuSampler
from qubocompress.solvers.registry import SOLVER_NAMES, preflight

CLOUD = ("qpu", "hybrid")
NO_TOKEN = "has no D-Wave API token: run `dwave setup --auth` or set DWAVE_API_TOKEN"


@pytest.fixture
def dwave_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No DWAVE_* variable set, and DWAVE_CONFIG_FILE naming an empty config file in ``tmp_path``
    (so the user's own ``dwave.conf`` is never read). Returns the config file's path."""
    for name in [name for name in os.environ if name.startswith("DWAVE_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "dwave.conf"
    config.write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(config))
    return config


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Record (and refuse) every socket connection the test attempts; the test fails if there is one."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"preflight tried to connect to {attempts}"


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_solvers_without_a_token_fail_with_the_token_hint(name: str, dwave_env: Path, no_network: list) -> None:
    with pytest.raises(SolverError, match=f"^solver '{name}' {NO_TOKEN}$"):
        preflight(name)
    with pytest.raises(SolverError, match=NO_TOKEN):
        preflight(name, {"client_config": {"token": ""}})  # blank counts as unset, as for the client


@pytest.mark.parametrize("name", CLOUD)
def test_preflight_says_what_building_the_sampler_says(
    name: str, dwave_env: Path, no_network: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an explicit endpoint keeps the client from asking the Metadata API for one
    monkeypatch.setenv("DWAVE_API_ENDPOINT", "https://sapi.invalid/sapi/v2/")
    sampler = {"qpu": QpuSampler, "hybrid": HybridSampler}[name]
    with pytest.raises(SolverError) as built:
        sampler()  # fails in the client's constructor, before any request
    with pytest.raises(SolverError) as checked:
        preflight(name)
    assert str(checked.value) == str(built.value)


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_solvers_with_a_token_pass_without_contacting_the_api(
    name: str, dwave_env: Path, no_network: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dwave.system

    def not_built(**config: object) -> None:
        raise AssertionError("preflight built a D-Wave sampler")

    monkeypatch.setattr(dwave.system, "DWaveSampler", not_built)
    monkeypatch.setattr(dwave.system, "LeapHybridSampler", not_built)
    monkeypatch.setenv("DWAVE_API_TOKEN", "fake")
    preflight(name)
    preflight(name, {"num_reads": 10, "solver": {"topology__type": "pegasus"}})


@pytest.mark.parametrize("name", CLOUD)
def test_tokens_come_from_the_same_places_as_the_samplers(name: str, dwave_env: Path, no_network: list) -> None:
    preflight(name, {"client_config": {"token": "fake"}})
    dwave_env.write_text("[defaults]\ntoken = fake-from-file\n")  # what `dwave setup --auth` writes
    preflight(name)
    other = dwave_env.with_name("other.conf")
    other.write_text("[prod]\ntoken = fake\n[empty]\nendpoint = https://sapi.invalid/\n")
    preflight(name, {"client_config": {"config_file": str(other)}})
    with pytest.raises(SolverError, match=NO_TOKEN):
        preflight(name, {"client_config": {"config_file": str(other), "profile": "empty"}})
    with pytest.raises(
        SolverError, match=f"^solver '{name}': D-Wave config profile 'missing' not found; fix DWAVE_PROFILE"
    ):
        preflight(name, {"client_config": {"config_file": str(other), "profile": "missing"}})


@pytest.mark.parametrize("name", CLOUD)
def test_a_child_sampler_needs_no_token(name: str, dwave_env: Path) -> None:
    preflight(name, {"child_sampler": object()})


@pytest.mark.parametrize("name", CLOUD)
def test_bad_config_sources_are_one_line_errors(
    name: str, dwave_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(tmp_path / "absent.conf"))
    with pytest.raises(SolverError, match=f"^solver '{name}': cannot read the D-Wave config file"):
        preflight(name)
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(dwave_env))
    monkeypatch.setenv("DWAVE_PROFILE", "nowhere")
    with pytest.raises(SolverError, match="D-Wave config profile 'nowhere' not found"):
        preflight(name)
    monkeypatch.delenv("DWAVE_PROFILE")
    with pytest.raises(SolverError, match="client_config must be a mapping of dwave-cloud-client options, got str"):
        preflight(name, {"client_config": "token=fake"})


def test_unknown_names_are_refused_like_make_sampler(dwave_env: Path) -> None:
    with pytest.raises(
        SolverError, match="^unknown solver 'nope'; choose one of: sa, tabu, .*, exact, random, ga, rl$"
    ):
        preflight("nope")


@pytest.mark.parametrize(
    "name", [name for name in SOLVER_NAMES if name not in (*CLOUD, "hybrid-cqm", "qpu-decomposed")]
)
def test_offline_solvers_pass_when_their_extras_are_installed(name: str, dwave_env: Path, no_network: list) -> None:
    missing = [module for module, _, _ in registry.SOLVERS[name].requires if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    preflight(name)
    preflight(name, {"num_reads": 3})


@pytest.mark.parametrize(
    ("name", "module", "message"),
    [
        ("sqa", "openjij", "solver 'sqa' needs openjij: pip install 'qubocompress[sqa]'"),
        ("sb", "simulated_bifurcation", "solver 'sb' needs simulated-bifurcation: pip install 'qubocompress[sb]'"),
        ("ga", "pymoo", "solver 'ga' needs pymoo: pip install 'qubocompress[ga]'"),
        ("rl", "stable_baselines3", "solver 'rl' needs stable-baselines3: pip install 'qubocompress[rl]'"),
        ("qpu", "dwave.system", "solver 'qpu' needs dwave-system: pip install 'qubocompress[qpu]'"),
        ("qpu", "minorminer", "solver 'qpu' needs dwave-system: pip install 'qubocompress[qpu]'"),
        ("hybrid", "dwave.system", "solver 'hybrid' needs dwave-system: pip install 'qubocompress[qpu]'"),
        ("hybrid-cqm", "dwave.system", "solver 'hybrid-cqm' needs dwave-system: pip install 'qubocompress[qpu]'"),
    ],
)
def test_a_missing_extra_is_the_samplers_own_message(
    name: str, module: str, message: str, dwave_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWAVE_API_TOKEN", "fake")
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to imports
    with pytest.raises(SolverError, match=f"^{message}$".replace("[", "\\[").replace("]", "\\]")):
        preflight(name)


def test_each_extra_the_samplers_require_is_checked() -> None:
    """``SolverEntry.requires`` must keep step with the modules each sampler ``require``s."""
    required = {name: {module for module, _, _ in entry.requires} for name, entry in registry.SOLVERS.items()}
    assert required == {
        "sa": set(), "tabu": set(), "greedy": set(), "exact": set(), "random": set(),
        "sqa": {"openjij", "threadpoolctl"},
        "sb": {"simulated_bifurcation", "torch"},
        "qpu": {"dwave.system", "minorminer"},
        "qpu-decomposed": {"dwave.system", "minorminer", "hybrid"},
        "hybrid": {"dwave.system"},
        "hybrid-cqm": {"dwave.system"},
        "ga": {"pymoo"},
        "rl": {"gymnasium", "stable_baselines3"},
    }  # fmt: skip


def test_preflight_imports_no_optional_package(dwave_env: Path) -> None:
    """Checked in a fresh interpreter: the extras are found, not imported (torch stays unloaded)."""
    script = (
        "import sys\n"
        "from qubocompress.solvers.registry import SOLVER_NAMES, SOLVERS, preflight\n"
        "before = set(sys.modules)\n"
        "for name in SOLVER_NAMES:\n"
        "    try:\n"
        "        preflight(name)\n"
        "    except Exception as exc:  # a missing extra here is not what this test is about\n"
        "        print(exc, file=sys.stderr)\n"
        "heavy = {'torch', 'simulated_bifurcation', 'stable_baselines3', 'gymnasium', 'openjij', 'pymoo',\n"
        "         'dwave.system', 'minorminer'}\n"
        "print(sorted(heavy & (set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "DWAVE_API_TOKEN": "fake"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]", done.stderr

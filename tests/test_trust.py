"""Files from others are parsed, never executed: artifacts, checkpoints, BQM instances, caches.

Each hostile file here names code to run (``os.system`` with a command that would leave a marker
file); the tests check that loading refuses it in one line and that the marker never appears.
The fuzz tests feed random truncations, byte flips and header edits and accept only the
project's own one-line errors.
"""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import dimod
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qubocompress.analysis.cache import load_cached
from qubocompress.apply.artifact import load_artifact, save_artifact
from qubocompress.bench.instances import load_instance
from qubocompress.errors import ArtifactError, DataError, ModelError
from qubocompress.models.train import load_checkpoint, save_checkpoint
from qubocompress.models.user import load_user_model
from qubocompress.models.zoo import build_model

TINY = {"num_classes": 3, "in_channels": 1, "input_size": 8, "width": 2}


def artifact_bytes(tmp_path: Path) -> bytes:
    """A valid artifact of a tiny built-in VGG (4-bit weights)."""
    model = build_model("vgg", **TINY)
    bits = {name: 4 for name, module in model.named_modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))}
    path = tmp_path / "valid.qcz"
    save_artifact(path, model, bits, {"name": "vgg", "kwargs": TINY})
    return path.read_bytes()


def with_header(data: bytes, edit) -> bytes:
    """``data`` (an artifact) with its JSON header changed by ``edit`` and a matching checksum."""
    length = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    body = data[:4] + len(text).to_bytes(4, "little") + text + data[8 + length : -4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def mangled(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with each (position, mask) of ``flips`` XOR-ed in, then cut short when ``cut`` is odd."""
    changed = bytearray(data)
    for position, mask in flips:
        changed[position % len(changed)] ^= mask
    return bytes(changed[: cut % len(changed)] if cut % 2 else changed)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file that exists only if a hostile file's command ran."""
    return tmp_path / "pwned"


@pytest.mark.parametrize(
    "arch_of",
    [
        lambda cmd: {"factory": "os:system", "kwargs": {"command": cmd}},
        lambda cmd: {"factory": "subprocess:getoutput", "kwargs": {"cmd": cmd}},
        lambda cmd: {"name": "os:system", "kwargs": {"command": cmd}},
    ],
)
def test_an_artifact_naming_code_never_runs_it(tmp_path, marker, arch_of):
    hostile = tmp_path / "hostile.qcz"
    hostile.write_bytes(with_header(artifact_bytes(tmp_path), lambda h: h.update(arch=arch_of(f"touch {marker}"))))
    with pytest.raises(ArtifactError) as exc:
        load_artifact(hostile)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"{hostile}: cannot rebuild its ")
    assert not marker.exists()


def test_a_built_in_arch_with_huge_sizes_allocates_only_what_the_file_holds(tmp_path):
    hostile = tmp_path / "huge.qcz"
    data = with_header(artifact_bytes(tmp_path), lambda h: h["arch"]["kwargs"].update(width=4_000_000))
    hostile.write_bytes(data)
    model, _ = load_artifact(hostile)  # built on the meta device, its ~10^14 parameters never allocated
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build_model("vgg", **TINY).parameters())
    hostile.write_bytes(with_header(data, lambda h: h["arch"]["kwargs"].update(width=[1])))
    with pytest.raises(ArtifactError, match="width must be a number, boolean or string"):
        load_artifact(hostile)


def test_a_valid_built_in_artifact_loads_without_any_factory(tmp_path):
    path = tmp_path / "ok.qcz"
    path.write_bytes(artifact_bytes(tmp_path))
    model, _ = load_artifact(path)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
def test_fuzzed_artifacts_are_one_line_errors(tmp_path, cut, flips):
    original = artifact_bytes(tmp_path)
    data = mangled(original, cut, flips)
    path = tmp_path / "fuzzed.qcz"
    path.write_bytes(data)
    if data == original:  # flips that cancel out
        load_artifact(path)
        return
    with pytest.raises(ArtifactError) as exc:
        load_artifact(path)
    assert "\n" not in str(exc.value)


HEADER_EDITS = st.sampled_from(["shape", "bits", "dtype", "name", "tensors", "format", "payload_bytes", "arch"])
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 10**6), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=HEADER_EDITS, value=ODD_VALUES, index=st.integers(0, 30))
def test_fuzzed_headers_with_a_valid_checksum_are_one_line_errors(tmp_path, field, value, index):
    def edit(header: dict) -> None:
        tensors = header["tensors"]
        if field in ("shape", "bits", "dtype", "name"):
            tensors[index % len(tensors)][field] = value
        else:
            header[field] = value

    path = tmp_path / "edited.qcz"
    path.write_bytes(with_header(artifact_bytes(tmp_path), edit))
    try:
        load_artifact(path)
    except ArtifactError as exc:
        assert "\n" not in str(exc)


class Hostile:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_holding_code_is_refused_and_never_runs(tmp_path, marker, legacy):
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": Hostile(f"touch {marker}")}}
    if legacy:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(ModelError) as exc:
        load_checkpoint(path)
    assert str(exc.value) == (
        f"checkpoint {path} holds a pickled posix.system object, which safe loading (weights_only=True) refuses: "
        "qubocompress loads tensors only, never code; save torch.save(model.state_dict(), path)"
    )
    with pytest.raises(ModelError, match=f"weights file {path} holds a pickled posix.system object"):
        load_user_model("vgg", weights=path)
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused_with_what_to_save_instead(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(build_model("vgg", **TINY), path)
    with pytest.raises(ModelError, match=r"holds a pickled qubocompress.models.zoo.VGG object, .*model.state_dict"):
        load_user_model("vgg", weights=path)


def test_a_checkpoint_arch_is_a_name_from_the_table_with_plain_kwargs(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model("vgg", **TINY), {"name": "vgg", "kwargs": TINY}, {})
    payload = torch.load(path, weights_only=True)
    payload["arch"] = {"name": "os:system", "kwargs": {}}
    torch.save(payload, path)
    with pytest.raises(ModelError, match="unknown model 'os:system'"):
        load_checkpoint(path)
    payload["arch"] = {"name": "vgg", "kwargs": {**TINY, "width": 3_000_000}}
    torch.save(payload, path)
    with pytest.raises(ModelError, match="does not match the vgg architecture"):
        load_checkpoint(path)  # on the meta device, never allocated


def bqm_bytes() -> bytes:
    bqm = dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0, "a": 0.5}, {(0, 1): 1.5, (1, "a"): -1.0}, 0.25, "BINARY")
    with bqm.to_file() as handle:
        return handle.read()


def test_a_bqm_whose_neighbour_is_outside_the_model_is_refused_not_a_crash(tmp_path):
    """dimod's from_file writes out of bounds on this file (a segmentation fault, found by the fuzz test below)."""
    data = bytearray(bqm_bytes())
    body = data.index(b"\n", len(b"DIMODBQM")) + 1
    body += -body % 64  # the header is padded to 64 bytes
    neighbours = body + 8 + 3 * 12  # after the offset (float64) and 3 x (int32 start, float64 bias)
    second = neighbours + 12  # variable 1's first neighbour (int32 index, float64 bias), after variable 0's one
    data[second : second + 4] = (-(10**6)).to_bytes(4, "little", signed=True)
    path = tmp_path / "crafted.bqm"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="is not a readable dimod BQM"):
        load_instance(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
def test_fuzzed_bqm_files_are_parsed_or_one_line_errors(tmp_path, cut, flips):
    path = tmp_path / "fuzzed.bqm"
    path.write_bytes(mangled(bqm_bytes(), cut, flips))
    try:
        instance = load_instance(path)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(instance.bqm, dimod.BinaryQuadraticModel)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1"))))
def test_a_garbled_analysis_cache_entry_is_ignored(tmp_path, text):
    path = tmp_path / "entry.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert load_cached(path, "key") is None
    path.write_text(json.dumps({"key": "key", "seconds": 1.0, "spec": {"layers": text}}))
    assert load_cached(path, "key") is None


def test_no_reader_loads_pickles_or_imports_named_code():
    """Every torch.load in the package is weights_only=True, and no module imports by a name it reads."""
    source = Path(__file__).parents[1] / "src" / "qubocompress"
    for file in source.rglob("*.py"):
        text = file.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{file.name}: {line.strip()}"
            assert "pickle.load" not in line and "allow_pickle=True" not in line, f"{file.name}: {line.strip()}"
        if "importlib.import_module" in text:  # the user's --model, and optional extras by fixed names
            assert file.relative_to(source).as_posix() in ("models/user.py", "solvers/base.py"), file

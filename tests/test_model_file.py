"""The compressed model as safetensors: exact round trips, the trust rules, damage, third-party readers, size."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from test_apply import (
    CASE_BY_NAME,
    CASES,
    SeqNet,
    TinyResNet,
    arch_of,
    compressed,
    random_plan,
    randomized,
    sample_input,
)
from test_trust import ODD_VALUES, TINY, mangled
from torch import nn

from qubocompress.analysis.graph import trace_model
from qubocompress.apply.artifact import save_artifact
from qubocompress.apply.model_file import CHECKED_KEYS, load_model_file, payload_digest, save_model_file
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import quantize_model_weights
from qubocompress.errors import ArtifactError
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ_ARCH = arch_of(CASE_BY_NAME["seq"])
# The demo's plan for the default VGG: bits of its 6 convs and 2 linears, no pruning.
DEMO_BITS = (8, 8, 8, 7, 3, 1, 1, 8)
DEMO_KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 28}


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def assert_same_state(expected: nn.Module, got: nn.Module) -> None:
    expected_state, got_state = expected.state_dict(), got.state_dict()
    assert list(expected_state) == list(got_state)
    for key, value in expected_state.items():
        assert value.shape == got_state[key].shape and torch.equal(value, got_state[key]), key


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def split(data: bytes) -> tuple[dict, bytes]:
    """The JSON header of a safetensors file and its data buffer."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def joined(header: dict, buffer: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + buffer


def signed(header: dict, buffer: bytes) -> dict:
    """``header`` with the checksum its (possibly edited) metadata and tensor entries give."""

    def span(entry: dict) -> bytes:
        try:
            begin, end = entry["data_offsets"]
            return buffer[begin:end]
        except (KeyError, TypeError, ValueError):
            return b""

    tensors = {
        name: (entry.get("dtype"), entry.get("shape"), span(entry))
        for name, entry in header.items()
        if name != "__metadata__"
    }
    header["__metadata__"]["sha256"] = payload_digest(header["__metadata__"], tensors)
    return header


def rewritten(path: Path, edit: Callable[[dict], None], sign: bool = True) -> None:
    """Change the header of the model file at ``path`` (and its checksum, when ``sign``)."""
    header, buffer = split(path.read_bytes())
    edit(header)
    path.write_bytes(joined(signed(header, buffer) if sign else header, buffer))


def edit_metadata(key: str, change: Callable[[object], object]) -> Callable[[dict], None]:
    """An edit of the JSON value under metadata ``key``."""

    def edit(header: dict) -> None:
        metadata = header["__metadata__"]
        metadata[key] = json.dumps(change(json.loads(metadata[key])))

    return edit


def write_seq(tmp_path: Path) -> Path:
    pruned, plan = compressed(CASE_BY_NAME["seq"], seed=3)
    path = tmp_path / "model.safetensors"
    save_model_file(path, pruned, plan.bits, SEQ_ARCH)
    return path


def tiny_vgg() -> tuple[nn.Module, dict[str, int]]:
    model = randomized(build_model("vgg", **TINY), 0)
    return model, dict.fromkeys(layer_names(model), 4)


def tiny_vgg_bytes(tmp_path: Path) -> bytes:
    model, bits = tiny_vgg()
    path = tmp_path / "valid.safetensors"
    save_model_file(path, model, bits, {"name": "vgg", "kwargs": TINY})
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_round_trip_equals_the_quantized_pruned_model(case, tmp_path):
    pruned, plan = compressed(case, seed=11)
    path = tmp_path / "model.safetensors"
    metadata = {"plan": plan.to_dict(), "acc": np.float32(0.5), "counts": np.arange(3)}
    size = save_model_file(path, pruned, plan.bits, arch_of(case), metadata)
    assert size == path.stat().st_size
    loaded, meta = load_model_file(path, factory=case.make)
    assert not loaded.training
    assert meta == {"plan": plan.to_dict(), "acc": 0.5, "counts": [0, 1, 2]}
    reference = quantize_model_weights(pruned, plan.bits).eval()
    assert_same_state(reference, loaded)
    x = sample_input(case, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "vgg", "resnet20", "mobilenet"])
def test_built_in_models_reload_without_a_factory(name, tmp_path):
    kwargs = {"num_classes": 5, "in_channels": 1, "input_size": 16}
    if name != "lenet5":
        kwargs["width"] = 4
    model = randomized(build_model(name, **kwargs), 0)
    graph = trace_model(model, (1, 16, 16))
    plan = random_plan(graph, np.random.default_rng(1), bits_choices=(1, 2, 4, 8, 32))
    pruned = prune_model(model, graph, plan).eval()
    path = tmp_path / f"{name}.safetensors"
    save_model_file(path, pruned, plan.bits, {"name": name, "kwargs": kwargs}, {"plan": plan.to_dict()})
    loaded, meta = load_model_file(path)
    assert meta == {"plan": plan.to_dict()}
    assert_same_state(quantize_model_weights(pruned, plan.bits).eval(), loaded)


def test_a_user_model_reloads_only_from_the_recorded_factory(tmp_path):
    path = write_seq(tmp_path)
    for factory in (SeqNet, "test_apply:SeqNet"):
        model, _ = load_model_file(path, factory=factory)
        assert isinstance(model, SeqNet)
    with pytest.raises(ArtifactError) as exc:
        load_model_file(path)
    assert one_line(exc).startswith(
        f"{path}: cannot rebuild its test_apply:SeqNet model: its model is built by test_apply:SeqNet, and loading "
        "never imports or calls what a file names: pass that factory yourself"
    )
    with pytest.raises(ArtifactError, match="records the factory test_apply:SeqNet, not test_apply:TinyResNet"):
        load_model_file(path, factory=TinyResNet)
    rewritten(path, edit_metadata("arch", lambda arch: {**arch, "factory": "test_apply:TinyResNet"}))
    with pytest.raises(ArtifactError) as exc:
        load_model_file(path, factory=TinyResNet)
    assert one_line(exc).startswith(f"model file {path} does not match the 'test_apply:TinyResNet' architecture (")


def test_torchscript_loads_only_when_trusted(tmp_path):
    original = randomized(SeqNet(), 5)
    scripted = torch.jit.script(original)
    bits = {"features.0": 2, "features.3": 5, "fc1": 1, "fc2": 32}
    path = tmp_path / "ts.safetensors"
    save_model_file(path, scripted, bits, {"torchscript": True})
    with pytest.raises(ArtifactError) as exc:
        load_model_file(path)
    assert one_line(exc) == (
        f"{path} holds TorchScript code, which loading would run: pass trust_torchscript=True only for a file you "
        "trust (its checksum shows it is undamaged, not who wrote it)"
    )
    loaded, _ = load_model_file(path, trust_torchscript=True)
    assert isinstance(loaded, torch.jit.ScriptModule) and not loaded.training
    reference = quantize_model_weights(original, bits).eval()
    assert_same_state(reference, loaded)
    x = sample_input(CASE_BY_NAME["seq"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))
    with pytest.raises(ArtifactError, match="arch says torchscript, but the model is a SeqNet"):
        save_model_file(tmp_path / "bad.safetensors", original, bits, {"torchscript": True})


# ---------------------------------------------------------------------------------------------
# hostile and damaged files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch_of_command",
    [
        lambda cmd: {"factory": "os:system", "kwargs": {"command": cmd}},
        lambda cmd: {"factory": "subprocess:getoutput", "kwargs": {"cmd": cmd}},
        lambda cmd: {"name": "os:system", "kwargs": {"command": cmd}},
    ],
)
def test_a_model_file_naming_code_never_runs_it(tmp_path, arch_of_command):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(tiny_vgg_bytes(tmp_path))
    rewritten(path, edit_metadata("arch", lambda _: arch_of_command(f"touch {marker}")))
    with pytest.raises(ArtifactError) as exc:
        load_model_file(path)
    assert one_line(exc).startswith(f"{path}: cannot rebuild its ")
    assert not marker.exists()


def test_a_built_in_arch_with_huge_sizes_allocates_only_what_the_file_holds(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(tiny_vgg_bytes(tmp_path))
    rewritten(path, edit_metadata("arch", lambda arch: {**arch, "kwargs": {**arch["kwargs"], "width": 4_000_000}}))
    model, _ = load_model_file(path)  # built on the meta device, its ~10^14 parameters never allocated
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_vgg()[0].parameters())


def test_damage_is_one_clear_line(tmp_path):
    path = write_seq(tmp_path)
    data = path.read_bytes()
    cases = {
        "flipped": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
        "tail cut": data[: len(data) - 10],
        "header cut": data[:100],
        "length only": data[:7],
        "trailing": data + b"\0\0",
        "empty": b"",
    }
    expected = {
        "flipped": r"is corrupt \(checksum mismatch\); write the model file again",
        "tail cut": rf"is truncated \({len(data) - 10} of {len(data)} bytes\)",
        "header cut": r"is truncated \(100 bytes, its header alone needs",
        "length only": r"is not a safetensors model file, or is truncated \(7 bytes\)",
        "trailing": r"is corrupt \(2 unexpected bytes after its end\)",
        "empty": r"is not a safetensors model file, or is truncated \(0 bytes\)",
    }
    for name, damaged in cases.items():
        path.write_bytes(damaged)
        with pytest.raises(ArtifactError, match=expected[name]) as exc:
            load_model_file(path, factory=SeqNet)
        one_line(exc)
    torch.save(SeqNet().state_dict(), path)
    with pytest.raises(ArtifactError, match="is not a safetensors model file"):
        load_model_file(path, factory=SeqNet)
    with pytest.raises(ArtifactError, match="cannot read model file .*absent.safetensors: No such file"):
        load_model_file(tmp_path / "absent.safetensors")


def test_an_edited_header_is_a_checksum_mismatch_and_a_new_format_is_named(tmp_path):
    path = write_seq(tmp_path)
    rewritten(path, edit_metadata("metadata", lambda _: {"plan": "other"}), sign=False)
    with pytest.raises(ArtifactError, match=r"is corrupt \(checksum mismatch\)"):
        load_model_file(path, factory=SeqNet)
    path = write_seq(tmp_path)
    rewritten(path, lambda header: header["fc1.bias"].update(dtype="I32"), sign=False)
    with pytest.raises(ArtifactError, match=r"is corrupt \(checksum mismatch\)"):
        load_model_file(path, factory=SeqNet)
    rewritten(path, lambda header: header["__metadata__"].update(qubocompress_format="2"))
    with pytest.raises(ArtifactError, match="has model file format '2'; this qubocompress reads format '1'"):
        load_model_file(path, factory=SeqNet)


def test_a_plain_safetensors_file_is_no_model_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(3, dtype=np.float32)}, path)
    with pytest.raises(ArtifactError, match="is a safetensors file but not a qubocompress model"):
        load_model_file(path)


def test_what_only_safetensors_rejects_is_still_one_line(tmp_path):
    """A lone surrogate in a name: Python's JSON parser takes it, safetensors' does not."""
    path = write_seq(tmp_path)
    rewritten(path, lambda header: header.update({"\ud800": header.pop("fc2.bias")}))
    with pytest.raises(ArtifactError) as exc:
        load_model_file(path, factory=SeqNet)
    assert one_line(exc).startswith(f"{path} is corrupt (safetensors cannot read it: ")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda h: h["fc1.weight.codes"].update(shape=[1]),
            r"malformed safetensors header: tensor 'fc1.weight.codes' has",
        ),
        (lambda h: h["fc1.bias"].update(dtype="F16"), "tensor 'fc1.bias' has dtype 'F16', which this format does not"),
        (lambda h: h["fc2.bias"].update(data_offsets=[0, 16]), "leave a gap or overlap at byte"),
        (edit_metadata("bits", lambda bits: {**bits, "fc1": 7}), r"malformed metadata: fc1.weight.codes does not hold"),
        (edit_metadata("shapes", lambda shapes: {}), "malformed metadata: bits and shapes must be dicts over the same"),
        (edit_metadata("metadata", lambda _: [1]), "malformed metadata: the metadata is a list, not a dict"),
        (lambda h: h["__metadata__"].update(arch="{"), "malformed metadata: Expecting property name"),
    ],
)
def test_a_signed_header_that_does_not_describe_the_tensors_is_corrupt(tmp_path, edit, message):
    pruned = randomized(SeqNet(), 2)
    path = tmp_path / "m.safetensors"
    save_model_file(path, pruned, {"fc1": 3, "fc2": 5}, SEQ_ARCH)
    rewritten(path, edit)
    with pytest.raises(ArtifactError, match=message) as exc:
        load_model_file(path, factory=SeqNet)
    one_line(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
def test_fuzzed_files_are_one_line_errors_or_the_same_model(tmp_path, cut, flips):
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(mangled(tiny_vgg_bytes(tmp_path), cut, flips))
    try:
        loaded, _ = load_model_file(path)
    except ArtifactError as exc:
        assert "\n" not in str(exc)
    else:  # only flips that cancel out, or turn the header's padding into other JSON white space
        model, bits = tiny_vgg()
        assert_same_state(quantize_model_weights(model, bits).eval(), loaded)


TENSOR_FIELDS = ("dtype", "shape", "data_offsets", "name")
LAYER_FIELDS = ("bits", "shapes")
FIELDS = (*TENSOR_FIELDS, *LAYER_FIELDS, "arch kwargs", *CHECKED_KEYS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=ODD_VALUES, index=st.integers(0, 60), as_json=st.booleans())
def test_fuzzed_signed_headers_are_one_line_errors(tmp_path, field, value, index, as_json):
    def edit(header: dict) -> None:
        metadata = header["__metadata__"]
        names = sorted(name for name in header if name != "__metadata__")
        name = names[index % len(names)]
        if field == "name":
            header[str(value)] = header.pop(name)
        elif field in TENSOR_FIELDS:
            header[name][field] = value
        elif field in LAYER_FIELDS or field == "arch kwargs":
            key = "arch" if field == "arch kwargs" else field
            described = json.loads(metadata[key])
            target = described["kwargs"] if field == "arch kwargs" else described
            target[sorted(target)[index % len(target)]] = value
            metadata[key] = json.dumps(described)
        else:
            metadata[field] = json.dumps(value) if as_json else value

    path = tmp_path / "edited.safetensors"
    path.write_bytes(tiny_vgg_bytes(tmp_path))
    rewritten(path, edit)
    try:
        load_model_file(path)
    except ArtifactError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------------------------------------
# the file for others, and its size
# ---------------------------------------------------------------------------------------------


def test_plain_safetensors_reads_every_tensor_and_the_metadata(tmp_path):
    model = randomized(SeqNet(), 7)
    bits = {"features.0": 3, "features.3": 1, "fc1": 8, "fc2": 32}
    path = tmp_path / "model.safetensors"
    save_model_file(path, model, bits, SEQ_ARCH, {"plan": {"bits": bits}})
    arrays = safetensors.numpy.load_file(path)
    with safe_open(path, framework="np") as handle:
        metadata = handle.metadata()
        assert sorted(handle.keys()) == sorted(arrays)
    state = model.state_dict()
    quantized = {f"{layer}.weight" for layer, b in bits.items() if b != 32}
    packed = {f"{key}.{part}" for key in quantized for part in ("codes", "scale")}
    assert set(arrays) == {key for key in state if key not in quantized} | packed
    assert set(metadata) == {*CHECKED_KEYS, "sha256"} and metadata["qubocompress_format"] == "1"
    assert json.loads(metadata["arch"]) == SEQ_ARCH and json.loads(metadata["metadata"]) == {"plan": {"bits": bits}}
    assert json.loads(metadata["bits"]) == {"features.0": 3, "features.3": 1, "fc1": 8}
    assert json.loads(metadata["shapes"]) == {"features.0": [6, 1, 3, 3], "features.3": [8, 6, 3, 3], "fc1": [12, 128]}
    assert arrays["features.1.num_batches_tracked"].dtype == np.int64 and arrays["fc2.weight"].dtype == np.float32
    reference = quantize_model_weights(model, bits).state_dict()
    for layer, b in json.loads(metadata["bits"]).items():  # the weights from the documented layout, numpy only
        shape = json.loads(metadata["shapes"])[layer]
        codes, scale = arrays[f"{layer}.weight.codes"], arrays[f"{layer}.weight.scale"]
        count = int(np.prod(shape))
        assert codes.dtype == np.uint8 and codes.shape == (-(-count * b // 8),) and scale.dtype == np.float32
        planes = np.unpackbits(codes, count=count * b, bitorder="little").reshape(count, b).astype(np.int64)
        unsigned = (planes << np.arange(b)).sum(axis=1)
        signed_codes = 2 * unsigned - 1 if b == 1 else unsigned - (2 ** (b - 1) - 1)
        weight = signed_codes.reshape(shape) * scale.reshape(-1, *[1] * (len(shape) - 1))
        np.testing.assert_array_equal(weight.astype(np.float32), reference[f"{layer}.weight"].numpy())
    header, buffer = split(path.read_bytes())  # the checksum from its definition, hashlib only
    header.pop("__metadata__")
    described = {
        "metadata": {key: metadata[key] for key in CHECKED_KEYS},
        "tensors": {name: [entry["dtype"], entry["shape"]] for name, entry in header.items()},
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(header):
        begin, end = header[name]["data_offsets"]
        digest.update(buffer[begin:end])
    assert digest.hexdigest() == metadata["sha256"]


def test_size_is_within_five_percent_of_the_artifact(tmp_path):
    model = randomized(build_model("vgg", **DEMO_KWARGS), 0)
    bits = dict(zip(layer_names(model), DEMO_BITS, strict=True))
    plan = Plan(pruned={}, bits=bits)
    metadata = {"plan": plan.to_dict(), "normalize": "mean-std", "mean": [0.286], "std": [0.353]}
    arch = {"name": "vgg", "kwargs": DEMO_KWARGS}
    artifact = save_artifact(tmp_path / "model.qcz", model, bits, arch, metadata)
    size = save_model_file(tmp_path / "model.safetensors", model, bits, arch, metadata)
    state = model.state_dict()
    packed = sum(-(-state[f"{n}.weight"].numel() * b // 8) + 4 * state[f"{n}.weight"].shape[0] for n, b in bits.items())
    raw = sum(v.numel() * v.element_size() for k, v in state.items() if k.removesuffix(".weight") not in bits)
    assert packed + raw < artifact < size < 1.05 * artifact  # measured: 45,639 and 47,520 bytes (+4.1 %)


def test_bad_arch_metadata_and_places_are_errors_that_leave_no_file(tmp_path):
    with pytest.raises(ArtifactError, match="arch must be"):
        save_model_file(tmp_path / "m.safetensors", SeqNet(), {}, {"kwargs": {}})
    with pytest.raises(ArtifactError, match="JSON-serialisable"):
        save_model_file(tmp_path / "m.safetensors", SeqNet(), {}, SEQ_ARCH, metadata={"x": object()})
    with pytest.raises(ArtifactError, match="JSON-serialisable: Out of range float values"):
        save_model_file(tmp_path / "m.safetensors", SeqNet(), {}, SEQ_ARCH, metadata={"acc": float("nan")})
    (tmp_path / "adir").mkdir()
    with pytest.raises(ArtifactError, match="cannot write .*adir: it is an existing folder"):
        save_model_file(tmp_path / "adir", SeqNet(), {}, SEQ_ARCH)
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]

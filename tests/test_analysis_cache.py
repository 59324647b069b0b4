"""The analysis cache: keys that change with everything the analysis depends on, safe reads, and
analyse_model without damage (what the accuracy-in-the-loop searches need)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qubocompress.analysis import analyse_model
from qubocompress.analysis.cache import analysis_key, cache_path, load_cached, store
from qubocompress.apply.quantize import fake_quantize
from qubocompress.data.datasets import synthetic_dataset
from qubocompress.errors import ProblemError
from qubocompress.models.zoo import build_model
from qubocompress.pipeline import CompressConfig, analyse

from test_sensitivity import data, dead_channel_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"importance": "l1", "layer_sensitivity": "measured", "b_max": 4, "prune_options": [0.0, 0.5]}


def _spec(model: torch.nn.Module, calib: tuple[torch.Tensor, torch.Tensor], measure_damage: bool = True):
    return analyse_model(
        model,
        calib,
        (1, 8, 8),
        fake_quantize,
        "toy",
        b_max=4,
        bit_levels=2,
        prune_options=(0.0, 0.5),
        measure_damage=measure_damage,
    )[1]


def test_key_is_stable_for_equal_models_and_changes_with_weights_buffers_data_and_options() -> None:
    model, calib = dead_channel_net(), data(n=16)
    key = analysis_key(model, calib, OPTIONS)
    assert analysis_key(copy.deepcopy(model), (calib[0].clone(), calib[1].clone()), dict(OPTIONS)) == key
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.conv.weight[0, 0, 0, 0] += 1e-6
    assert analysis_key(nudged, calib, OPTIONS) != key
    with_buffer = copy.deepcopy(model)
    with_buffer.register_buffer("running", torch.zeros(1))
    assert analysis_key(with_buffer, calib, OPTIONS) != key
    relabelled = (calib[0], torch.roll(calib[1], 1))
    assert analysis_key(model, relabelled, OPTIONS) != key
    assert analysis_key(model, calib, {**OPTIONS, "importance": "taylor"}) != key


def test_store_then_load_gives_the_same_spec_and_bad_entries_are_misses(tmp_path: Path) -> None:
    model, calib = dead_channel_net(), data(n=16)
    spec = _spec(model, calib)
    key = analysis_key(model, calib, OPTIONS)
    path = cache_path(tmp_path, "toy/net", key)
    assert path.parent == tmp_path / "analyses" and "/" not in path.name
    assert load_cached(path, key) is None
    store(path, key, spec, 12.5)
    loaded, seconds = load_cached(path, key)
    assert loaded.to_json() == spec.to_json() and seconds == 12.5
    assert load_cached(path, "another key") is None
    path.write_text('{"key": "' + key + '", "seconds": 1, "spec": {"layers": 3}}')
    assert load_cached(path, key) is None
    path.write_text("{ truncated")
    assert load_cached(path, key) is None


def test_analyse_model_without_damage_keeps_options_and_makes_no_data_pass() -> None:
    model, calib = dead_channel_net(), data(n=16)
    batches = []
    handle = model.stem.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    spec = _spec(model, calib, measure_damage=False)
    handle.remove()
    assert len(calib[0]) not in batches  # only tracing runs the model; l1 ranks and options need no data
    assert all(layer.quant_damage.size == 0 for layer in spec.layers)
    assert all(g.prune_options and g.prune_damage.size == 0 for g in spec.groups)
    measured = _spec(model, calib)
    assert [g.prune_options for g in spec.groups] == [g.prune_options for g in measured.groups]
    with pytest.raises(ProblemError, match="interactions .* need measure_damage"):
        analyse_model(model, calib, (1, 8, 8), fake_quantize, "toy", interactions=True, measure_damage=False)


def test_the_pipeline_reuses_an_analysis_and_an_unwritable_cache_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = synthetic_dataset(num_classes=4, n_train=64, n_val=8, n_test=8)
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=4, in_channels=1, input_size=28).eval()
    config = CompressConfig(model="lenet5", formulation="budget")
    monkeypatch.setenv("QUBOCOMPRESS_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    _, spec, info = analyse(model, dataset, config, "lenet5", lines.append)
    _, again, info_again = analyse(model, dataset, config, "lenet5", lines.append)
    assert not info["cached"] and info_again["cached"] and again.to_json() == spec.to_json()
    assert info_again["measured_seconds"] == info["measured_seconds"] and "reused the analysis" in lines[-1]
    _, fresh, info_fresh = analyse(model, dataset, replace(config, analysis_cache=False), "lenet5", lines.append)
    assert not info_fresh["cached"] and info_fresh["cache_path"] is None and fresh.to_json() == spec.to_json()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QUBOCOMPRESS_CACHE", str(blocker))
    _, unstored, _ = analyse(model, dataset, config, "lenet5", lines.append)
    assert unstored.to_json() == spec.to_json()
    assert lines[-1].startswith("  warning: could not cache the analysis") and "measures it again" in lines[-1]

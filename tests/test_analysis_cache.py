"""The analysis cache: keys that change with everything the analysis depends on, safe reads, and
analyse_model without damage (what the accuracy-in-the-loop searches need)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from qubocompress.analysis import analyse_model
from qubocompress.analysis.cache import analysis_key, cache_path, load_cached, store
from qubocompress.apply.quantize import fake_quantize
from qubocompress.errors import ProblemError

from test_sensitivity import data, dead_channel_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"importance": "l1", "layer_sensitivity": "measured", "b_max": 4, "prune_options": [0.0, 0.5]}


def _spec(model: torch.nn.Module, calib: tuple[torch.Tensor, torch.Tensor], measure_damage: bool = True):
    return analyse_model(
        model, calib, (1, 8, 8), fake_quantize, "toy", b_max=4, bit_levels=2, prune_options=(0.0, 0.5),
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

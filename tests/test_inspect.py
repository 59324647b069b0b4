"""qubocompress inspect: a model file's layers before and after pruning, bits and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from qubocompress.analysis.graph import trace_model
from qubocompress.apply.inspect import inspect_model_file
from qubocompress.apply.model_file import save_model_file
from qubocompress.apply.prune import prune_model
from qubocompress.errors import ArtifactError
from qubocompress.models.user import factory_label
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan

from test_apply import SeqNet

KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 28}


def test_a_pruned_built_in_model_is_listed_layer_by_layer(tmp_path):
    model = build_model("vgg", **KWARGS)
    graph = trace_model(model, (1, 28, 28))
    group = graph.groups[0]
    layers = [layer.name for layer in graph.layers]
    plan = Plan(pruned={group.name: (0, 1, 2)}, bits={name: 4 for name in layers[:-1]})
    path = tmp_path / "model.safetensors"
    size = save_model_file(path, prune_model(model, graph, plan), plan.bits, {"name": "vgg", "kwargs": KWARGS})
    summary = inspect_model_file(path)
    assert summary.file_bytes == size and [layer.name for layer in summary.layers] == layers
    first = summary.layers[0]
    assert first.shape_before[0] == first.shape_after[0] + 3 and first.kept_filters.endswith(
        f"/{first.shape_before[0]}"
    )
    assert [layer.bits for layer in summary.layers] == [4] * (len(layers) - 1) + [32]
    count = int(np.prod(first.shape_after))
    assert first.weight_bytes == -(-count * 4 // 8) + 4 * first.shape_after[0]
    assert sum(layer.weight_bytes for layer in summary.layers) < summary.file_bytes < summary.fp32_bytes / 4
    table = summary.table()
    assert "kept filters" in table and f"{first.shape_after[0]}/{first.shape_before[0]}" in table
    assert f"model.safetensors: {size:,} bytes" in table


def test_a_user_model_needs_its_factory(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model_file(path, SeqNet(), {}, {"factory": factory_label(SeqNet), "kwargs": {}})
    with pytest.raises(ArtifactError, match="loading never imports or calls what a file names"):
        inspect_model_file(path)
    assert inspect_model_file(path, SeqNet).layers[0].bits == 32

"""Per-channel importance scores (higher = more important to keep).

``l1`` is the paper's score: the mean absolute weight of each output filter (Li et al. 2017). A
channel group with several producing layers (tied by a residual add) or a depthwise conv sums the
scores of every member filter, since pruning the channel removes all of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph
from qubocompress.errors import ProblemError

IMPORTANCE_METHODS = ("l1",)


def filter_l1(weight: torch.Tensor) -> np.ndarray:
    """Mean |w| of each output filter (dim 0) of a conv/linear weight."""
    return weight.detach().abs().reshape(weight.shape[0], -1).mean(dim=1).double().cpu().numpy()


def group_importance(model: nn.Module, graph: ModelGraph, method: str = "l1") -> list[np.ndarray]:
    """Importance of every channel of every group of ``graph``, in group order."""
    if method not in IMPORTANCE_METHODS:
        raise ProblemError(f"unknown importance {method!r}; choose one of {', '.join(IMPORTANCE_METHODS)}")
    modules = dict(model.named_modules())
    scores = []
    for group in graph.groups:
        total = np.zeros(group.channels)
        for name in (*group.producers, *group.depthwise):
            total += filter_l1(modules[name].weight)
        scores.append(total)
    return scores

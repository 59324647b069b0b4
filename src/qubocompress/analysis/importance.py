"""Per-channel importance scores (higher = more important to keep), one vector per channel group.

Methods (:data:`IMPORTANCE_METHODS`):

* ``l1``: the paper's score, the mean absolute weight of each output filter (Li et al. 2017),
  summed over every member filter of the group (the producers tied by residual adds and the
  depthwise convs carrying the channels), since pruning the channel removes all of them. Needs
  no data. Units: |weight|.
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed
  (Molchanov et al. 2017, the activation-based form): ``|Σ_n Σ_sites a·∂L_n/∂a| / N`` over the N
  calibration samples, in nats (``L_n``: cross-entropy of sample n).
* ``fisher``: the empirical-Fisher (second-order) estimate of the same change (Theis et al. 2018;
  Liu et al. 2021, "group Fisher pruning", for coupled channels): ``Σ_n (Σ_sites a·∂L_n/∂a)² /
  (2N)``, in nats. It is the squared gradient of a mask shared by every site of the channel.

Where a and ∂L/∂a are measured ("sites"): at the input of every consumer of the group, the
exact place where pruning acts (see :mod:`qubocompress.analysis.masking`), summed over the
consumers, the spatial positions (or, after a flatten, the channel's block of features) and, for
taylor, the samples. A channel that feeds two consumers, or several residual adds, is thus
counted once per consumer, and the estimate is the Taylor expansion of exactly the masking that
``prune_damage`` measures. For a conv → BN → ReLU → pool → conv chain this equals ``a·∂L/∂a`` at
the BN output, since ``Σ a·∂L/∂a`` is unchanged through positively homogeneous per-channel ops
(ReLU, max/avg pooling, flatten; Euler's theorem).

The contributions come from one backward pass per batch (``analysis.backward``, which the
Fisher sensitivity shares). Parameters' ``.grad`` are left untouched. The same call twice gives
the same scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.backward import BATCH_SIZE, backward_statistics
from qubocompress.analysis.graph import ModelGraph
from qubocompress.errors import ProblemError
from qubocompress.names import IMPORTANCES

IMPORTANCE_METHODS = IMPORTANCES

CalibrationData = tuple[torch.Tensor, torch.Tensor]


def filter_l1(weight: torch.Tensor) -> np.ndarray:
    """Mean |w| of each output filter (dim 0) of a conv/linear weight."""
    return weight.detach().abs().reshape(weight.shape[0], -1).mean(dim=1).double().cpu().numpy()


def group_importance(
    model: nn.Module,
    graph: ModelGraph,
    method: str = "l1",
    data: CalibrationData | None = None,
    batch_size: int = BATCH_SIZE,
    contributions: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Importance of every channel of every group of ``graph``, in group order.

    Args:
        method: one of :data:`IMPORTANCE_METHODS` (see the module docstring).
        data: ``(x, y)`` calibration inputs and int64 labels; needed by ``taylor`` and ``fisher``.
        batch_size: samples per forward/backward pass.
        contributions: ``analysis.backward.backward_statistics(...).contributions`` of ``data``
            if already computed (saves the pass).

    Raises:
        ProblemError: an unknown method, or a data-driven method without data.
    """
    if method not in IMPORTANCE_METHODS:
        raise ProblemError(f"unknown importance {method!r}; choose one of {', '.join(IMPORTANCE_METHODS)}")
    if not graph.groups:
        return []
    if method == "l1":
        modules = dict(model.named_modules())
        return [
            sum(
                (filter_l1(modules[name].weight) for name in (*group.producers, *group.depthwise)),
                np.zeros(group.channels),
            )
            for group in graph.groups
        ]
    if data is None or len(data[0]) == 0:
        raise ProblemError(f"importance {method!r} needs calibration data (x, y); pass data= or use 'l1'")
    x, y = data
    if contributions is None:
        contributions = backward_statistics(model, x, y, groups=graph.groups, batch_size=batch_size).contributions
    if method == "taylor":
        return [np.abs(c.sum(axis=0)) / len(x) for c in contributions]
    return [np.square(c).sum(axis=0) / (2 * len(x)) for c in contributions]

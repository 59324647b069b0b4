"""Synthetic compression specs of VGG-like conv nets, for tests and solver benchmarks (no model needed).

The statistics imitate what the analysis layer measures on a trained net:

* filter importance (mean |weight|) ~ lognormal around ``1/sqrt(fan_in)``, the scale of a
  He-initialised filter, with a per-layer factor;
* quantization damage of a layer at b bits (loss increase, nats) ~ ``c·(4^−b − 4^−b_max)``: every
  bit removed quadruples the quantization noise power; ``c`` lognormal per layer (median 4, so
  1 bit costs ~1 nat and 4 bits ~0.02 nat), with a little per-bit noise, non-increasing in b and
  0 at ``b_max``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec

DEFAULT_CHANNELS = (16, 16, 32, 32, 64, 64)


def _spatial_sizes(count: int, input_size: int) -> list[int]:
    """Output side length of each conv of a net that halves the map after every second conv."""
    return [max(1, input_size // 2 ** (i // 2)) for i in range(count)]


def synthetic_spec(
    channels: Sequence[int] = DEFAULT_CHANNELS,
    classifier: int = 10,
    seed: int = 0,
    max_prune_fraction: float = 0.5,
    *,
    width: float = 1.0,
    depth: int = 1,
    in_channels: int = 1,
    input_size: int = 28,
    pooled_size: int = 3,
    b_max: int = 8,
    bit_levels: int = 3,
) -> CompressionSpec:
    """A VGG-like sequential conv net spec with realistic importance and damage statistics.

    Args:
        channels: output channels of the 3×3 convs, before ``width``/``depth`` scaling; the
            default (16, 16, 32, 32, 64, 64) has output maps 28, 28, 14, 14, 7, 7.
        classifier: outputs of the final linear layer (its outputs are never pruned).
        seed: random seed; the same arguments give the same spec.
        max_prune_fraction: share of each conv's filters that may be pruned (``max_pruned =
            floor(fraction · size)``, capped at size − 1).
        width: multiplies every conv's channel count (rounded, at least 1).
        depth: repeats every conv ``depth`` times at the same width and map size.
        in_channels: channels of the input image.
        input_size: side of the input image; every second conv halves the map.
        pooled_size: side of the map the classifier sees (after pooling): its
            ``in_features_per_channel`` is ``pooled_size**2``.
        b_max, bit_levels: as in :class:`CompressionSpec`.

    Variables of the paper formulation: about ``max_prune_fraction · Σ channels`` pruning plus
    ``bit_levels`` per layer; e.g. ``width=16, depth=6`` gives about 10,900.
    """
    if not channels or any(int(c) < 1 for c in channels):
        raise ProblemError(f"channels must be a non-empty list of positive counts, got {list(channels)}")
    if width <= 0 or depth < 1 or classifier < 1 or in_channels < 1 or input_size < 1 or pooled_size < 1:
        raise ProblemError("width must be > 0 and depth, classifier, in_channels, input_size, pooled_size >= 1")
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ProblemError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    rng = np.random.default_rng(seed)
    base_sizes = _spatial_sizes(len(channels), input_size)
    conv_channels = [max(1, round(int(c) * width)) for c in channels for _ in range(depth)]
    sizes = [s for s in base_sizes for _ in range(depth)]

    def damage_curve() -> np.ndarray:
        bits = np.arange(1, b_max + 1, dtype=np.float64)
        scale = 4.0 * rng.lognormal(0.0, 0.7)
        curve = scale * (4.0**-bits - 4.0**-b_max) * rng.lognormal(0.0, 0.1, size=b_max)
        curve[-1] = 0.0
        return np.maximum.accumulate(curve[::-1])[::-1]  # fewer bits never hurt less

    layers: list[LayerSpec] = []
    groups: list[ChannelGroup] = []
    previous = in_channels
    for n, (out, side) in enumerate(zip(conv_channels, sizes)):
        name = f"features.{3 * n}"
        fan_in = previous * 9
        importance = rng.lognormal(0.0, 0.3) * rng.lognormal(0.0, 0.4, size=out) / np.sqrt(fan_in)
        groups.append(
            ChannelGroup(
                name=name,
                importance=importance,
                max_pruned=min(int(max_prune_fraction * out), out - 1),
                members=(name,),
            )
        )
        layers.append(
            LayerSpec(
                name=name,
                kind="conv",
                out_channels=out,
                in_channels=previous,
                kernel_area=9,
                out_positions=side * side,
                out_group=n,
                in_group=n - 1 if n > 0 else None,
                quant_damage=damage_curve(),
            )
        )
        previous = out
    layers.append(
        LayerSpec(
            name="classifier",
            kind="linear",
            out_channels=classifier,
            in_channels=previous,
            in_features_per_channel=pooled_size**2,
            out_group=None,
            in_group=len(groups) - 1,
            quant_damage=damage_curve(),
        )
    )
    return CompressionSpec(
        model="synthetic-vgg", layers=tuple(layers), groups=tuple(groups), b_max=b_max, bit_levels=bit_levels
    )

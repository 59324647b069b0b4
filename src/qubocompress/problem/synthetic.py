"""Synthetic compression specs of VGG-like conv nets, for tests and solver benchmarks (no model needed).

The statistics imitate what the analysis layer measures on a trained net:

* filter importance (mean |weight|) ~ lognormal around ``1/sqrt(fan_in)``, the scale of a
  He-initialised filter, with a per-layer factor;
* quantization damage of a layer at b bits (loss increase, nats) ~ ``c·(4^−b − 4^−b_max)``: every
  bit removed quadruples the quantization noise power; ``c`` lognormal per layer (median 4, so
  1 bit costs ~1 nat and 4 bits ~0.02 nat), with a little per-bit noise, non-increasing in b and
  0 at ``b_max``.

Optional measurements for option-based formulations (e.g. ``budget``), added by
:func:`with_synthetic_measurements` (also reachable through ``synthetic_spec(prune_steps=...,
interactions=...)`` and :func:`synthetic_resnet_spec`), drawn from a separate random stream so
that the base spec of a seed never changes:

* prune options: ``0, 1/s, 2/s, … , 1`` of each group's ``max_pruned`` (s = ``prune_steps``);
  damage of pruning the k least important channels ~ ``c·r_k^1.5`` with ``r_k`` the share of
  the group's importance (L1 mass) removed and ``c`` lognormal per group (median 2 nats, so
  removing a third of the mass costs ~0.4 nat), non-decreasing in k and 0 at k = 0;
* interactions (CLADO-style cross terms, arXiv 2307.05657): for neighbouring choices — the bits
  of layers one or two apart, the bits of a layer with its output and input groups, a layer's
  input group with its output group — ``table[i, j] = ρ·sqrt(Ω₁(i)·Ω₂(j))``, the geometric mean
  of the two single damages times a correlation ``ρ`` (median 0.3 for neighbours, halved per
  further step, negative with probability 0.2): errors of nearby layers mostly compound, and a
  cross term vanishes where either choice leaves its layer untouched.

A filter Gram matrix for the ``filters`` formulation, added by :func:`with_synthetic_filter_gram`
(a third random stream): ``G = UᵀU/N`` of N per-sample channel contributions; within a group they
share a few latent factors, so that some filters are redundant (strongly correlated: cheap alone,
dear together) and some complementary (anti-correlated), each channel scaled by its importance
(the damage of removing a channel ~ its importance², as the budget form's curve has it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, Interaction, LayerSpec

DEFAULT_CHANNELS = (16, 16, 32, 32, 64, 64)


def _spatial_sizes(count: int, input_size: int) -> list[int]:
    """Output side length of each conv of a net that halves the map after every second conv."""
    return [max(1, input_size // 2 ** (i // 2)) for i in range(count)]


def _damage_curve(rng: np.random.Generator, b_max: int) -> np.ndarray:
    """Loss increase (nats) at 1..b_max bits: ``c·(4^−b − 4^−b_max)`` with per-bit noise, monotone, 0 at b_max."""
    bits = np.arange(1, b_max + 1, dtype=np.float64)
    scale = 4.0 * rng.lognormal(0.0, 0.7)
    curve = scale * (4.0**-bits - 4.0**-b_max) * rng.lognormal(0.0, 0.1, size=b_max)
    curve[-1] = 0.0
    return np.maximum.accumulate(curve[::-1])[::-1]  # fewer bits never hurt less


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
    hidden: int = 0,
    prune_steps: int = 0,
    interactions: bool = False,
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
        hidden: outputs of a prunable hidden linear layer between the flatten and the
            classifier (0 = none: the classifier reads the flattened map directly).
        prune_steps, interactions: add prune options with measured damage and CLADO-style
            interaction tables (:func:`with_synthetic_measurements`); 0 / False add nothing.

    Variables of the paper formulation: about ``max_prune_fraction · Σ channels`` pruning plus
    ``bit_levels`` per layer; e.g. ``width=16, depth=6`` gives about 10,900.
    """
    if not channels or any(int(c) < 1 for c in channels):
        raise ProblemError(f"channels must be a non-empty list of positive counts, got {list(channels)}")
    if width <= 0 or depth < 1 or classifier < 1 or in_channels < 1 or input_size < 1 or pooled_size < 1:
        raise ProblemError("width must be > 0 and depth, classifier, in_channels, input_size, pooled_size >= 1")
    if hidden < 0:
        raise ProblemError(f"hidden must be >= 0 (0 = no hidden linear layer), got {hidden}")
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ProblemError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    rng = np.random.default_rng(seed)
    base_sizes = _spatial_sizes(len(channels), input_size)
    conv_channels = [max(1, round(int(c) * width)) for c in channels for _ in range(depth)]
    sizes = [s for s in base_sizes for _ in range(depth)]

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
                quant_damage=_damage_curve(rng, b_max),
            )
        )
        previous = out
    features_per_channel = pooled_size**2
    if hidden:
        importance = (
            rng.lognormal(0.0, 0.3) * rng.lognormal(0.0, 0.4, size=hidden) / np.sqrt(previous * features_per_channel)
        )
        groups.append(
            ChannelGroup(
                name="hidden",
                importance=importance,
                max_pruned=min(int(max_prune_fraction * hidden), hidden - 1),
                members=("hidden",),
            )
        )
        layers.append(
            LayerSpec(
                name="hidden",
                kind="linear",
                out_channels=hidden,
                in_channels=previous,
                in_features_per_channel=features_per_channel,
                out_group=len(groups) - 1,
                in_group=len(groups) - 2,
                quant_damage=_damage_curve(rng, b_max),
            )
        )
        previous, features_per_channel = hidden, 1
    layers.append(
        LayerSpec(
            name="classifier",
            kind="linear",
            out_channels=classifier,
            in_channels=previous,
            in_features_per_channel=features_per_channel,
            out_group=None,
            in_group=len(groups) - 1,
            quant_damage=_damage_curve(rng, b_max),
        )
    )
    spec = CompressionSpec(
        model="synthetic-vgg", layers=tuple(layers), groups=tuple(groups), b_max=b_max, bit_levels=bit_levels
    )
    if prune_steps or interactions:
        spec = with_synthetic_measurements(spec, seed=seed, prune_steps=prune_steps, interactions=interactions)
    return spec


def synthetic_resnet_spec(
    seed: int = 0,
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 3,
    classifier: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    max_prune_fraction: float = 0.5,
    b_max: int = 8,
    bit_levels: int = 3,
    prune_steps: int = 0,
    interactions: bool = False,
) -> CompressionSpec:
    """A CIFAR-style ResNet spec (ResNet-20 by default) with residual channel groups.

    A 3×3 stem conv, then one stage per entry of ``widths`` with ``blocks`` basic blocks (two 3×3
    convs each; the first block of every later stage halves the map and has a 1×1 conv shortcut),
    global average pooling and a linear classifier. The channels a stage's residual adds tie
    together (the stem or the shortcut conv, and every block's second conv) form one shared
    group; each block's inner channels form their own. Statistics as in :func:`synthetic_spec`;
    ``prune_steps``/``interactions`` as there.
    """
    if not widths or any(int(w) < 1 for w in widths) or blocks < 1:
        raise ProblemError(f"widths must be positive channel counts and blocks >= 1, got {list(widths)}, {blocks}")
    if classifier < 1 or in_channels < 1 or input_size < 1:
        raise ProblemError("classifier, in_channels and input_size must be >= 1")
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ProblemError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    rng = np.random.default_rng(seed)
    layers: list[LayerSpec] = []
    groups: list[dict] = []  # name, size, fan_in, members (filled as layers are added)

    def new_group(name: str, size: int, fan_in: int) -> int:
        groups.append({"name": name, "size": size, "fan_in": fan_in, "members": []})
        return len(groups) - 1

    def conv(name: str, cout: int, cin: int, kernel: int, side: int, out_group: int, in_group: int | None) -> None:
        groups[out_group]["members"].append(name)
        layers.append(
            LayerSpec(
                name=name,
                kind="conv",
                out_channels=cout,
                in_channels=cin,
                kernel_area=kernel * kernel,
                out_positions=side * side,
                out_group=out_group,
                in_group=in_group,
                quant_damage=_damage_curve(rng, b_max),
            )
        )

    side = input_size
    residual = new_group("conv1", int(widths[0]), in_channels * 9)
    conv("conv1", int(widths[0]), in_channels, 3, side, residual, None)
    previous_width = int(widths[0])
    for s, width in enumerate(int(w) for w in widths):
        for b in range(blocks):
            prefix = f"layer{s + 1}.{b}"
            downsample = s > 0 and b == 0
            if downsample:
                side = max(1, (side + 1) // 2)
                residual_in = residual
                residual = new_group(f"{prefix}.shortcut.0", width, previous_width)
                conv(f"{prefix}.shortcut.0", width, previous_width, 1, side, residual, residual_in)
            else:
                residual_in = residual
            inner = new_group(f"{prefix}.conv1", width, previous_width * 9)
            conv(f"{prefix}.conv1", width, previous_width, 3, side, inner, residual_in)
            conv(f"{prefix}.conv2", width, width, 3, side, residual, inner)
            previous_width = width
    layers.append(
        LayerSpec(
            name="fc",
            kind="linear",
            out_channels=classifier,
            in_channels=previous_width,
            out_group=None,
            in_group=residual,
            quant_damage=_damage_curve(rng, b_max),
        )
    )
    channel_groups = []
    for group in groups:
        importance = rng.lognormal(0.0, 0.3) * rng.lognormal(0.0, 0.4, size=group["size"]) / np.sqrt(group["fan_in"])
        channel_groups.append(
            ChannelGroup(
                name=group["name"],
                importance=importance,
                max_pruned=min(int(max_prune_fraction * group["size"]), group["size"] - 1),
                members=tuple(group["members"]),
            )
        )
    spec = CompressionSpec(
        model="synthetic-resnet",
        layers=tuple(layers),
        groups=tuple(channel_groups),
        b_max=b_max,
        bit_levels=bit_levels,
    )
    if prune_steps or interactions:
        spec = with_synthetic_measurements(spec, seed=seed, prune_steps=prune_steps, interactions=interactions)
    return spec


# Random stream of the measurements, apart from the base spec's (same seed, different stream).
_MEASUREMENT_STREAM = 0x5EED
_GRAM_STREAM = 0x6A3D  # the filter Gram matrix's random stream
# Median correlation of the cross term of two neighbouring choices, and the share of negative ones.
_NEIGHBOUR_CORRELATION = 0.3
_NEGATIVE_SHARE = 0.2


def _prune_curve(rng: np.random.Generator, group: ChannelGroup, options: Sequence[int]) -> np.ndarray:
    """Loss increase (nats) of pruning each option's number of least important channels."""
    ordered = group.importance[group.prune_order()]
    total = float(ordered.sum()) or 1.0
    removed = np.array([float(ordered[:k].sum()) / total for k in options])
    scale = 2.0 * rng.lognormal(0.0, 0.6)
    curve = scale * removed**1.5 * rng.lognormal(0.0, 0.1, size=len(options))
    curve[0] = 0.0
    return np.maximum.accumulate(curve)  # pruning more never hurts less


def with_synthetic_filter_gram(spec: CompressionSpec, seed: int = 0, samples: int = 64) -> CompressionSpec:
    """``spec`` with a synthetic filter Gram matrix over every channel of every group (module docstring).

    Args:
        spec: any spec with channel groups.
        seed: random seed (a stream apart from the base spec's and the measurements').
        samples: N, the calibration samples the contributions are drawn for (>= 1).
    """
    if samples < 1:
        raise ProblemError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng([seed, _GRAM_STREAM])
    columns = []
    for group in spec.groups:
        factors = max(1, group.size // 4)
        loading = rng.normal(size=(factors, group.size)) * (rng.random((factors, group.size)) < 0.5)
        own = rng.normal(size=(samples, group.size))
        shared = rng.normal(size=(samples, factors)) @ loading
        columns.append((own + 2 * shared) * group.importance / np.sqrt(1 + 4 * (loading**2).sum(axis=0)))
    contributions = np.concatenate(columns, axis=1) if columns else np.zeros((samples, 0))
    return replace(spec, filter_gram=contributions.T @ contributions / samples)


def with_synthetic_measurements(
    spec: CompressionSpec, seed: int = 0, *, prune_steps: int = 4, interactions: bool = True
) -> CompressionSpec:
    """``spec`` with synthetic prune options, prune damage and interaction tables (module docstring).

    Args:
        spec: any spec; its layers need ``quant_damage`` when ``interactions`` is set.
        seed: random seed (a stream apart from the base spec's).
        prune_steps: prune options per group besides 0: ``round(i/steps · max_pruned)``,
            i = 1..steps, duplicates dropped; 0 leaves the groups without options.
        interactions: add cross terms between neighbouring choices.
    """
    if prune_steps < 0:
        raise ProblemError(f"prune_steps must be >= 0, got {prune_steps}")
    rng = np.random.default_rng([seed, _MEASUREMENT_STREAM])
    groups = list(spec.groups)
    if prune_steps:
        for g, group in enumerate(groups):
            options = sorted({round(i * group.max_pruned / prune_steps) for i in range(prune_steps + 1)})
            groups[g] = replace(group, prune_options=tuple(options), prune_damage=_prune_curve(rng, group, options))
    terms: list[Interaction] = []
    if interactions:

        def damage(family: str) -> np.ndarray:
            kind, name = family.split(":", 1)
            if kind == "bits":
                return np.maximum(spec.layers[spec.layer_index(name)].quant_damage, 0.0)
            return groups[spec.group_index(name)].prune_damage

        def correlation(steps: int) -> float:
            rho = _NEIGHBOUR_CORRELATION * rng.lognormal(0.0, 0.5) / 2 ** (steps - 1)
            return -rho if rng.random() < _NEGATIVE_SHARE else rho

        pairs: list[tuple[str, str, int]] = []
        for n, layer in enumerate(spec.layers):
            for step in (1, 2):
                if n + step < len(spec.layers):
                    pairs.append((f"bits:{layer.name}", f"bits:{spec.layers[n + step].name}", step))
            linked = [g for g in (layer.out_group, layer.in_group) if g is not None]
            for g in dict.fromkeys(linked):
                pairs.append((f"bits:{layer.name}", f"prune:{groups[g].name}", 1))
            if len(set(linked)) == 2:
                pairs.append((f"prune:{groups[layer.in_group].name}", f"prune:{groups[layer.out_group].name}", 1))
        seen: set[tuple[str, str]] = set()
        for first, second, steps in pairs:
            if (first, second) in seen or (second, first) in seen:
                continue
            seen.add((first, second))
            a, b = damage(first), damage(second)
            if a.size < 2 or b.size < 2:  # a family without choices has no cross term
                continue
            terms.append(Interaction(first, second, correlation(steps) * np.sqrt(np.outer(a, b))))
    return replace(spec, groups=tuple(groups), interactions=spec.interactions + tuple(terms))

"""The solver-agnostic description of a compression problem (numpy only, no torch).

The analysis layer fills a :class:`CompressionSpec` from a real model; every formulation in this
package turns it into a ``dimod.BinaryQuadraticModel``, and a solver's sample is decoded back into a
:class:`~qubocompress.problem.plan.Plan`. A spec is plain data: it can be written to JSON, shared,
and turned into the same QUBO anywhere.

Size model (the real one, used to check every plan): a layer's stored weights are

    kept_out * kernel_area * (1 if depthwise else kept_in // groups * in_features_per_channel)

where ``kept_out`` drops the pruned channels of the layer's output group and ``kept_in`` the pruned
channels of its input groups (pruning layer n removes input channels of the layers it feeds; a
layer after a concatenation reads several groups).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qubocompress.errors import ProblemError

FP32_BITS = 32


def prune_order(importance: np.ndarray, blocks: int = 1) -> np.ndarray:
    """Channel indices from least to most important (stable: ties by index), round-robin over
    ``blocks`` equal contiguous blocks: entries ``r·blocks .. (r+1)·blocks − 1`` are the (r+1)-th
    least important channel of each block, so every prefix of a multiple of ``blocks`` channels
    takes as many from each block (for ``blocks=1``, the plain ascending order)."""
    ranks = np.argsort(np.asarray(importance).reshape(blocks, -1), axis=1, kind="stable")
    return (ranks + ranks.shape[1] * np.arange(blocks)[:, None]).T.ravel()


def block_counts(channels: Iterable[int], size: int, blocks: int) -> np.ndarray:
    """How many of ``channels`` lie in each of the ``blocks`` equal contiguous blocks of ``size``."""
    return np.bincount(np.asarray(list(channels), dtype=np.int64) // (size // blocks), minlength=blocks)


def uneven_blocks(name: str, channels: Iterable[int], size: int, blocks: int) -> str | None:
    """Why pruning ``channels`` of group ``name`` (``size`` channels in ``blocks``) is not allowed:
    its blocks would lose different numbers; None when they lose as many."""
    counts = block_counts(channels, size, blocks).tolist() if blocks > 1 else [0]
    if len(set(counts)) == 1:
        return None
    return (
        f"plan prunes {counts} channels from the {blocks} blocks of group {name!r}; "
        "a grouped convolution must lose as many from each of its groups"
    )


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that are pruned together: one pruning decision per channel index.

    For a plain conv net a group is one layer's filters; where a residual add or a depthwise conv
    ties channels of several layers, they share one group. Where a grouped convolution reads or
    writes them, its ``g`` groups split them into ``blocks`` equal contiguous blocks (``g``, or the
    lcm of every such conv's ``g``), and every block must lose as many channels as the others, so
    that each of the conv's groups keeps the same number: counts are then multiples of ``blocks``
    and :meth:`prune_order` takes the blocks in turn.

    Attributes:
        name: label of the group (the first producing layer's module name).
        importance: shape ``(size,)``, >= 0, importance of each channel (higher = keep).
        max_pruned: how many of the lowest-importance channels may be pruned (< size, so at
            least one channel always survives). Only those get a pruning variable.
        members: module names whose outputs carry these channels.
        prune_options: for option-based formulations, the numbers of pruned channels on offer
            (ascending, starting at 0, each <= max_pruned; empty when not measured).
        prune_damage: same length as ``prune_options``: the measured increase of the calibration
            loss (nats) when that many of the least important channels are pruned and the rest
            of the model is untouched.
        blocks: equal contiguous blocks that must lose the same number of channels (1: none);
            divides the size, and ``max_pruned`` and every prune option are multiples of it.
    """

    name: str
    importance: np.ndarray
    max_pruned: int
    members: tuple[str, ...] = ()
    prune_options: tuple[int, ...] = ()
    prune_damage: np.ndarray = field(default_factory=lambda: np.zeros(0))
    blocks: int = 1

    def __post_init__(self) -> None:
        imp = np.asarray(self.importance, dtype=np.float64)
        object.__setattr__(self, "importance", imp)
        object.__setattr__(self, "prune_options", tuple(int(k) for k in self.prune_options))
        object.__setattr__(self, "prune_damage", np.asarray(self.prune_damage, dtype=np.float64))
        if imp.ndim != 1 or imp.size == 0:
            raise ProblemError(f"channel group {self.name!r}: importance must be a non-empty vector")
        if not 0 <= self.max_pruned < imp.size:
            raise ProblemError(
                f"channel group {self.name!r}: max_pruned={self.max_pruned} must be in [0, {imp.size - 1}]"
            )
        options = self.prune_options
        if options and (
            options[0] != 0 or any(b <= a for a, b in zip(options, options[1:])) or options[-1] > self.max_pruned
        ):
            raise ProblemError(
                f"channel group {self.name!r}: prune options {list(options)} must rise from 0 to at most "
                f"{self.max_pruned}"
            )
        if self.prune_damage.size not in (0, len(options)):
            raise ProblemError(f"channel group {self.name!r}: prune_damage needs one entry per prune option")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, numbers.Integral) or self.blocks < 1:
            raise ProblemError(f"channel group {self.name!r}: blocks must be an integer >= 1, got {self.blocks!r}")
        object.__setattr__(self, "blocks", int(self.blocks))
        if imp.size % self.blocks or any(k % self.blocks for k in (self.max_pruned, *options)):
            raise ProblemError(
                f"channel group {self.name!r}: its {imp.size} channels, max_pruned={self.max_pruned} and prune "
                f"options {list(options)} must all be multiples of its blocks={self.blocks} (a grouped convolution "
                "loses as many channels from each of its groups)"
            )

    @property
    def size(self) -> int:
        """Number of channels in the group."""
        return int(self.importance.size)

    def prune_order(self) -> np.ndarray:
        """Channel indices from least to most important (stable, so ties break by index), the
        blocks taken in turn (:func:`prune_order`): the first k, k a multiple of ``blocks``, are
        the k/blocks least important of each block."""
        return prune_order(self.importance, self.blocks)

    def candidates(self) -> np.ndarray:
        """The ``max_pruned`` least important channel indices: the only ones that may be pruned."""
        return self.prune_order()[: self.max_pruned]

    def units(self) -> np.ndarray:
        """The candidates as pruning units, shape ``(max_pruned // blocks, blocks)``: row r holds
        the channels pruned together at rank r (one per block; one channel when ``blocks=1``)."""
        return self.candidates().reshape(-1, self.blocks)

    def round_count(self, count: float) -> int:
        """``count`` rounded (Python's ``round``) to a multiple of ``blocks``, at most ``max_pruned``."""
        return min(self.blocks * int(round(count / self.blocks)), self.max_pruned)


@dataclass(frozen=True)
class LayerSpec:
    """One compressible layer (Conv2d or Linear) with everything the size and damage models need.

    Attributes:
        name: fully qualified module name in the model.
        kind: ``"conv"`` or ``"linear"``.
        out_channels, in_channels: the layer's channel counts (``in`` before group division).
        groups: convolution groups (1 for linear).
        kernel_area: kh*kw (1 for linear).
        in_features_per_channel: input features per input channel (1 for conv; H*W for a linear
            fed by a flatten of a C×H×W map).
        out_positions: output positions per sample (H_out*W_out for conv, 1 for linear), so that
            MACs = weights * out_positions.
        out_group: index into ``CompressionSpec.groups`` pruning this layer's outputs, or None
            when its outputs are not prunable (the classifier).
        in_group: index of the group whose pruning removes this layer's input channels, or None.
        extra_in_groups: further groups whose channels its input also holds (after a
            concatenation), each pruned channel of them one input channel less.
        quant_damage: shape ``(b_max,)``; entry ``b-1`` is the measured increase of the
            calibration loss (nats) when only this layer is quantized to ``b`` bits.
    """

    name: str
    kind: Literal["conv", "linear"]
    out_channels: int
    in_channels: int
    groups: int = 1
    kernel_area: int = 1
    in_features_per_channel: int = 1
    out_positions: int = 1
    out_group: int | None = None
    in_group: int | None = None
    extra_in_groups: tuple[int, ...] = ()
    quant_damage: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "quant_damage", np.asarray(self.quant_damage, dtype=np.float64))
        object.__setattr__(self, "extra_in_groups", tuple(int(g) for g in self.extra_in_groups))
        if self.extra_in_groups and self.in_group is None:
            raise ProblemError(f"layer {self.name!r}: extra_in_groups need an in_group")

    @property
    def in_groups(self) -> tuple[int, ...]:
        """Every group whose pruned channels this layer's input loses (``in_group`` first)."""
        return (() if self.in_group is None else (self.in_group,)) + self.extra_in_groups

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv (one input channel per output channel, tied to it)."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def num_weights(self, kept_out: int | None = None, kept_in: int | None = None) -> int:
        """Stored weights with ``kept_out`` output and ``kept_in`` input channels (default: all)."""
        out = self.out_channels if kept_out is None else kept_out
        if self.depthwise:
            return out * self.kernel_area
        cin = self.in_channels if kept_in is None else kept_in
        return out * (cin // self.groups) * self.in_features_per_channel * self.kernel_area

    def weights_per_filter(self) -> int:
        """Weights of one output filter with every input channel kept (the paper's N[n,i])."""
        return self.num_weights(kept_out=1)


@dataclass(frozen=True)
class Interaction:
    """A measured cross term of the damage between two choices (CLADO-style, arXiv 2307.05657).

    ``first`` and ``second`` name a choice family each: ``"bits:<layer>"`` (rows/columns index
    bit-widths 1..b_max) or ``"prune:<group>"`` (index the group's ``prune_options``).
    ``table[i, j]`` = loss(both choices) − loss(first alone) − loss(second alone) + loss(fp32), in
    nats: what the additive (per-layer) model misses when both are applied together.
    """

    first: str
    second: str
    table: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", np.asarray(self.table, dtype=np.float64))
        if self.table.ndim != 2:
            raise ProblemError(f"interaction {self.first} x {self.second}: table must be 2-D")
        for family in (self.first, self.second):
            if family.split(":", 1)[0] not in ("bits", "prune") or ":" not in family:
                raise ProblemError(f"interaction family {family!r} must be 'bits:<layer>' or 'prune:<group>'")


@dataclass(frozen=True)
class FileLayout:
    """What the model file holds besides each layer's packed weight codes (``--metric file``).

    Attributes:
        filter_bytes: per layer (spec order), bytes stored for each kept output filter besides its
            codes: its float32 scale, its bias, and the BatchNorm parameters and statistics of its
            channel group (counted on one producer of each group).
        fixed_bytes: every other byte of the file, at most: the header with the longest plan, the
            tensors of layers and norms that are never pruned, BatchNorm's batch counters.
        fp32_bytes: the uncompressed model's ``torch.save(state_dict)`` size, what the ratio is of.
    """

    filter_bytes: tuple[int, ...]
    fixed_bytes: int
    fp32_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"filter_bytes": list(self.filter_bytes), "fixed_bytes": self.fixed_bytes, "fp32_bytes": self.fp32_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileLayout:
        return cls(tuple(int(b) for b in data["filter_bytes"]), int(data["fixed_bytes"]), int(data["fp32_bytes"]))


@dataclass(frozen=True)
class CompressionSpec:
    """Everything a formulation needs about one model, with no reference to torch.

    Attributes:
        model: a label for the model (e.g. ``"vgg"``).
        layers: the compressible layers in forward order.
        groups: the channel groups that pruning variables refer to.
        b_max: bits of the highest precision on offer (the paper's 8).
        bit_levels: K, the number of bit-removal variables per layer; bits range over
            ``b_max - (2**K - 1) .. b_max`` (K=3: 1..8 bits).
        activation_bits: bits of the activations used for BOPs (activations are not quantized,
            so 32 is the honest default).
        interactions: measured pairwise damage terms (may be empty).
        file_layout: the model file's bytes beyond the weight codes (``--metric file``), or None.
        filter_gram: the empirical Fisher (Gram) matrix of the channels' loss contributions,
            ``G = (1/N) Uᵀ U`` with ``U[s, c] = Σ_sites a·∂L_s/∂a`` of channel c on calibration
            sample s (nats; ``½ Σ_{c,c'∈S} G[c, c']`` estimates the loss increase of pruning the
            set S), over every channel of every group — groups in order, channels in index order —
            or None (the ``filters`` formulation needs it).
    """

    model: str
    layers: tuple[LayerSpec, ...]
    groups: tuple[ChannelGroup, ...]
    b_max: int = 8
    bit_levels: int = 3
    activation_bits: int = FP32_BITS
    interactions: tuple[Interaction, ...] = ()
    file_layout: FileLayout | None = None
    filter_gram: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ProblemError(f"model {self.model!r} has no compressible layer (Conv2d or Linear)")
        if self.min_bits < 1:
            raise ProblemError(
                f"bit_levels={self.bit_levels} removes up to {2**self.bit_levels - 1} bits from "
                f"b_max={self.b_max}: the lowest bit-width would be {self.min_bits} (< 1)"
            )
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ProblemError("layer names in a spec must be unique")
        if self.file_layout is not None and len(self.file_layout.filter_bytes) != len(self.layers):
            raise ProblemError("the file layout must give filter_bytes for every layer of the spec")
        for layer in self.layers:
            for g in (layer.out_group, *layer.in_groups):
                if g is not None and not 0 <= g < len(self.groups):
                    raise ProblemError(f"layer {layer.name!r} refers to unknown channel group {g}")
            if layer.quant_damage.size not in (0, self.b_max):
                raise ProblemError(
                    f"layer {layer.name!r}: quant_damage must have {self.b_max} entries (1..{self.b_max} bits)"
                )
        if self.filter_gram is not None:
            self._check_filter_gram()
        for term in self.interactions:
            shape = tuple(self._family_size(f) for f in (term.first, term.second))
            if term.table.shape != shape:
                raise ProblemError(
                    f"interaction {term.first} x {term.second}: table shape {term.table.shape} should be {shape}"
                )

    def _check_filter_gram(self) -> None:
        """``filter_gram`` as a float64 array: square over all group channels, finite, symmetric."""
        gram = np.asarray(self.filter_gram, dtype=np.float64)
        object.__setattr__(self, "filter_gram", gram)
        channels = sum(group.size for group in self.groups)
        if gram.shape != (channels, channels):
            raise ProblemError(
                f"filter_gram must be {channels}x{channels} (every channel of every group), got shape {gram.shape}"
            )
        if not np.all(np.isfinite(gram)):
            raise ProblemError("filter_gram contains NaN or infinite values")
        scale = float(np.abs(gram).max(initial=0.0))
        if not np.allclose(gram, gram.T, rtol=0.0, atol=1e-9 * scale):
            raise ProblemError("filter_gram must be symmetric (a Gram matrix)")

    def _family_size(self, family: str) -> int:
        """Number of choices of an interaction family (``bits:<layer>`` or ``prune:<group>``)."""
        kind, name = family.split(":", 1)
        if kind == "bits":
            self.layer_index(name)
            return self.b_max
        return len(self.groups[self.group_index(name)].prune_options)

    @property
    def min_bits(self) -> int:
        """Lowest bit-width reachable with ``bit_levels`` removal variables."""
        return self.b_max - (2**self.bit_levels - 1)

    def layer_index(self, name: str) -> int:
        """Position of the layer called ``name``."""
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise ProblemError(f"no layer named {name!r} in spec of {self.model!r}")

    def group_index(self, name: str) -> int:
        """Position of the channel group called ``name``."""
        for i, group in enumerate(self.groups):
            if group.name == name:
                return i
        raise ProblemError(f"no channel group named {name!r} in spec of {self.model!r}")

    def fp32_weight_bits(self) -> int:
        """Weight storage of the uncompressed model, in bits (32 per weight)."""
        return FP32_BITS * sum(layer.num_weights() for layer in self.layers)

    def fp32_macs(self) -> int:
        """Multiply-accumulates per sample of the compressible layers, uncompressed."""
        return sum(layer.num_weights() * layer.out_positions for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays as lists)."""
        return {
            "model": self.model,
            "b_max": self.b_max,
            "bit_levels": self.bit_levels,
            "activation_bits": self.activation_bits,
            "groups": [
                {
                    "name": g.name,
                    "importance": g.importance.tolist(),
                    "max_pruned": g.max_pruned,
                    "members": list(g.members),
                    "prune_options": list(g.prune_options),
                    "prune_damage": g.prune_damage.tolist(),
                    "blocks": g.blocks,
                }
                for g in self.groups
            ],
            "interactions": [
                {"first": t.first, "second": t.second, "table": t.table.tolist()} for t in self.interactions
            ],
            "file_layout": None if self.file_layout is None else self.file_layout.to_dict(),
            "filter_gram": None if self.filter_gram is None else self.filter_gram.tolist(),
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "out_channels": layer.out_channels,
                    "in_channels": layer.in_channels,
                    "groups": layer.groups,
                    "kernel_area": layer.kernel_area,
                    "in_features_per_channel": layer.in_features_per_channel,
                    "out_positions": layer.out_positions,
                    "out_group": layer.out_group,
                    "in_group": layer.in_group,
                    "extra_in_groups": list(layer.extra_in_groups),
                    "quant_damage": layer.quant_damage.tolist(),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionSpec:
        """Inverse of :meth:`to_dict`; a malformed dict is a :class:`ProblemError`."""
        try:
            groups = tuple(
                ChannelGroup(
                    name=g["name"],
                    importance=np.asarray(g["importance"], dtype=np.float64),
                    max_pruned=int(g["max_pruned"]),
                    members=tuple(g.get("members", ())),
                    prune_options=tuple(g.get("prune_options", ())),
                    prune_damage=np.asarray(g.get("prune_damage", []), dtype=np.float64),
                    blocks=g.get("blocks", 1),
                )
                for g in data["groups"]
            )
            interactions = tuple(
                Interaction(t["first"], t["second"], np.asarray(t["table"], dtype=np.float64))
                for t in data.get("interactions", [])
            )
            layers = tuple(
                LayerSpec(**{**layer, "quant_damage": np.asarray(layer["quant_damage"], dtype=np.float64)})
                for layer in data["layers"]
            )
            return cls(
                model=data["model"],
                layers=layers,
                groups=groups,
                b_max=int(data["b_max"]),
                bit_levels=int(data["bit_levels"]),
                activation_bits=int(data.get("activation_bits", FP32_BITS)),
                interactions=interactions,
                file_layout=None if data.get("file_layout") is None else FileLayout.from_dict(data["file_layout"]),
                filter_gram=None if data.get("filter_gram") is None else np.asarray(data["filter_gram"], dtype=float),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProblemError(f"malformed compression spec: {exc!r}") from exc

    def to_json(self) -> str:
        """The spec as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> CompressionSpec:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProblemError(f"compression spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

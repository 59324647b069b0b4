"""A compression plan (which channels to prune, how many bits per layer) and its true costs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qubocompress.errors import ProblemError
from qubocompress.problem.spec import CompressionSpec, LayerSpec, uneven_blocks


@dataclass(frozen=True)
class Plan:
    """What to do to a model.

    Attributes:
        pruned: channel group name -> sorted tuple of pruned channel indices.
        bits: layer name -> weight bit-width.
    """

    pruned: Mapping[str, tuple[int, ...]]
    bits: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "pruned", {name: tuple(sorted(int(i) for i in idx)) for name, idx in self.pruned.items()}
        )
        object.__setattr__(self, "bits", {name: int(b) for name, b in self.bits.items()})

    def kept_channels(self, spec: CompressionSpec, group: int | None, total: int) -> int:
        """Channels that survive in ``group`` (``total`` when the group is None)."""
        if group is None:
            return total
        return total - len(self.pruned.get(spec.groups[group].name, ()))

    def kept_inputs(self, spec: CompressionSpec, layer: LayerSpec) -> int:
        """Input channels of ``layer`` that survive: ``in_channels`` less the pruned channels of its input groups."""
        return layer.in_channels - sum(len(self.pruned.get(spec.groups[g].name, ())) for g in layer.in_groups)

    def layer_weights(self, spec: CompressionSpec) -> dict[str, int]:
        """Stored weights per layer after pruning, input channels removed upstream included."""
        return {
            layer.name: layer.num_weights(
                kept_out=self.kept_channels(spec, layer.out_group, layer.out_channels),
                kept_in=self.kept_inputs(spec, layer),
            )
            for layer in spec.layers
        }

    def weight_bits(self, spec: CompressionSpec) -> int:
        """Bits of weight storage of the compressed model (weights × planned bit-width)."""
        weights = self.layer_weights(spec)
        return sum(weights[layer.name] * self.bits[layer.name] for layer in spec.layers)

    def compression_ratio(self, spec: CompressionSpec) -> float:
        """fp32 weight bits divided by the plan's weight bits (16.0 = 16× smaller weights)."""
        return spec.fp32_weight_bits() / max(self.weight_bits(spec), 1)

    def bops(self, spec: CompressionSpec) -> int:
        """Bit operations per sample: Σ MACs × weight bits × activation bits."""
        weights = self.layer_weights(spec)
        return sum(
            weights[layer.name] * layer.out_positions * self.bits[layer.name] * spec.activation_bits
            for layer in spec.layers
        )

    def validate(self, spec: CompressionSpec) -> None:
        """Raise :class:`ProblemError` unless the plan names every layer and legal channels."""
        layer_names = {layer.name for layer in spec.layers}
        if set(self.bits) != layer_names:
            missing = sorted(layer_names - set(self.bits))
            extra = sorted(set(self.bits) - layer_names)
            raise ProblemError(f"plan bits do not match the model's layers (missing {missing}, unknown {extra})")
        for name, b in self.bits.items():
            if not spec.min_bits <= b <= spec.b_max:
                raise ProblemError(f"plan gives layer {name!r} {b} bits; allowed {spec.min_bits}..{spec.b_max}")
        for name, idx in self.pruned.items():
            group = spec.groups[spec.group_index(name)]
            if len(set(idx)) != len(idx) or any(not 0 <= i < group.size for i in idx):
                raise ProblemError(f"plan prunes invalid channels of group {name!r}: {list(idx)}")
            if len(idx) >= group.size:
                raise ProblemError(f"plan prunes every channel of group {name!r}")
            uneven = uneven_blocks(name, idx, group.size, group.blocks)
            if uneven is not None:
                raise ProblemError(uneven)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"bits": dict(self.bits), "pruned": {k: list(v) for k, v in self.pruned.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(pruned={k: tuple(v) for k, v in data["pruned"].items()}, bits=dict(data["bits"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ProblemError(f"malformed plan: {exc!r}") from exc

    def to_json(self) -> str:
        """The plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


def uniform_plan(spec: CompressionSpec, bits: int, prune_ratio: float) -> Plan:
    """One bit-width for every layer and the same L1-style prune ratio in every group.

    Each group prunes ``round(prune_ratio * size)`` of its least important channels (rounded to
    a multiple of its blocks), capped at the group's ``max_pruned``.
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ProblemError(f"prune ratio must be in [0, 1), got {prune_ratio}")
    pruned = {}
    for group in spec.groups:
        count = group.round_count(prune_ratio * group.size)
        pruned[group.name] = tuple(int(i) for i in group.prune_order()[:count])
    return Plan(pruned=pruned, bits={layer.name: bits for layer in spec.layers})

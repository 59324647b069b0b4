"""The paper's formulation, ``H = L_p + β·L_q − γ·R``, as a dimod BQM with a certified optimum.

Variables (all BINARY):

* ``p[<group>:<channel>]`` = 1 prunes that output channel of a channel group. Only the group's
  :meth:`~qubocompress.problem.spec.ChannelGroup.candidates` (its ``max_pruned`` least important
  channels) get one; every other channel is always kept. In a group split into ``blocks`` (a
  grouped convolution's, :attr:`~qubocompress.problem.spec.ChannelGroup.blocks`) one variable
  prunes a unit, the r-th least important channel of every block (labelled by its first channel,
  :meth:`~qubocompress.problem.spec.ChannelGroup.units`), so that each block loses as many; ``a``
  below is then the unit's summed importance and its reward counts ``blocks`` channels.
* ``q[<layer>:<k>]``, k = 0..K−1 (K = ``spec.bit_levels``): bits removed from the layer's weights,
  ``d[n] = Σ_k 2^k q[n,k]``, so the layer keeps ``b[n] = b_max − d[n]`` bits.

Energy (dimensionless; ``L_p`` in importance², ``L_q`` in nats of calibration loss):

* ``L_p = Σ_g (Σ_i a[g,i] p[g,i])²`` with ``a`` the group's channel importance.
* ``L_q = Σ_n s[n] d[n]²`` with ``s[n]`` the layer's quantization sensitivity
  (:func:`quant_sensitivity`, a least-squares fit to its measured loss increase).
* ``R = 1 − Σ_n Σ_i N[n] (1 − p[g(n),i]) (b_max − d[n]) / M0``: the share of weight bits removed,
  where ``i`` runs over layer n's output channels, ``N[n]`` is the weights of one filter with every
  input channel kept and ``M0 = b_max Σ_n out[n] N[n]``. As in the paper, pruning a group does not
  shrink the input side of the layers it feeds here; the true size (:meth:`Plan.weight_bits`)
  counts it, and :func:`~qubocompress.problem.target.calibrate_gamma` checks plans against it.

A group is coupled (through the ``p·q`` products of ``R``) only to its member layers' bit
variables, so ``H`` splits into independent components — a group with its member layers, or a
layer whose outputs are not prunable (no output group, or one without candidates: ``max_pruned``
0) — and :meth:`PaperFormulation.exact` certifies the optimum by enumerating each component's bit
choices and, for each, the best number of pruned channels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import dimod
import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.base import Formulation, Reference, Target
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec, LayerSpec

# Largest number of joint bit choices exact() enumerates for one component.
MAX_EXACT_COMBINATIONS = 2**16


def check_certifiable(group: str, members: int, bit_levels: int, prunable: bool = True) -> None:
    """A ProblemError when the exact enumeration cannot certify a channel group tying ``members``
    layers with ``bit_levels`` bit variables each (more than MAX_EXACT_COMBINATIONS joint choices).
    A group that is not ``prunable`` (``max_pruned`` 0) ties nothing: its layers are enumerated alone."""
    combos = (2**bit_levels) ** (members if prunable else min(members, 1))
    if combos > MAX_EXACT_COMBINATIONS:
        raise ProblemError(
            f"channel group {group!r} ties {members} layers: the paper formulation's certified optimum needs "
            f"{combos} joint bit choices (limit {MAX_EXACT_COMBINATIONS}); use --formulation budget"
        )


@dataclass(frozen=True)
class Variable:
    """What one BQM variable means.

    Attributes:
        kind: ``"prune"`` (a channel of a group) or ``"bit"`` (a bit-removal bit of a layer).
        owner: index of the group (``"prune"``) or layer (``"bit"``) in the spec.
        position: the channel index (``"prune"``; a unit's first channel) or the bit's power k, worth
            ``2**k`` bits (``"bit"``).
    """

    kind: Literal["prune", "bit"]
    owner: int
    position: int


def prune_label(group_name: str, channel: int) -> str:
    """BQM label of the variable that prunes ``channel`` of a group."""
    return f"p[{group_name}:{channel}]"


def bit_label(layer_name: str, k: int) -> str:
    """BQM label of bit-removal variable ``k`` (worth ``2**k`` bits) of a layer."""
    return f"q[{layer_name}:{k}]"


def quant_sensitivity(layer: LayerSpec, spec: CompressionSpec) -> float:
    """Quantization sensitivity ``s`` (nats per bit²) of one layer: ``s·d²`` ≈ damage of removing d bits.

    Least-squares fit over the reachable removals d = 1..2^K−1 of ``s·d²`` to the measured damage
    ``Ω(d) = max(quant_damage[b_max − d − 1], 0)`` (negative measurements are noise: a coarser
    grid cannot help the loss on average). Closed form ``s = Σ Ω(d) d² / Σ d⁴`` (≥ 0).
    """
    damage = layer.quant_damage
    if damage.size == 0:
        raise ProblemError(
            f"layer {layer.name!r} has no measured quantization damage; the paper formulation needs "
            "quant_damage for every layer (run the sensitivity analysis first)"
        )
    if not np.all(np.isfinite(damage)):
        raise ProblemError(f"layer {layer.name!r}: quant_damage contains NaN or infinite values")
    removed = np.arange(1, 2**spec.bit_levels, dtype=np.float64)
    omega = np.maximum(damage[spec.b_max - removed.astype(int) - 1], 0.0)
    return float(np.sum(omega * removed**2) / np.sum(removed**4))


def balanced_beta(spec: CompressionSpec) -> float:
    """The default β: the largest possible ``L_p`` equals the largest possible ``β·L_q``.

    ``β = Σ_g (Σ_{i∈candidates} a[g,i])² / Σ_n s[n] (2^K − 1)²``; 1.0 when no layer is sensitive
    (or the damages are so small, e.g. subnormal, that the ratio overflows).
    """
    largest_lp = sum(float(np.sum(g.importance[g.candidates()])) ** 2 for g in spec.groups)
    largest_lq = sum(quant_sensitivity(layer, spec) for layer in spec.layers) * (2**spec.bit_levels - 1) ** 2
    with np.errstate(over="ignore", divide="ignore"):
        beta = np.float64(largest_lp) / np.float64(largest_lq) if largest_lq > 0 else 1.0
    return float(beta) if np.isfinite(beta) else 1.0


class PaperFormulation(Formulation):
    """The paper's ``H = L_p + β·L_q − γ·R`` for one spec (see the module docstring).

    Args:
        spec: the compression problem.
        beta: weight of the quantization damage; None = :func:`balanced_beta`.
        gamma: weight of the compression reward ``R`` (≥ 0); larger compresses more.
    """

    name = "paper"

    def __init__(self, spec: CompressionSpec, beta: float | None = None, gamma: float = 1.0) -> None:
        self.spec = spec
        self.beta = balanced_beta(spec) if beta is None else float(beta)
        self.gamma = float(gamma)
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ProblemError(f"beta must be a finite number >= 0, got {beta}")
        if not (np.isfinite(self.gamma) and self.gamma >= 0):
            raise ProblemError(f"gamma must be a finite number >= 0, got {gamma}")
        names = [g.name for g in spec.groups]
        if len(set(names)) != len(names):
            raise ProblemError(f"channel group names in the spec of {spec.model!r} must be unique")
        for group in spec.groups:
            if not np.all(np.isfinite(group.importance)) or np.any(group.importance < 0):
                raise ProblemError(f"channel group {group.name!r}: importance must be finite and >= 0")

        self.num_bit_levels = spec.bit_levels
        self.sensitivity = np.array([quant_sensitivity(layer, spec) for layer in spec.layers])
        self._filter_weights = np.array([layer.weights_per_filter() for layer in spec.layers], dtype=np.float64)
        self._out_channels = np.array([layer.out_channels for layer in spec.layers], dtype=np.float64)
        self._full_bits = spec.b_max * float(np.sum(self._out_channels * self._filter_weights))
        if self._full_bits <= 0:
            raise ProblemError(f"the layers of {spec.model!r} hold no weights")
        # w[n]: weight of one kept channel-bit of layer n in γ·R.
        self._reward_weight = self.gamma * self._filter_weights / self._full_bits
        self._units = [group.units() for group in spec.groups]
        self._blocks = [group.blocks for group in spec.groups]
        self._candidate_importance = [group.importance[u].sum(axis=1) for group, u in zip(spec.groups, self._units)]
        self._members = [
            [n for n, layer in enumerate(spec.layers) if layer.out_group == g] for g in range(len(spec.groups))
        ]

        self.variables: dict[str, Variable] = {}
        self._prune_labels: list[list[str]] = []
        for g, group in enumerate(spec.groups):
            labels = [prune_label(group.name, int(unit[0])) for unit in self._units[g]]
            self._prune_labels.append(labels)
            self.variables.update({lab: Variable("prune", g, int(u[0])) for lab, u in zip(labels, self._units[g])})
        self._bit_labels: list[list[str]] = []
        for n, layer in enumerate(spec.layers):
            labels = [bit_label(layer.name, k) for k in range(self.num_bit_levels)]
            self._bit_labels.append(labels)
            self.variables.update({lab: Variable("bit", n, k) for k, lab in enumerate(labels)})

    @property
    def num_variables(self) -> int:
        """Number of BQM variables."""
        return len(self.variables)

    @property
    def num_interactions(self) -> int:
        """Number of nonzero quadratic terms of the BQM."""
        return self.bqm.num_interactions

    @property
    def offset(self) -> float:
        """The constant of ``H``: ``−γ`` plus the constant part of ``γ·(1 − R)``."""
        return -self.gamma + float(np.sum(self._reward_weight * self._out_channels)) * self.spec.b_max

    @cached_property
    def bqm(self) -> dimod.BinaryQuadraticModel:
        """``H`` as a BINARY BQM; ``bqm.energy(encode(plan)) == energy(plan)``."""
        order = [lab for labels in self._prune_labels for lab in labels]
        order += [lab for labels in self._bit_labels for lab in labels]
        index = {lab: i for i, lab in enumerate(order)}
        linear = np.zeros(len(order))
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        biases: list[np.ndarray] = []

        def add(u: np.ndarray, v: np.ndarray, bias: np.ndarray) -> None:
            keep = bias != 0
            rows.append(u[keep])
            cols.append(v[keep])
            biases.append(bias[keep])

        b_max = self.spec.b_max
        powers = 2.0 ** np.arange(self.num_bit_levels)
        for g, labels in enumerate(self._prune_labels):
            if not labels:
                continue
            idx = np.array([index[lab] for lab in labels])
            a = self._candidate_importance[g]
            linear[idx] += a**2 - b_max * self._blocks[g] * sum(self._reward_weight[n] for n in self._members[g])
            i, j = np.triu_indices(len(labels), k=1)
            add(idx[i], idx[j], 2.0 * a[i] * a[j])
        for n, labels in enumerate(self._bit_labels):
            idx = np.array([index[lab] for lab in labels])
            w = self._reward_weight[n]
            linear[idx] += self.beta * self.sensitivity[n] * powers**2 - w * self._out_channels[n] * powers
            k, l = np.triu_indices(self.num_bit_levels, k=1)
            add(idx[k], idx[l], self.beta * self.sensitivity[n] * 2.0 * powers[k] * powers[l])
            g = self.spec.layers[n].out_group
            if g is not None and self._prune_labels[g]:
                p_idx = np.array([index[lab] for lab in self._prune_labels[g]])
                pp, kk = np.meshgrid(p_idx, np.arange(self.num_bit_levels), indexing="ij")
                add(pp.ravel(), idx[kk.ravel()], w * self._blocks[g] * powers[kk.ravel()])
        quadratic = (np.concatenate(rows), np.concatenate(cols), np.concatenate(biases)) if rows else ([], [], [])
        return dimod.BinaryQuadraticModel.from_numpy_vectors(
            linear, quadratic, self.offset, dimod.BINARY, variable_order=order
        )

    def decode(self, sample: Mapping[str, int]) -> Plan:
        """The plan a sample (label -> 0/1) stands for; every group appears in ``pruned``."""
        try:
            pruned = {
                group.name: tuple(
                    int(i) for unit, lab in zip(self._units[g], self._prune_labels[g]) if sample[lab] for i in unit
                )
                for g, group in enumerate(self.spec.groups)
            }
            bits = {
                layer.name: self.spec.b_max - sum(2**k * int(sample[lab]) for k, lab in enumerate(self._bit_labels[n]))
                for n, layer in enumerate(self.spec.layers)
            }
        except KeyError as exc:
            raise ProblemError(f"sample lacks variable {exc.args[0]!r} of the paper formulation") from exc
        return Plan(pruned=pruned, bits=bits)

    def encode(self, plan: Plan) -> dict[str, int]:
        """The sample (label -> 0/1) of a plan; its pruned channels must be candidates (whole units)."""
        plan.validate(self.spec)
        sample: dict[str, int] = {}
        for g, group in enumerate(self.spec.groups):
            chosen = set(plan.pruned.get(group.name, ()))
            picked = [{int(i) for i in unit} <= chosen for unit in self._units[g]]
            outside = sorted(chosen - {int(i) for unit, on in zip(self._units[g], picked) if on for i in unit})
            if outside:
                units = f", in units of one from each of its {group.blocks} blocks" if group.blocks > 1 else ""
                raise ProblemError(
                    f"plan prunes channels {outside} of group {group.name!r}, which are not among its "
                    f"{group.max_pruned} least important channels (the only ones the formulation can prune{units})"
                )
            sample.update({lab: int(on) for on, lab in zip(picked, self._prune_labels[g])})
        for n, layer in enumerate(self.spec.layers):
            removed = self.spec.b_max - plan.bits[layer.name]
            sample.update({lab: (removed >> k) & 1 for k, lab in enumerate(self._bit_labels[n])})
        return sample

    def energy(self, plan: Plan) -> float:
        """``H`` of a plan, evaluated straight from the definition (independently of the BQM)."""
        plan.validate(self.spec)
        spec = self.spec
        loss_prune = sum(
            float(np.sum(group.importance[list(plan.pruned.get(group.name, ()))])) ** 2 for group in spec.groups
        )
        bits = np.array([plan.bits[layer.name] for layer in spec.layers], dtype=np.float64)
        loss_quant = float(np.sum(self.sensitivity * (spec.b_max - bits) ** 2))
        kept = np.array(
            [plan.kept_channels(spec, layer.out_group, layer.out_channels) for layer in spec.layers], dtype=np.float64
        )
        reward = 1.0 - float(np.sum(self._filter_weights * kept * bits)) / self._full_bits
        return loss_prune + self.beta * loss_quant - self.gamma * reward

    def canonical(self, plan: Plan) -> Plan:
        """The plan with each group's pruned channels replaced by as many of its least important ones.

        ``H`` never rises: ``R`` depends only on how many channels a group prunes, and at a fixed
        count ``L_p = (Σ a p)²`` is smallest for the smallest importances.
        """
        plan.validate(self.spec)
        for group in self.spec.groups:
            count = len(plan.pruned.get(group.name, ()))
            if count > group.max_pruned:
                raise ProblemError(
                    f"plan prunes {count} channels of group {group.name!r}; the formulation can prune at most "
                    f"{group.max_pruned} (its candidates)"
                )
        pruned = {
            group.name: tuple(
                sorted(int(i) for i in self._units[g][: len(plan.pruned.get(group.name, ())) // group.blocks].ravel())
            )
            for g, group in enumerate(self.spec.groups)
        }
        return Plan(pruned=pruned, bits=dict(plan.bits))

    @classmethod
    def for_target(cls, spec: CompressionSpec, target: Target) -> PaperFormulation:
        """γ bisected so that the optimum reaches ``target.ratio`` (:func:`.target.calibrate_gamma`)."""
        if target.metric != "bits":
            raise ProblemError("--metric bops needs --formulation budget (the paper's energy counts weight bits only)")
        from qubocompress.problem.target import calibrate_gamma  # target.py builds on this module

        return calibrate_gamma(spec, target.ratio, beta=target.beta)

    @classmethod
    def from_parameters(cls, spec: CompressionSpec, params: Mapping[str, Any]) -> PaperFormulation:
        return cls(spec, beta=float(params["beta"]), gamma=float(params["gamma"]))

    def parameters(self) -> dict[str, Any]:
        return {"name": self.name, **self.describe()}

    def describe(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma}

    def reference(self) -> Reference:
        """The certified optimum by per-component enumeration (:meth:`exact`)."""
        return self._reference

    @cached_property
    def _reference(self) -> Reference:
        start = time.perf_counter()
        plan, energy = self.exact()
        return Reference(plan, energy, True, 0.0, "per-component enumeration", time.perf_counter() - start)

    def polish(self, sampleset: dimod.SampleSet, seed: int | None = None) -> dimod.SampleSet:
        """Every read made canonical (:meth:`canonical`), over the same BQM and reads (deterministic:
        ``seed`` is not used).

        Single-flip samplers see the swap of a pruned channel for a less important kept one as two
        moves across a barrier (the count changes in between), and the energy differences between
        such near-equivalent choices are ~1e-4 of ``H`` on trained nets: simulated annealing often
        ends with the right count but not the least important channels (measured on the VGG demo
        problem: 0-3 % of reads at the optimum raw, 70-94 % after this step). Energies come from the
        BQM; ``info["polish"]["changed"]`` is the share of reads this changed.
        """
        start = time.perf_counter()
        order = list(sampleset.variables)
        column = {label: j for j, label in enumerate(order)}
        values = np.array(sampleset.record.sample, dtype=np.int8, copy=True)
        before = values.copy()
        for labels in self._prune_labels:  # labels follow the candidates, least important first
            if not labels:
                continue
            try:
                columns = np.array([column[label] for label in labels])
            except KeyError as exc:
                raise ProblemError(f"sample lacks variable {exc.args[0]!r} of the paper formulation") from exc
            counts = values[:, columns].sum(axis=1)
            values[:, columns] = np.arange(len(labels))[None, :] < counts[:, None]
        changed = float(np.mean(np.any(values != before, axis=1))) if len(values) else 0.0
        info = dict(sampleset.info)
        info["timing"] = {**info.get("timing", {}), "polish_seconds": time.perf_counter() - start}
        info["polish"] = {"method": "canonical", "changed": changed}
        return dimod.SampleSet.from_samples_bqm(
            (values, order), self.bqm, info=info, num_occurrences=sampleset.record.num_occurrences
        )

    def exact(self) -> tuple[Plan, float]:
        """The certified minimum of ``H``: (optimal plan, its energy), by per-component enumeration."""
        return self._exact

    @cached_property
    def _exact(self) -> tuple[Plan, float]:
        spec = self.spec
        levels = np.arange(2**self.num_bit_levels, dtype=np.float64)
        total = self.offset
        bits: dict[str, int] = {}
        pruned: dict[str, tuple[int, ...]] = {}

        def layer_energy(n: int, removed: np.ndarray) -> np.ndarray:
            w = self._reward_weight[n]
            return self.beta * self.sensitivity[n] * removed**2 - w * self._out_channels[n] * removed

        for n, layer in enumerate(spec.layers):
            if layer.out_group is None or not self._prune_labels[layer.out_group]:  # a component of its own
                energies = layer_energy(n, levels)
                best = int(np.argmin(energies))
                total += float(energies[best])
                bits[layer.name] = spec.b_max - best
        for g, group in enumerate(spec.groups):
            if not self._prune_labels[g]:  # no candidate: its layers were enumerated alone above
                pruned[group.name] = ()
                continue
            members = self._members[g]
            check_certifiable(group.name, len(members), self.num_bit_levels)
            combos = len(levels) ** len(members)
            grids = np.meshgrid(*([levels] * len(members)), indexing="ij")
            removed = np.stack(grids, -1).reshape(combos, len(members)) if members else np.zeros((1, 0))
            energies = np.zeros(combos)
            reward_per_unit = np.zeros(combos)  # c: what pruning one candidate unit saves in γ·R
            for j, n in enumerate(members):
                energies += layer_energy(n, removed[:, j])
                reward_per_unit += self._blocks[g] * self._reward_weight[n] * (spec.b_max - removed[:, j])
            # (Σ a p)² − c Σ p with every candidate unit sharing c: the best k units are the k least
            # important, and f(k) = A_k² − k c is convex in k (A_k = prefix sums of ascending a ≥ 0):
            # optimal k = number of increments A_k² − A_{k−1}² below c.
            prefix = np.concatenate([[0.0], np.cumsum(self._candidate_importance[g])])
            increments = np.maximum.accumulate(np.diff(prefix**2))  # ascending already; guard rounding
            count = np.searchsorted(increments, reward_per_unit, side="left")
            energies += prefix[count] ** 2 - count * reward_per_unit
            best = int(np.argmin(energies))
            total += float(energies[best])
            for j, n in enumerate(members):
                bits[spec.layers[n].name] = spec.b_max - int(removed[best, j])
            pruned[group.name] = tuple(int(i) for i in self._units[g][: count[best]].ravel())
        plan = Plan(pruned=pruned, bits={layer.name: bits[layer.name] for layer in spec.layers})
        return plan, total

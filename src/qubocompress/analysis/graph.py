"""Which channels of a torch model can be pruned together, found by tracing it with torch.fx.

The result, a :class:`ModelGraph`, lists the compressible layers (Conv2d and Linear) and the
channel groups: sets of output channels that must be removed together (a conv and its BatchNorm;
every layer joined by a residual add or a channel-wise product such as squeeze-excitation's
``x * gate``; a depthwise conv and the layer feeding it), with every layer that consumes them
(whose input channels shrink when they are pruned). ``apply.prune`` uses it to cut the real
model; ``analysis.spec`` uses it to fill the solver-facing ``CompressionSpec``.

A grouped convolution (ResNeXt, RegNet: 1 < groups < channels) maps block j of its input to
block j of its output, and every block must keep as many channels as the others. Its input
channels and its output channels stay two groups (pruning one side needs nothing of the other),
each split into ``PruningGroup.blocks`` equal contiguous blocks that must lose the same number of
channels: the conv's ``groups``, or the lcm of the ``groups`` of every grouped conv that reads or
writes the channels. A group whose blocks would hold one channel each (a conv with one input
channel per group, or groups 4 and 6 over 12 channels) is frozen.

A concatenation along the channel dim (DenseNet, Inception) keeps each input's group: the
concatenated tensor is a list of parts, and a norm or consumer after it gets each part's group
at the part's channel offset (``PruningGroup.offsets``); a consumer reading several groups lists
them all (``LayerInfo.in_group`` and ``extra_in_groups``). Nested concatenations, norms and
elementwise ops after one, and inputs also used elsewhere are followed.

Layers whose channels we cannot follow (a concatenation along another dim, a reshape other than
flatten, a concatenation into a grouped convolution, an unknown op) are not an error: their groups are
simply frozen (not prunable) and listed in ``ModelGraph.frozen_reasons``; their weights can still
be quantized. Modules with weights that
are not Conv2d/Linear (Conv1d, ConvTranspose2d, Embedding, ...) are left as they are and listed
there too.

A TorchScript model (``torch.jit.ScriptModule``) cannot be traced by torch.fx, nor can a forward
with data-dependent control flow: their Conv2d and Linear submodules become layers with no
channel groups (bits only), each listed in ``frozen_reasons`` (:data:`TORCHSCRIPT_REASON`, or
why fx failed). Script modules take no hooks, so the output
positions of their convs (for MACs/BOPs) are read from the autograd graph of one forward pass
(each convolution's backward node keeps its input shape, stride, padding, dilation and groups);
a conv that this does not reach keeps ``out_positions=1`` (its MACs then undercounted), and a
Linear always has ``out_positions=1`` (exact for the usual 2-D classifier input).
"""

from __future__ import annotations

import itertools
import operator
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from qubocompress.errors import ModelError
from qubocompress.models.user import is_compressible_module

COMPRESSIBLE = (nn.Conv2d, nn.Linear)
TORCHSCRIPT_REASON = (
    "TorchScript model: its graph cannot be traced with torch.fx, so only bits are chosen; "
    "pass package.module:factory + weights to also prune"
)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
NORM_NAMES = ("BatchNorm1d", "BatchNorm2d")  # a norm's parameters stay float32 with its layer
# Modules and functions that keep each channel where it is (elementwise or per-channel spatial ops).
CHANNEL_PRESERVING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
CHANNEL_PRESERVING_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.hardswish,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}
CHANNEL_PRESERVING_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
CONCATENATIONS = {torch.cat, torch.concat, torch.concatenate}
# ops that may only add or drop size-1 dims after the channels (``s.view(b, c, 1, 1)``, ``s[:, :, None, None]``)
UNSQUEEZING = {torch.unsqueeze, torch.squeeze, operator.getitem}
UNSQUEEZING_METHODS = {"unsqueeze", "squeeze", "view", "reshape"}
ELEMENTWISE_JOIN = {operator.add, torch.add, operator.mul, torch.mul, operator.iadd}
ELEMENTWISE_JOIN_METHODS = {"add", "add_", "mul", "mul_"}


@dataclass(frozen=True)
class LayerInfo:
    """One Conv2d or Linear layer of the traced model.

    Attributes:
        name: qualified module name.
        kind: ``"conv"`` or ``"linear"``.
        out_channels, in_channels, groups, kernel_area: the weight's geometry.
        in_features_per_channel: input features per input channel (H*W for a linear after a
            flatten of a C×H×W map, else 1).
        out_positions: output positions per sample (H_out*W_out for conv, 1 for linear).
        out_group: index of the group of its output channels (None: not prunable).
        in_group: index of the group of its input channels (None: network input or untracked);
            after a concatenation, the first group its input holds.
        extra_in_groups: the other groups a concatenated input holds, in channel order.
    """

    name: str
    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel_area: int
    in_features_per_channel: int
    out_positions: int
    out_group: int | None
    in_group: int | None
    extra_in_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class PruningGroup:
    """Channels pruned together: index i of this group is channel i of every member.

    Attributes:
        name: the first producer's module name.
        channels: number of channels.
        producers: Conv2d/Linear modules whose output channels (weight dim 0, bias) these are.
        norms: BatchNorm modules normalising these channels.
        depthwise: depthwise Conv2d modules that carry these channels through (their weight
            dim 0, bias and ``groups`` shrink with the group).
        consumers: ``(module, in_features_per_channel)`` for every Conv2d/Linear whose input
            holds these channels: channel i spans input features
            ``[(o+i)*k, (o+i+1)*k)`` of its weight dim 1 (k = in_features_per_channel, o its
            offset).
        offsets: ``(module, o)`` for every norm and consumer that sees these channels after a
            concatenation, at channel ``o`` of its channels (o > 0; a module not listed: 0).
        blocks: equal contiguous blocks of the channels that must each lose as many (a grouped
            convolution reads or writes them: its ``groups``, or the lcm over such convs); 1: none.
    """

    name: str
    channels: int
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    depthwise: tuple[str, ...] = ()
    consumers: tuple[tuple[str, int], ...] = ()
    offsets: tuple[tuple[str, int], ...] = ()
    blocks: int = 1

    def offset(self, module: str) -> int:
        """The channel of norm or consumer ``module`` where these channels start (0 unless after a concatenation)."""
        return dict(self.offsets).get(module, 0)


@dataclass
class ModelGraph:
    """The traced model: compressible layers, prunable channel groups, and what was frozen."""

    layers: list[LayerInfo]
    groups: list[PruningGroup]
    frozen_reasons: dict[str, str] = field(default_factory=dict)

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise ModelError(f"no compressible layer named {name!r}")


def _not_compressed_reason(module: nn.Module) -> str | None:
    """Why a module with weights of its own is left alone, or None (no weights, a norm, or compressible)."""
    kind = getattr(module, "original_name", None) or type(module).__name__
    if isinstance(module, COMPRESSIBLE) and not is_compressible_module(module):
        return f"{kind}'s weight is computed by a parametrization (weight_norm, spectral_norm, ...); kept as it is"
    if is_compressible_module(module) or kind in NORM_NAMES or next(module.parameters(recurse=False), None) is None:
        return None
    return f"{kind} is not compressible (only Conv2d and Linear are); kept as it is"


def trace_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (C, H, W) and find its channel groups.

    A TorchScript model, or one whose forward torch.fx cannot trace (data-dependent control flow,
    ``len(x)``, ``assert`` on a shape), gets its layers but no groups: bits only, the reason listed
    for every layer (see the module docstring).

    Raises:
        ModelError: the model does not run on such an input.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return _bits_only_graph(model, input_shape, TORCHSCRIPT_REASON)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        reason = (
            f"torch.fx cannot trace {type(model).__name__}'s forward ({type(exc).__name__}: "
            f"{_first_line(exc)}), so only bits are chosen"
        )
        return _bits_only_graph(model, input_shape, reason)
    return _Tracer(model, gm, input_shape).run()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _run_failure(exc: Exception, input_shape: tuple[int, ...]) -> ModelError:
    return ModelError(
        f"model does not run on inputs of shape {tuple(input_shape)} ({type(exc).__name__}: {_first_line(exc)})"
    )


def _is_conv(module: nn.Module) -> bool:
    """A Conv2d, eager or compiled by TorchScript."""
    return isinstance(module, nn.Conv2d) or getattr(module, "original_name", None) == "Conv2d"


def _bits_only_graph(model: nn.Module, input_shape: tuple[int, ...], reason: str) -> ModelGraph:
    """The Conv2d/Linear layers of a model that torch.fx cannot follow (a TorchScript model, or an
    untraceable forward), no channel groups; every layer listed with ``reason``."""
    found = [(name, module) for name, module in model.named_modules() if is_compressible_module(module)]
    convs = _conv_geometry(model, input_shape, [(n, m) for n, m in found if _is_conv(m)])
    layers = []
    for name, module in found:
        shape = tuple(module.weight.shape)
        if _is_conv(module):
            groups, out_positions = convs.get(name, (int(getattr(module, "groups", 1)), 1))
            kernel_area = shape[2] * shape[3]
            layers.append(
                LayerInfo(name, "conv", shape[0], shape[1] * groups, groups, kernel_area, 1, out_positions, None, None)
            )
        else:
            layers.append(LayerInfo(name, "linear", shape[0], shape[1], 1, 1, 1, 1, None, None))
    frozen = {name: reason for name, _ in found}
    for name, module in model.named_modules():
        left_alone = _not_compressed_reason(module)
        if left_alone is not None:
            frozen[name] = left_alone
    return ModelGraph(layers=layers, groups=[], frozen_reasons=frozen)


# What a convolution's autograd node saves (ConvolutionBackward0/1): enough to size its output.
_CONV_SAVED = ("weight", "input", "stride", "padding", "dilation", "groups")


def _conv_geometry(
    model: nn.Module, input_shape: tuple[int, ...], convs: list[tuple[str, nn.Module]]
) -> dict[str, tuple[int, int]]:
    """``name -> (groups, output positions)`` of the convs reached by one forward pass, read from
    the convolution nodes of its autograd graph (script modules take no forward hooks)."""
    by_pointer = {module.weight.data_ptr(): name for name, module in convs}
    weights = [module.weight for _, module in convs]
    flags = [w.requires_grad for w in weights]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        for weight in weights:
            weight.requires_grad_(True)
        with torch.enable_grad():
            output = model(torch.zeros((1, *input_shape), device=device, requires_grad=True))
    except Exception as exc:  # any failure of the user's forward on this input
        raise _run_failure(exc, input_shape) from exc
    finally:
        for weight, flag in zip(weights, flags, strict=True):
            weight.requires_grad_(flag)
        model.train(was_training)
    outputs = output if isinstance(output, (tuple, list)) else [output]
    stack = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[int] = set()
    geometry: dict[str, tuple[int, int]] = {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(next_node for next_node, _ in node.next_functions)
        if not all(hasattr(node, f"_saved_{key}") for key in _CONV_SAVED):
            continue
        weight, source = node._saved_weight, node._saved_input
        name = by_pointer.get(weight.data_ptr()) if weight is not None else None
        if name is None or source is None or source.dim() != 4:
            continue
        sides = [
            (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
            for size, pad, dil, kernel, step in zip(
                source.shape[2:], node._saved_padding, node._saved_dilation, weight.shape[2:], node._saved_stride
            )
        ]
        geometry[name] = (int(node._saved_groups), int(sides[0] * sides[1]))
    return geometry


@dataclass
class _GroupRecord:
    """Mutable union-find node used while tracing."""

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    blocks: int = 1
    split_by: list[str] = field(default_factory=list)  # the grouped convs behind ``blocks``
    frozen: str | None = None
    parent: int | None = None

    def place(self, module: str, offset: int) -> None:
        """Record that ``module`` sees these channels from its channel ``offset`` on."""
        if self.offsets.setdefault(module, offset) != offset:
            self.frozen = self.frozen or f"reaches {module} twice through a concatenation"


@dataclass(frozen=True)
class _Channels:
    """What dim 1 of a traced tensor holds: a union-find group id (None: untracked) and how many
    consecutive features one channel spans (``per_channel`` > 1 after a flatten). After a
    concatenation, ``parts`` lists ``(group id or None, channels)`` of each input, in order, and
    ``group`` is None."""

    group: int | None
    per_channel: int = 1
    parts: tuple[tuple[int | None, int], ...] = ()

    def tracked(self) -> list[tuple[int, int]]:
        """``(group id, channel offset)`` of every tracked group the tensor holds."""
        if not self.parts:
            return [] if self.group is None else [(self.group, 0)]
        offsets = itertools.accumulate((size for _, size in self.parts), initial=0)
        return [(gid, offset) for (gid, _), offset in zip(self.parts, offsets) if gid is not None]


_UNTRACKED = _Channels(None)


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs a traced module and keeps the shape of every tensor a node produces. (torch's
    ShapeProp does the same but imports sympy on its first node, ~0.7 s of a cold run here.)"""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n.name] = tuple(int(d) for d in result.shape)
        return result


def _propagate_shapes(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Run ``gm`` once on zeros of ``(2, *input_shape)`` and record every tensor node's shape."""
    recorder = _ShapeRecorder(gm)
    was_training = gm.training
    parameter = next(gm.parameters(), None)
    gm.eval()
    try:
        with torch.no_grad():
            recorder.run(torch.zeros((2, *input_shape), device=parameter.device if parameter is not None else None))
    except Exception as exc:  # any failure of the user's forward on this input
        raise _run_failure(exc, input_shape) from exc
    finally:
        gm.train(was_training)
    return recorder.shapes


def _fixed_sizes(node: torch.fx.Node) -> bool:
    """True when a view/reshape node names a size other than -1 or 1 as a literal number (its
    code fixes the channel count), False when every size comes from the tensors (``x.size(0), -1``)."""
    sizes = node.args[1:] or tuple(node.kwargs.get("shape", node.kwargs.get("size", ())))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return any(isinstance(size, int) and size not in (-1, 1) for size in sizes)


def _only_unit_dims_change(in_shape: tuple[int, ...] | None, shape: tuple[int, ...]) -> bool:
    """True when ``shape`` keeps the batch and channel dims of ``in_shape`` and only adds or
    drops size-1 dims after them (``(N, C) -> (N, C, 1, 1)`` and back)."""
    if in_shape is None or len(in_shape) < 2 or len(shape) < 2 or tuple(shape[:2]) != tuple(in_shape[:2]):
        return False
    return [d for d in in_shape[2:] if d != 1] == [d for d in shape[2:] if d != 1]


def _reduced_dims(node: torch.fx.Node, ndim: int) -> set[int] | None:
    """The dims a mean/amax/sum node reduces, each in 0..ndim-1; None when they are not literal
    numbers or it reduces every dim (no ``dim``, or ``dim=()``). Its output shape alone cannot
    tell: ``x.mean(1)`` of an (N, C, H, W) map with C == H keeps (N, C) in front."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims) or ndim < 1:
        return None
    return {d % ndim for d in dims}


def _plain_index(node: torch.fx.Node) -> bool:
    """True for ``x[...]`` whose index only holds ``:``, ``None`` and ``...`` (no channel picked)."""
    index = node.args[1] if len(node.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return all(item is None or item is Ellipsis or item == slice(None) for item in items)


class _Tracer:
    """Walks the fx graph once, in order, assigning a channel group to every tensor."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        self.shapes = _propagate_shapes(self.gm, input_shape)
        self.records: list[_GroupRecord] = []
        self.channels: dict[torch.fx.Node, _Channels | None] = {}  # None: not a tensor
        self.layers: list[dict] = []
        self.not_compressed: dict[str, str] = {}

    # -- union-find -------------------------------------------------------------------------
    def _new(self, channels: int, producer: str | None = None, frozen: str | None = None) -> int:
        self.records.append(_GroupRecord(channels, producers=[producer] if producer else [], frozen=frozen))
        return len(self.records) - 1

    def _root(self, gid: int) -> int:
        while (parent := self.records[gid].parent) is not None:
            gid = parent
        return gid

    def _record(self, gid: int) -> _GroupRecord:
        return self.records[self._root(gid)]

    def _freeze(self, gid: int | None, reason: str) -> None:
        if gid is not None:
            rec = self._record(gid)
            rec.frozen = rec.frozen or reason

    def _freeze_all(self, chans: _Channels, reason: str) -> None:
        for gid, _ in chans.tracked():
            self._freeze(gid, reason)

    def _split(self, gid: int, conv: str, groups: int) -> None:
        """Grouped conv ``conv`` reads or writes group ``gid``: its blocks become the lcm with ``groups``."""
        rec = self._record(gid)
        rec.blocks = math.lcm(rec.blocks, groups)
        rec.split_by.append(f"{conv} (groups={groups})")

    def _union(self, a: int, b: int, where: str) -> int:
        ra, rb = sorted((self._root(a), self._root(b)))
        if ra == rb:
            return ra
        keep, gone = self.records[ra], self.records[rb]
        for attr in ("producers", "norms", "depthwise", "consumers", "split_by"):
            getattr(keep, attr).extend(getattr(gone, attr))
        keep.blocks = math.lcm(keep.blocks, gone.blocks)
        for module, offset in gone.offsets.items():
            keep.place(module, offset)
        if keep.channels != gone.channels:
            keep.frozen = keep.frozen or f"{where} joins {keep.channels} and {gone.channels} channels"
        keep.frozen = keep.frozen or gone.frozen
        gone.parent = ra
        return ra

    # -- walking ----------------------------------------------------------------------------
    def run(self) -> ModelGraph:
        for node in self.gm.graph.nodes:
            self.channels[node] = self._visit(node)
        return self._finish()

    def _tensor_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in node.all_input_nodes if self.channels.get(a) is not None]

    def _visit(self, node: torch.fx.Node) -> _Channels | None:
        if node.op == "placeholder":
            return _UNTRACKED
        inputs = self._tensor_inputs(node)
        if node.op == "output":
            for arg in inputs:
                self._freeze_all(self.channels[arg], "feeds the model output")
            return None
        if node.op == "get_attr":
            return _UNTRACKED
        shape = self.shapes.get(node.name)
        if shape is None:  # sizes and python values carry no channels
            return None
        first = self.channels[inputs[0]] if inputs else _UNTRACKED
        in_shape = self.shapes.get(inputs[0].name) if inputs else None
        if node.op == "call_module":
            name = str(node.target)
            module = self.modules[name]
            if isinstance(module, COMPRESSIBLE) and is_compressible_module(module):
                return self._layer(name, module, first, in_shape, shape)
            if isinstance(module, NORMS):
                if first.per_channel != 1:  # a BatchNorm1d over flattened maps: H*W features per channel
                    return self._freeze_and_untrack(first, f"norm {name} of flattened features")
                for gid, offset in first.tracked():
                    self._record(gid).norms.append(name)
                    self._record(gid).place(name, offset)
                return first
            if isinstance(module, CHANNEL_PRESERVING_MODULES):
                return first
            if isinstance(module, nn.Flatten):
                return self._reshape(first, in_shape, shape, name)
            reason = _not_compressed_reason(module)
            if reason is not None:
                self.not_compressed[name] = reason
            return self._unsupported(inputs, f"module {name} ({type(module).__name__})")
        target = node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if target in CHANNEL_PRESERVING_FUNCTIONS or (
            node.op == "call_method" and target in CHANNEL_PRESERVING_METHODS
        ):
            return first
        if target in ELEMENTWISE_JOIN or (node.op == "call_method" and target in ELEMENTWISE_JOIN_METHODS):
            return self._join(inputs, shape, f"{label} at {node.name}")
        if target in CONCATENATIONS:
            return self._cat(node, shape, f"{label} at {node.name}")
        if (target in UNSQUEEZING or (node.op == "call_method" and target in UNSQUEEZING_METHODS)) and (
            _only_unit_dims_change(in_shape, shape)
            and (target is not operator.getitem or _plain_index(node))
            and not (target in ("view", "reshape") and _fixed_sizes(node))
        ):
            return first  # e.g. an SE gate's (N, C) -> (N, C, 1, 1)
        if target in (torch.reshape, "view", "reshape") and _fixed_sizes(node):
            # e.g. x.view(-1, 16 * 5 * 5): right for this model, wrong once its channels are pruned
            return self._freeze_and_untrack(first, f"a reshape to a fixed size at {node.name}")
        if target in (torch.flatten, torch.reshape) or target in ("flatten", "view", "reshape"):
            return self._reshape(first, in_shape, shape, node.name)
        if target in (torch.mean, torch.amax, torch.sum) or target in ("mean", "amax", "sum"):
            reduced = _reduced_dims(node, len(in_shape)) if in_shape is not None else None
            if reduced is not None and not reduced & {0, 1} and shape[:2] == in_shape[:2]:
                return first  # a reduction over spatial dims keeps the channels
        return self._unsupported(inputs, f"{label} at {node.name}")

    def _unsupported(self, inputs: list[torch.fx.Node], what: str) -> _Channels:
        for arg in inputs:
            self._freeze_all(self.channels[arg], f"used by {what}, which qubocompress cannot follow")
        return _UNTRACKED

    def _cat(self, node: torch.fx.Node, shape, where: str) -> _Channels:
        """A concatenation along dim 1 of unflattened tensors: the parts of its inputs, in order."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        inputs = [a for a in tensors if isinstance(a, torch.fx.Node) and self.channels.get(a) is not None]
        if not isinstance(dim, int) or len(shape) < 2 or dim % len(shape) != 1 or len(inputs) != len(tensors):
            return self._unsupported(inputs, f"{where} (not along the channel dim)")
        if any(self.channels[a].per_channel != 1 for a in inputs):
            return self._unsupported(inputs, f"{where} (of flattened features)")
        parts: list[tuple[int | None, int]] = []
        for arg in inputs:
            chans = self.channels[arg]
            parts += chans.parts or [(chans.group, self.shapes[arg.name][1])]
        return _Channels(None, 1, tuple(parts)) if any(g is not None for g, _ in parts) else _UNTRACKED

    def _reshape(self, first: _Channels, in_shape, shape, where: str) -> _Channels:
        """A flatten of (N, C, H, W) into (N, C*H*W) keeps channel i as features [i*HW, (i+1)*HW)."""
        if in_shape is None or shape[0] != in_shape[0]:
            return self._freeze_and_untrack(first, f"reshape at {where}")
        if tuple(shape) == tuple(in_shape):
            return first
        if len(in_shape) == 4 and len(shape) == 2 and shape[1] == in_shape[1] * in_shape[2] * in_shape[3]:
            return _Channels(first.group, first.per_channel * in_shape[2] * in_shape[3], first.parts)
        return self._freeze_and_untrack(first, f"reshape at {where}")

    def _freeze_and_untrack(self, first: _Channels, what: str) -> _Channels:
        self._freeze_all(first, f"used by {what}, which qubocompress cannot follow")
        return _UNTRACKED

    def _join(self, inputs: list[torch.fx.Node], shape, where: str) -> _Channels:
        """Elementwise add/mul (a residual add; a squeeze-excitation ``x * gate``, the gate
        broadcast from (N, C, 1, 1)): the operands' channels become one group, part by part
        when the operands are concatenations of the same sizes."""
        chans = [self.channels[a] for a in inputs]
        if len(chans) == 1:
            return chans[0]
        shapes = [self.shapes.get(a.name) for a in inputs]
        same_layout = all(s is not None and len(s) >= 2 and s[1] == shape[1] for s in shapes)
        columns = [[(c.group, shape[1])] if not c.parts else list(c.parts) for c in chans]
        sizes = {tuple(size for _, size in column) for column in columns}
        if (
            not same_layout
            or len(sizes) != 1
            or any(g is None for column in columns for g, _ in column)
            or len({c.per_channel for c in chans}) != 1
        ):
            for c in chans:
                self._freeze_all(c, f"{where} mixes channels qubocompress cannot follow")
            return _UNTRACKED
        parts = []
        for tied in zip(*columns):
            gid = tied[0][0]
            for other, _ in tied[1:]:
                gid = self._union(gid, other, where)
            parts.append((gid, tied[0][1]))
        if len(parts) == 1:
            return _Channels(parts[0][0], chans[0].per_channel)
        return _Channels(None, chans[0].per_channel, tuple(parts))

    def _layer(self, name: str, module: nn.Module, first: _Channels, in_shape, shape) -> _Channels:
        if isinstance(module, nn.Conv2d):
            kind, cin, cout, groups = "conv", module.in_channels, module.out_channels, module.groups
            kernel_area = int(module.kernel_size[0] * module.kernel_size[1])
            out_positions = int(shape[2] * shape[3]) if len(shape) == 4 else 1
            per_channel = 1
        else:
            kind, cin, cout, groups, kernel_area = "linear", module.in_features, module.out_features, 1, 1
            out_positions = 1
            for d in shape[1:-1]:
                out_positions *= int(d)
            per_channel = first.per_channel
            held = sum(size for _, size in first.parts) if first.parts else None
            if first.group is not None:
                held = self._record(first.group).channels
            if in_shape is None or len(in_shape) != 2:
                # a linear over the last dim of a >2-D tensor: its input channels are not dim 1
                self._freeze_all(first, f"linear {name} applied to a {len(in_shape or ())}-D tensor")
                first, per_channel = _UNTRACKED, 1
            elif held is not None and held * per_channel != cin:
                self._freeze_all(first, f"input of {name} does not match its channels")
                first, per_channel = _UNTRACKED, 1
        in_channels = cin // per_channel
        if groups > 1 and groups == cin == cout:
            # depthwise: output channel i is input channel i, so the conv carries the group through
            if first.group is None:
                self._freeze_all(first, f"feeds depthwise {name} after a concatenation")
                gid = self._new(cout, frozen=f"depthwise {name} reads the input or a concatenation")
            else:
                gid = first.group
            self._record(gid).depthwise.append(name)
            self._add_layer(name, kind, cout, cin, groups, kernel_area, 1, out_positions, gid, [gid])
            return _Channels(gid)
        if groups > 1 and first.parts:
            # every part would have to lose as many channels per conv group as the others: a tie
            # between groups, which one group's blocks cannot say
            self._freeze_all(first, f"feeds grouped convolution {name} (groups={groups}) after a concatenation")
            first = _UNTRACKED
        for gid, offset in first.tracked():
            self._record(gid).consumers.append((name, per_channel))
            self._record(gid).place(name, offset)
            if groups > 1:
                self._split(gid, name, groups)
        gid = self._new(cout, producer=name)
        if groups > 1:
            self._split(gid, name, groups)
        in_gids = [g for g, _ in first.tracked()]
        self._add_layer(name, kind, cout, in_channels, groups, kernel_area, per_channel, out_positions, gid, in_gids)
        return _Channels(gid)

    def _add_layer(self, name, kind, cout, cin, groups, kernel_area, per_channel, out_positions, out_gid, in_gids):
        self.layers.append(
            dict(
                name=name,
                kind=kind,
                out_channels=cout,
                in_channels=cin,
                groups=groups,
                kernel_area=kernel_area,
                in_features_per_channel=per_channel,
                out_positions=out_positions,
                out_group=out_gid,
                in_groups=in_gids,
            )
        )

    def _finish(self) -> ModelGraph:
        index: dict[int, int] = {}
        groups: list[PruningGroup] = []
        frozen: dict[str, str] = {}
        for gid, rec in enumerate(self.records):
            if rec.parent is not None or not rec.producers:
                continue
            if rec.blocks == rec.channels > 1 and not rec.frozen:
                convs = list(dict.fromkeys(rec.split_by))
                many = len(convs) > 1
                rec.frozen = (
                    f"grouped convolution{'s' * many} {', '.join(convs)} split{'s' * (not many)} these "
                    f"{rec.channels} channels into blocks of one (each block must lose as many as the others)"
                )
            if rec.frozen:
                frozen[rec.producers[0]] = rec.frozen
                continue
            index[gid] = len(groups)
            groups.append(
                PruningGroup(
                    name=rec.producers[0],
                    channels=rec.channels,
                    producers=tuple(rec.producers),
                    norms=tuple(rec.norms),
                    depthwise=tuple(rec.depthwise),
                    consumers=tuple(rec.consumers),
                    offsets=tuple((module, offset) for module, offset in rec.offsets.items() if offset),
                    blocks=rec.blocks,
                )
            )

        def resolve(gid: int | None) -> int | None:
            return None if gid is None else index.get(self._root(gid))

        layers = []
        for layer in self.layers:
            in_groups = [g for g in map(resolve, layer["in_groups"]) if g is not None]
            fields = {key: value for key, value in layer.items() if key != "in_groups"}
            fields.update(out_group=resolve(layer["out_group"]), in_group=in_groups[0] if in_groups else None)
            layers.append(LayerInfo(**fields, extra_in_groups=tuple(in_groups[1:])))
        return ModelGraph(layers=layers, groups=groups, frozen_reasons={**frozen, **self.not_compressed})

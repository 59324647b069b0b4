"""Any model: a built-in name, ``package.module:factory`` plus a state_dict, or a TorchScript file.

:func:`load_user_model` returns the model and its ``arch``, the dict that rebuilds the original
(unpruned) model when a compressed artifact is loaded:

* ``{"name": "vgg", "kwargs": {...}}``: a built-in model (:func:`qubocompress.models.build_model`);
* ``{"factory": "pkg.mod:make", "kwargs": {...}}``: rebuilt only by the factory the loading
  caller passes, never by importing what the file names (:func:`rebuild_model`);
* ``{"torchscript": True}``: a TorchScript model, stored in the artifact itself as its code with
  every tensor emptied (:func:`script_archive`, a few KB), refilled on load
  (:func:`load_script_archive`) when the caller opts in. torch.fx cannot trace a ScriptModule,
  so such a model is quantized but not pruned (see ``analysis.graph``).

Every problem with the user's input is a :class:`~qubocompress.errors.ModelError` with a one-line
message: an unknown name, a module that does not import, a missing attribute, a factory that
raises or returns something else than an ``nn.Module``, a weights file that is corrupt or does
not match, a model without any Conv2d or Linear layer.
"""

from __future__ import annotations

import copy
import importlib
import io
import lzma
import os
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from qubocompress.errors import ModelError
from qubocompress.models.train import is_state_dict, load_state, safe_torch_load
from qubocompress.models.zoo import MODELS, build_model

COMPRESSIBLE_NAMES = ("Conv2d", "Linear")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


def is_compressible_module(module: nn.Module) -> bool:
    """True for a Conv2d or Linear, plain or compiled by TorchScript (by its original class name),
    whose weight is a plain tensor (not computed by a parametrization such as weight_norm)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return not parametrize.is_parametrized(module, "weight")
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", None) in COMPRESSIBLE_NAMES


def is_factory_spec(model: str) -> bool:
    """Whether ``model`` names a ``package.module:factory`` (not a built-in name or a file)."""
    return model not in MODELS and not Path(model).is_file() and FACTORY_PATTERN.match(model) is not None


def arch_label(arch: Mapping[str, Any]) -> str:
    """A short name for the model an arch dict describes (``vgg``, ``pkg.mod:make``, ``torchscript``)."""
    if arch.get("torchscript"):
        return "torchscript"
    return str(arch.get("factory") or arch.get("name"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_user_model(
    model: str,
    weights: str | os.PathLike[str] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model that ``model`` names, in eval mode, and its arch dict (see the module docstring).

    Args:
        model: a built-in name (``vgg``), ``package.module:factory``, or the path of a
            TorchScript file (``torch.jit.save``).
        weights: a ``torch.save``d state_dict, or a checkpoint dict holding one under
            ``"state_dict"`` (a qubocompress checkpoint is one), loaded strictly. Not for
            TorchScript files, which hold their weights.
        kwargs: keyword arguments of the built-in builder or of the factory.
        input_shape: (C, H, W); if given, the model must run on a batch of such inputs and
            return one (N, K) tensor of logits.
        num_classes: if given (with ``input_shape``), K must be at least this.
    """
    kwargs = dict(kwargs or {})
    path = Path(model)
    module: nn.Module
    arch: dict[str, Any]
    if model in MODELS:
        module, arch = build_model(model, **kwargs), {"name": model, "kwargs": kwargs}
    elif path.is_file():
        if weights is not None or kwargs:
            raise ModelError(
                f"{model} is a TorchScript file, which holds its own weights: drop --weights and model kwargs"
            )
        module, arch = _load_torchscript(path), {"torchscript": True}
    elif FACTORY_PATTERN.match(model):
        module, arch = build_from_factory(model, kwargs), {"factory": model, "kwargs": kwargs}
    elif path.suffix in TORCHSCRIPT_SUFFIXES or os.sep in model:
        raise ModelError(f"model file {model} does not exist")
    else:
        raise ModelError(
            f"unknown model {model!r}: use a built-in name ({', '.join(sorted(MODELS))}), "
            "package.module:factory, or the path of a TorchScript file"
        )
    if not any(is_compressible_module(m) for m in module.modules()):
        raise ModelError(f"model {model} has no compressible layer (Conv2d or Linear)")
    if weights is not None:
        _load_weights(module, Path(weights), model)
    module.eval()
    if input_shape is not None:
        check_runs(module, tuple(input_shape), model, num_classes)
    return module, arch


def _import_module(name: str, spec: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: packages in the current folder are importable
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelError(f"cannot import {name!r} for --model {spec}: {_first_line(exc)}") from None
    except Exception as exc:  # the user's module may raise anything while importing
        raise ModelError(
            f"cannot import {name!r} for --model {spec}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module`` of ``spec`` (``package.module:factory``) and call the factory."""
    if not FACTORY_PATTERN.match(spec):
        raise ModelError(f"model factory {spec!r} must look like package.module:factory")
    module_name, attribute = spec.split(":")
    target: Any = _import_module(module_name, spec)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelError(f"module {module_name!r} has no attribute {attribute!r} (from --model {spec})")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"{spec} is a {type(target).__name__}, not a callable that builds a model")
    return call_factory(target, kwargs or {}, spec)


def call_factory(factory: Factory, kwargs: Mapping[str, Any], label: str) -> nn.Module:
    """``factory(**kwargs)``, which must return an ``nn.Module``; ModelError otherwise."""
    try:
        built = factory(**dict(kwargs))
    except Exception as exc:  # the user's factory may raise anything
        raise ModelError(f"factory {label} raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(built, nn.Module):
        raise ModelError(f"factory {label} returned a {type(built).__name__}, not a torch.nn.Module")
    return built


Factory = Callable[..., nn.Module]


def factory_label(factory: Factory | str) -> str:
    """The name a file records for a factory: ``package.module:factory`` (``__main__:Net`` for a
    class defined in a notebook)."""
    if isinstance(factory, str):
        return factory
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__name__)}"


def rebuild_model(arch: Mapping[str, Any], factory: Factory | str | None = None) -> nn.Module:
    """The unpruned model of an arch dict read from a file, on the meta device for a built-in one
    (see :func:`qubocompress.models.train.load_state`).

    Nothing the file names is imported or called: a built-in model comes from the fixed table
    :data:`~qubocompress.models.zoo.MODELS`; a user model only from the ``factory`` the caller
    passes (a callable, or ``package.module:factory`` that the caller names), which must be the
    one the file records. TorchScript models are rebuilt from their archive by
    :func:`load_script_archive`.
    """
    kwargs = arch.get("kwargs", {})
    if "name" in arch:
        if factory is not None:  # it would be ignored: say so rather than let a mix-up pass
            raise ModelError(
                f"it holds the built-in model {str(arch['name'])!r}, which is rebuilt from qubocompress's own "
                "table: pass no factory (no --model on the command line)"
            )
        return build_model(str(arch["name"]), meta=True, **kwargs)
    if "factory" not in arch:
        raise ModelError(f"cannot rebuild a model from arch {dict(arch)!r}")
    recorded = str(arch["factory"])
    if factory is None:
        raise ModelError(
            f"its model is built by {recorded}, and loading never imports or calls what a file names: pass "
            f"that factory yourself (load_artifact(path, factory=...) in Python, --model {recorded} on the "
            "command line)"
        )
    if factory_label(factory) != recorded:
        raise ModelError(f"it records the factory {recorded}, not {factory_label(factory)}")
    if isinstance(factory, str):
        return build_from_factory(factory, kwargs)
    return call_factory(factory, kwargs, recorded)


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit.load raises RuntimeError, ValueError, zip errors...
        raise ModelError(
            f"{path} is not a TorchScript file that torch.jit.load accepts ({type(exc).__name__}: "
            f"{_first_line(exc)[:160]}); save one with torch.jit.save(torch.jit.script(model), path) "
            "or pass package.module:factory with --weights"
        ) from None


def _load_weights(module: nn.Module, path: Path, label: str) -> None:
    """Load a state_dict (bare, or under ``"state_dict"`` of a checkpoint dict) strictly."""
    payload = safe_torch_load(path, "weights file")
    if isinstance(payload, Mapping) and is_state_dict(payload.get("state_dict")):
        payload = payload["state_dict"]
    if not is_state_dict(payload):
        raise ModelError(f"weights file {path} holds no state_dict (a dict of tensors, or one under 'state_dict')")
    load_state(module, payload, path, label)


def check_runs(module: nn.Module, input_shape: tuple[int, ...], label: str, num_classes: int | None) -> None:
    """The model runs on two inputs of ``input_shape`` and returns a (2, K) tensor of logits,
    K >= ``num_classes`` when given; else a ModelError."""
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            output = module(torch.zeros((2, *input_shape), device=device))
    except Exception as exc:  # any failure of the user's forward
        raise ModelError(
            f"model {label} does not run on inputs of shape {input_shape} "
            f"({type(exc).__name__}: {_first_line(exc)[:160]})"
        ) from None
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"model {label} returns a {type(output).__name__}, not one tensor of logits (N, classes)")
    if output.dim() != 2 or output.shape[0] != 2:
        raise ModelError(
            f"model {label} returns shape {tuple(output.shape)} for 2 inputs, not logits of shape (2, classes)"
        )
    if num_classes is not None and output.shape[1] < num_classes:
        raise ModelError(
            f"model {label} outputs {output.shape[1]} logits per sample, but the data set has {num_classes} classes"
        )


def script_archive(module: torch.jit.ScriptModule) -> bytes:
    """``module``'s TorchScript code and structure with every parameter and buffer emptied, debug
    information dropped, lzma-compressed: a few KB that :func:`load_script_archive` refills."""
    stripped = copy.deepcopy(module)
    for _, sub in stripped.named_modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            setattr(sub, name, nn.Parameter(torch.empty(0, dtype=param.dtype), requires_grad=param.requires_grad))
        for name, buffer in list(sub.named_buffers(recurse=False)):
            setattr(sub, name, torch.empty(0, dtype=buffer.dtype))
    saved = io.BytesIO()
    torch.jit.save(stripped, saved)
    repacked = io.BytesIO()
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(repacked, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if not info.filename.endswith(".debug_pkl"):  # source locations for error messages only
                target.writestr(info.filename, source.read(info))
    return lzma.compress(repacked.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def load_script_archive(archive: bytes, state: Mapping[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """The ScriptModule of :func:`script_archive` with its tensors set from ``state`` (a state_dict
    with exactly the module's keys; the shapes are those of ``state``). ModelError if either the
    archive or the keys do not fit."""
    try:
        module = torch.jit.load(io.BytesIO(lzma.decompress(archive)), map_location="cpu")
    except Exception as exc:  # lzma and torch.jit.load errors
        raise ModelError(
            f"the TorchScript archive is corrupt ({type(exc).__name__}: {_first_line(exc)[:160]})"
        ) from None
    expected = set(module.state_dict())
    if expected != set(state):
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ModelError(
            "the stored tensors do not fit the TorchScript model "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    owners = dict(module.named_modules())  # ScriptModules have no get_submodule
    for key, value in state.items():
        owner_name, _, attribute = key.rpartition(".")
        owner = owners[owner_name]
        current = getattr(owner, attribute)
        if isinstance(current, nn.Parameter):
            setattr(owner, attribute, nn.Parameter(value.to(current.dtype), requires_grad=current.requires_grad))
        else:
            setattr(owner, attribute, value.to(current.dtype))
    return module.eval()

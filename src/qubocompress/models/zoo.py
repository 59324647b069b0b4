"""Built-in CNNs for small gray or colour images (28×28 by default; CIFAR's 32×32 RGB as well).

Every builder takes ``num_classes``, ``in_channels`` and ``input_size`` (the side of a square
input, in pixels), and most a ``width`` (channels of the first stage). All models are plain
``nn.Module`` graphs that ``torch.fx.symbolic_trace`` can follow: no data-dependent control
flow, convs/norms/linears/activations/pools as modules, residual adds as ``out + shortcut(x)``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from qubocompress.errors import ModelError


def _check_common(name: str, num_classes: int, in_channels: int, input_size: int, min_size: int) -> None:
    if num_classes < 2:
        raise ModelError(f"{name} needs at least 2 classes, got {num_classes}")
    if in_channels < 1:
        raise ModelError(f"{name} needs at least 1 input channel, got {in_channels}")
    if input_size < min_size:
        raise ModelError(f"{name} needs inputs of at least {min_size}x{min_size} pixels, got {input_size}")


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class LeNet5(nn.Module):
    """LeNet-5 (ReLU, max-pool): conv 6@5×5 (pad 2), pool, conv 16@5×5, pool, fc 120-84-classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_common("lenet5", num_classes, in_channels, input_size, min_size=12)
        side = (input_size // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG(nn.Module):
    """VGG-style: six conv3×3-BN-ReLU (w, w, 2w, 2w, 4w, 4w), max-pool after every second conv.

    Head: flatten the 4w×(s/8)×(s/8) map, fc 128, ReLU, fc classes (``head="fc"``, the default:
    it keeps the spatial layout, worth ~0.5 % on Fashion-MNIST), or global average pool and one
    fc (``head="gap"``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        width: int = 16,
        head: str = "fc",
        hidden: int = 128,
    ) -> None:
        super().__init__()
        _check_common("vgg", num_classes, in_channels, input_size, min_size=8)
        if width < 1 or hidden < 1:
            raise ModelError(f"vgg width and hidden must be at least 1, got {width} and {hidden}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index, out_channels in enumerate((width, width, 2 * width, 2 * width, 4 * width, 4 * width)):
            layers += _conv_bn_relu(channels, out_channels)
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        side = input_size // 8
        if head == "fc":
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * side * side, hidden),
                nn.ReLU(),
                nn.Linear(hidden, num_classes),
            )
        elif head == "gap":
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            raise ModelError(f"unknown vgg head {head!r}; use 'fc' or 'gap'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# CIFAR VGG-16 (the VGG-16 convs with BatchNorm): conv3×3 widths as multiples of ``width``,
# "M" a 2×2 max-pool. The fifth pool of the 32×32 layout is a global average pool here, so that
# 28×28 inputs (1×1 after four pools) fit as well.
VGG16_PLAN = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8)


class VGG16(nn.Module):
    """CIFAR VGG-16 with BatchNorm: 13 conv3×3-BN-ReLU (2×w, 2×2w, 3×4w, 3×8w, 3×8w) with a max-pool
    after each of the first four stages, then global average pool and fc (``width=64`` is the
    original's 64-512 channels; the default 16, a quarter, trains on a CPU in minutes per epoch).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 16) -> None:
        super().__init__()
        _check_common("vgg16", num_classes, in_channels, input_size, min_size=16)
        if width < 1:
            raise ModelError(f"vgg16 width must be at least 1, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for step in VGG16_PLAN:
            if step == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(channels, int(step) * width)
                channels = int(step) * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two conv3×3-BN with a shortcut: identity, or 1×1 conv stride 2 + BN (option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016): conv3×3 w, 3 stages × 3 BasicBlocks (w, 2w, 4w).

    Stages 2 and 3 halve the resolution (28 → 14 → 7), then global average pool and fc.
    """

    NAME = "resnet20"
    BLOCKS = 3  # BasicBlocks per stage: depth 6·BLOCKS + 2

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 16) -> None:
        super().__init__()
        _check_common(self.NAME, num_classes, in_channels, input_size, min_size=4)
        if width < 1:
            raise ModelError(f"{self.NAME} width must be at least 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(width, width, stride=1, blocks=self.BLOCKS)
        self.layer2 = self._stage(width, 2 * width, stride=2, blocks=self.BLOCKS)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2, blocks=self.BLOCKS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, out_channels, stride),
            *(BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.flatten(self.pool(out)))


class ResNet56(ResNet20):
    """CIFAR-style ResNet-56 (He et al. 2016): ResNet-20's layout with 9 BasicBlocks per stage
    (55 conv3×3, two 1×1 shortcuts, fc)."""

    NAME = "resnet56"
    BLOCKS = 9


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise conv3×3 (groups = channels) + BN + ReLU, then pointwise 1×1 + BN + ReLU."""
    return nn.Sequential(
        OrderedDict(
            [
                (
                    "dw",
                    nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
                ),
                ("dw_bn", nn.BatchNorm2d(in_channels)),
                ("dw_relu", nn.ReLU()),
                ("pw", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                ("pw_bn", nn.BatchNorm2d(out_channels)),
                ("pw_relu", nn.ReLU()),
            ]
        )
    )


class MobileNet(nn.Module):
    """Small MobileNet (v1 style): stem conv3×3 w, six depthwise-separable blocks.

    Widths w → 2w → 4w → 4w → 8w → 8w → 8w with stride 2 at the 4w and first 8w blocks
    (28 → 14 → 7), then global average pool and fc.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 16) -> None:
        super().__init__()
        _check_common("mobilenet", num_classes, in_channels, input_size, min_size=4)
        if width < 1:
            raise ModelError(f"mobilenet width must be at least 1, got {width}")
        plan = ((2 * width, 1), (4 * width, 2), (4 * width, 1), (8 * width, 2), (8 * width, 1), (8 * width, 1))
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_channels, width))]
        channels = width
        for out_channels, stride in plan:
            blocks.append(_depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg": VGG,
    "vgg16": VGG16,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "mobilenet": MobileNet,
}


PLAIN_TYPES = (bool, int, float, str)
# The builders' arguments that count something (classes, channels, pixels): ints, never a bool or float.
COUNT_ARGUMENTS = ("num_classes", "in_channels", "input_size", "width", "hidden")


def build_model(name: str, meta: bool = False, **kwargs: object) -> nn.Module:
    """Build the built-in model ``name`` with ``kwargs`` (num_classes, in_channels, input_size, width...).

    ``name`` is looked up in :data:`MODELS`, never imported, and ``kwargs`` must be plain numbers,
    booleans or strings: both may come from a file. ``meta``: build on the meta device (shapes,
    no memory), for a caller that checks the shapes against a file's tensors before it
    materialises the model (:func:`qubocompress.models.train.load_state`).
    """
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; built-in models are: {', '.join(sorted(MODELS))}")
    odd = [key for key, value in kwargs.items() if not isinstance(value, PLAIN_TYPES)]
    if odd:
        raise ModelError(f"bad arguments for model {name!r}: {odd[0]} must be a number, boolean or string")
    counts = [
        key
        for key in COUNT_ARGUMENTS
        if key in kwargs and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], int))
    ]
    if counts:
        raise ModelError(
            f"bad arguments for model {name!r}: {counts[0]} must be a whole number, got {kwargs[counts[0]]!r}"
        )
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return MODELS[name](**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"bad arguments for model {name!r}: {reason}") from None

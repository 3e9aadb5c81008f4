"""The release's attention-map segmenter: segmentation_models_pytorch ``Unet`` on a ResNet encoder.

Rebuilt without smp or torchvision; the module tree mirrors theirs so
state-dict keys are exactly smp's (``encoder.conv1.weight``,
``encoder.layer1.0.conv1.weight``, ``decoder.blocks.0.conv1.0.weight``,
``segmentation_head.0.weight``, ...) without the Lightning ``model.`` prefix.
The architecture is read from the checkpoint's shapes, because the release
(resnet34, depth 5) and the tiny test model (resnet18, depth 3) differ.

As in smp, encoder stages deeper than ``encoder_depth`` are built (the
checkpoint carries them, and strict loading needs them) but never run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ct2pet_node.engine.networks.segmentation_spec import (
    SegmentationArchitecture,
    architecture_from_shapes,
    check_spec,
    segmentation_spec_from_shapes,
)
from ct2pet_node.errors import EngineError

__all__ = ["SegmentationArchitecture", "SegmentationUNet", "segmentation_spec_from_shapes"]


class BasicBlock(nn.Module):
    """torchvision ResNet BasicBlock (expansion 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 Bottleneck (stride on the 3x3 conv, expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


def _make_stage(
    block_cls: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, count: int, stride: int
) -> nn.Sequential:
    """torchvision's ``_make_layer``: a projection shortcut on the first block when shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block_cls.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block_cls.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block_cls.expansion),
        )
    blocks: list[nn.Module] = [block_cls(inplanes, planes, stride, downsample)]
    blocks += [block_cls(planes * block_cls.expansion, planes) for _ in range(1, count)]
    return nn.Sequential(*blocks)


class ResNetEncoder(nn.Module):
    """smp's ResNetEncoder: torchvision ResNet without ``fc``/``avgpool``, returning a feature pyramid."""

    def __init__(self, in_channels: int, block: str, layers: Sequence[int], depth: int):
        super().__init__()
        block_cls: type[BasicBlock] | type[Bottleneck] = BasicBlock if block == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Sequential] = []
        inplanes = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            # A stage with no blocks is one past the depth that a checkpoint chose not to carry
            # (our own trained models); the release carries them, so they are built when present.
            # An empty Sequential holds no weights, so the state dict is the same as without it.
            stride = 1 if index == 0 else 2
            stages.append(
                _make_stage(block_cls, inplanes, planes, count, stride) if count > 0 else nn.Sequential()
            )
            inplanes = planes * block_cls.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        expansion = block_cls.expansion
        self.out_channels = (
            in_channels,
            64,
            64 * expansion,
            128 * expansion,
            256 * expansion,
            512 * expansion,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [x, stride 2, stride 4, ..., stride 2**depth] features (depth + 1 entries)."""
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        stages = (nn.Sequential(self.maxpool, self.layer1), self.layer2, self.layer3, self.layer4)
        for stage in stages[: self.depth - 1]:
            x = stage(x)
            features.append(x)
        return features


class Conv2dReLU(nn.Sequential):
    """smp's Conv2dReLU with batch norm: conv (no bias) -> BatchNorm -> ReLU, keys ``0``/``1``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Nearest upsampling to the skip's size (x2 without one), concat skip, two Conv2dReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)
        result: torch.Tensor = self.conv2(self.conv1(x))
        return result


class UnetDecoder(nn.Module):
    """smp's UnetDecoder without a center block and without attention (both Identity there)."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        # Drop the identity feature, deepest first: the head, then the skips, then no skip.
        reversed_channels = list(encoder_channels[1:])[::-1]
        in_channels = [reversed_channels[0], *decoder_channels[:-1]]
        skip_channels = [*reversed_channels[1:], 0]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o)
            for i, s, o in zip(in_channels, skip_channels, decoder_channels, strict=True)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        head, *skips = list(features[1:])[::-1]
        x = head
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < len(skips) else None)
        return x


class SegmentationUNet(nn.Module):
    """smp ``Unet`` (ResNet encoder, batch-norm decoder, no center, no attention, identity activation).

    ``forward`` maps a CT batch (B, in_channels, H, W), H and W divisible by
    2**depth, to logits (B, classes, H, W). No input normalisation is applied,
    as in the release.
    """

    def __init__(self, arch: SegmentationArchitecture):
        super().__init__()
        self.architecture = arch
        self.encoder = ResNetEncoder(arch.in_channels, arch.block, arch.layers, arch.depth)
        self.decoder = UnetDecoder(self.encoder.out_channels[: arch.depth + 1], arch.decoder_channels)
        head = nn.Conv2d(
            arch.decoder_channels[-1], arch.classes, arch.head_kernel, padding=arch.head_kernel // 2
        )
        # smp's SegmentationHead: conv, Identity upsampling, Identity activation (keys 0, 1, 2).
        self.segmentation_head = nn.Sequential(head, nn.Identity(), nn.Identity())

    @classmethod
    def from_state_dict_shapes(
        cls, shapes: Mapping[str, Sequence[int]], spec: Mapping[str, Any] | None = None
    ) -> SegmentationUNet:
        """Build the network a checkpoint describes.

        Parameters
        ----------
        shapes : Mapping[str, tuple[int, ...]]
            Key -> shape of the checkpoint's state dict, with or without the
            Lightning ``model.`` prefix (``mean``/``std`` and other unprefixed
            keys are ignored when the prefix is present).
        spec : Mapping or None
            Optional ``segmentation.json`` content (or its ``segmentation``
            entry) to cross-check against the shapes.

        Raises
        ------
        WeightsError
            When the shapes are not an smp ResNet Unet or disagree with ``spec``.
        """
        arch = architecture_from_shapes(shapes)
        if spec is not None:
            check_spec(arch, spec)
        return cls(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.architecture.depth
        if x.shape[-1] % 2**depth or x.shape[-2] % 2**depth:
            raise EngineError(
                f"segmentation input {tuple(x.shape)}: H and W must be divisible by {2**depth}; "
                "resize or pad first"
            )
        result: torch.Tensor = self.segmentation_head(self.decoder(self.encoder(x)))
        return result

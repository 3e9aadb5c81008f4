"""What a segmentation checkpoint's shapes say about its smp ``Unet``, and the spec that names it.

Pure values, no torch: the network (:mod:`.segmentation`) is built from a
:class:`SegmentationArchitecture`, and the importer records its
:meth:`~SegmentationArchitecture.spec` (``segmentation.json`` keys) in the
manifest. Shapes come without the Lightning ``model.`` prefix, or with it
(then unprefixed keys such as ``mean``/``std`` are ignored).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ct2pet_node.errors import WeightsError

__all__ = [
    "SegmentationArchitecture",
    "architecture_from_shapes",
    "check_spec",
    "segmentation_spec_from_shapes",
]

_LAYER_KEY = re.compile(r"^encoder\.layer(\d)\.(\d+)\.")
_DECODER_KEY = re.compile(r"^decoder\.blocks\.(\d+)\.conv1\.0\.weight$")
# An encoder no smp name fits is recorded by its counts, e.g. resnet-basic-1-2-2-1.
_COUNTS_NAME = re.compile(r"^resnet-(basic|bottleneck)-(\d+)-(\d+)-(\d+)-(\d+)$")
# torchvision's names for the block counts smp uses per encoder.
_ENCODER_NAMES = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


@dataclass(frozen=True, slots=True)
class SegmentationArchitecture:
    """What a segmentation checkpoint's shapes say about its network.

    Attributes
    ----------
    in_channels, classes : int
        Image channels in, logit channels out.
    block : str
        ``"basic"`` (resnet18/34) or ``"bottleneck"`` (resnet50 and deeper).
    layers : tuple[int, int, int, int]
        Residual blocks in encoder stages layer1..layer4.
    decoder_channels : tuple[int, ...]
        Output channels of each decoder block; its length is the encoder depth.
    head_kernel : int
        Kernel size of the segmentation head convolution.
    """

    in_channels: int
    classes: int
    block: str
    layers: tuple[int, int, int, int]
    decoder_channels: tuple[int, ...]
    head_kernel: int

    @property
    def depth(self) -> int:
        return len(self.decoder_channels)

    @property
    def encoder_name(self) -> str | None:
        """The smp name whose block counts are exactly ``layers``, else None."""
        return _ENCODER_NAMES.get((self.block, self.layers))

    @property
    def encoder_label(self) -> str:
        """The smp name these weights could come from, else ``resnet-<block>-<n1>-<n2>-<n3>-<n4>``.

        A checkpoint without the stages past its depth (our trained models)
        still names a ResNet when its present stages fit exactly one.
        """
        fitting = [
            name
            for (block, counts), name in _ENCODER_NAMES.items()
            if block == self.block and _fits(self.layers, counts)
        ]
        if len(fitting) == 1:
            return fitting[0]
        return f"resnet-{self.block}-" + "-".join(str(count) for count in self.layers)

    def spec(self) -> dict[str, Any]:
        """The smp-style ``Unet`` constructor (``segmentation.json`` keys) that these shapes describe."""
        return {
            "arch": "Unet",
            "in_channels": self.in_channels,
            "classes": self.classes,
            "encoder_name": self.encoder_label,
            "encoder_depth": self.depth,
            "decoder_channels": list(self.decoder_channels),
        }


def _fits(present: Sequence[int], named: Sequence[int]) -> bool:
    # A stage absent from the weights (count 0) fits any count: it is past the depth, never run.
    return all(have in (0, want) for have, want in zip(present, named, strict=True))


def _named_encoder(name: str) -> tuple[str, tuple[int, ...]] | None:
    """(block, counts) of an smp ResNet name or of a ``resnet-<block>-<n1>-..-<n4>`` label."""
    for (block, counts), known in _ENCODER_NAMES.items():
        if known == name:
            return block, counts
    match = _COUNTS_NAME.match(name)
    if match is None:
        return None
    return match.group(1), tuple(int(count) for count in match.groups()[1:])


def _strip_prefix(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if any(key.startswith("model.") for key in shapes):
        return {key[len("model.") :]: tuple(v) for key, v in shapes.items() if key.startswith("model.")}
    return {key: tuple(v) for key, v in shapes.items()}


def architecture_from_shapes(shapes: Mapping[str, Sequence[int]]) -> SegmentationArchitecture:
    """Read the architecture from a state dict's key -> shape map.

    Depth and decoder widths come from the decoder blocks; the encoder's
    block type and per-stage counts from the ``encoder.layerN.M.`` keys
    present (0 for a stage past the depth that the file leaves out).

    Raises
    ------
    WeightsError
        The keys are not an smp ``Unet`` on a ResNet encoder.
    """
    s = _strip_prefix(shapes)
    for required in ("encoder.conv1.weight", "segmentation_head.0.weight"):
        if required not in s:
            raise WeightsError(
                f"segmentation checkpoint has no {required!r}: not an smp Unet with a ResNet encoder; "
                "export the release's segmentation.ckpt unchanged"
            )
    counts = [0, 0, 0, 0]
    for key in s:
        match = _LAYER_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            counts[stage] = max(counts[stage], index + 1)
    decoder = sorted(
        (int(m.group(1)), shape[0]) for key, shape in s.items() if (m := _DECODER_KEY.match(key))
    )
    if not decoder or [i for i, _ in decoder] != list(range(len(decoder))) or len(decoder) > 5:
        raise WeightsError(
            f"segmentation checkpoint has decoder blocks {[i for i, _ in decoder]}; expected 0..d-1, d<=5"
        )
    used = len(decoder) - 1  # stages layer1..layer{depth-1} run; deeper ones may be absent
    if 0 in counts[:used] or any(counts[i] == 0 and any(counts[i:]) for i in range(used, 4)):
        raise WeightsError(
            f"segmentation checkpoint encoder stages have block counts {counts}; the first {used} must be "
            "> 0 and an absent stage may only be followed by absent ones"
        )
    head = s["segmentation_head.0.weight"]
    return SegmentationArchitecture(
        in_channels=s["encoder.conv1.weight"][1],
        classes=head[0],
        block="bottleneck" if "encoder.layer1.0.conv3.weight" in s else "basic",
        layers=(counts[0], counts[1], counts[2], counts[3]),
        decoder_channels=tuple(width for _, width in decoder),
        head_kernel=head[-1],
    )


def _encoder_problem(arch: SegmentationArchitecture, name: str) -> str | None:
    named = _named_encoder(name)
    if named is None:
        return (
            f"encoder_name {name!r} is no ResNet this engine builds (use one of "
            f"{sorted(set(_ENCODER_NAMES.values()))} or resnet-<basic|bottleneck>-<n1>-<n2>-<n3>-<n4>)"
        )
    block, counts = named
    if block != arch.block or not _fits(arch.layers, counts):
        return (
            f"encoder_name {name!r} ({block} blocks {list(counts)} per stage) but the weights are "
            f"{arch.encoder_label} ({arch.block} blocks {list(arch.layers)})"
        )
    return None


def check_spec(arch: SegmentationArchitecture, spec: Mapping[str, Any]) -> None:
    """Refuse a spec (``segmentation.json`` content or its ``segmentation`` entry) the shapes contradict.

    Keys the spec leaves out are not checked. ``encoder_name`` may be an smp
    ResNet name or a ``resnet-<block>-<n1>-<n2>-<n3>-<n4>`` label.

    Raises
    ------
    WeightsError
        Naming every difference.
    """
    spec = spec.get("segmentation", spec)
    problems = []
    if "encoder_depth" in spec and int(spec["encoder_depth"]) != arch.depth:
        problems.append(f"encoder_depth {spec['encoder_depth']} but the weights have depth {arch.depth}")
    if "decoder_channels" in spec and tuple(spec["decoder_channels"]) != arch.decoder_channels:
        problems.append(
            f"decoder_channels {spec['decoder_channels']} but the weights have {arch.decoder_channels}"
        )
    if "encoder_name" in spec:
        problem = _encoder_problem(arch, str(spec["encoder_name"]))
        if problem:
            problems.append(problem)
    for field in ("in_channels", "classes"):
        if field in spec and int(spec[field]) != getattr(arch, field):
            problems.append(f"{field} {spec[field]} but the weights have {getattr(arch, field)}")
    if spec.get("arch", "Unet") != "Unet":
        problems.append(f"arch {spec['arch']!r}; only smp 'Unet' is supported")
    if problems:
        raise WeightsError(
            "segmentation spec disagrees with its checkpoint: "
            + "; ".join(problems)
            + "; ship the matching pair"
        )


def segmentation_spec_from_shapes(
    shapes: Mapping[str, Sequence[int]], given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The smp ``Unet`` constructor a checkpoint's shapes describe, checked against ``given``.

    The depth and decoder widths come from the decoder blocks, not from the
    encoder stages present: the release stores stages past the depth too.

    Raises
    ------
    WeightsError
        The shapes are not an smp ResNet Unet, or ``given`` (a
        ``segmentation.json`` or its ``segmentation`` entry) disagrees with
        them; the message names each difference.
    """
    arch = architecture_from_shapes(shapes)
    if given is not None:
        check_spec(arch, given)
    return arch.spec()

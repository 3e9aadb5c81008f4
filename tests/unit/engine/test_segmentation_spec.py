"""The segmenter's constructor read from shapes: smp names, count labels, and specs checked against them."""

from __future__ import annotations

import pytest

from ct2pet_node.engine.networks.segmentation_spec import (
    SegmentationArchitecture,
    check_spec,
    segmentation_spec_from_shapes,
)
from ct2pet_node.errors import WeightsError


def _arch(
    block: str, layers: tuple[int, int, int, int], decoder: tuple[int, ...]
) -> SegmentationArchitecture:
    return SegmentationArchitecture(
        in_channels=1, classes=1, block=block, layers=layers, decoder_channels=decoder, head_kernel=3
    )


@pytest.mark.parametrize(
    ("block", "layers", "label"),
    [
        ("basic", (3, 4, 6, 3), "resnet34"),
        ("basic", (2, 2, 0, 0), "resnet18"),  # stages past the depth left out: still one fit
        ("bottleneck", (3, 4, 6, 3), "resnet50"),
        ("bottleneck", (3, 4, 0, 0), "resnet-bottleneck-3-4-0-0"),  # resnet50 or resnet101
        ("basic", (1, 2, 1, 1), "resnet-basic-1-2-1-1"),
    ],
)
def test_encoder_is_named_by_smp_when_one_name_fits_else_by_its_counts(
    block: str, layers: tuple[int, int, int, int], label: str
) -> None:
    arch = _arch(block, layers, (32, 16, 8))
    assert arch.encoder_label == label
    check_spec(arch, arch.spec())  # what the importer records is what loading accepts


def test_spec_of_release_shaped_keys_comes_from_the_decoder_not_the_stored_stages() -> None:
    shapes = {
        "model.encoder.conv1.weight": (64, 1, 7, 7),
        **{
            f"model.encoder.layer{stage}.{block}.conv1.weight": (1,)
            for stage in range(1, 5)
            for block in range(2)
        },
        "model.decoder.blocks.0.conv1.0.weight": (48, 512, 3, 3),
        "model.decoder.blocks.1.conv1.0.weight": (24, 112, 3, 3),
        "model.decoder.blocks.2.conv1.0.weight": (16, 88, 3, 3),
        "model.decoder.blocks.3.conv1.0.weight": (8, 16, 3, 3),
        "model.segmentation_head.0.weight": (1, 8, 3, 3),
        "mean": (1, 3, 1, 1),
    }
    assert segmentation_spec_from_shapes(shapes) == {
        "arch": "Unet",
        "in_channels": 1,
        "classes": 1,
        "encoder_name": "resnet18",
        "encoder_depth": 4,
        "decoder_channels": [48, 24, 16, 8],
    }


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "resnet34",
            "encoder_name 'resnet34' (basic blocks [3, 4, 6, 3] per stage) but the weights are resnet18",
        ),
        ("resnet50", "encoder_name 'resnet50' (bottleneck blocks"),
        ("resnet-basic-2-2-2-1", "but the weights are resnet18 (basic blocks [2, 2, 2, 2])"),
        ("efficientnet-b0", "is no ResNet this engine builds (use one of ['resnet101'"),
    ],
)
def test_encoder_name_that_does_not_fit_is_refused_with_the_difference(name: str, said: str) -> None:
    with pytest.raises(WeightsError, match="segmentation spec disagrees") as caught:
        check_spec(_arch("basic", (2, 2, 2, 2), (16, 8)), {"encoder_name": name})
    assert said in str(caught.value)

"""The CPDM release's neural networks, as plain ``nn.Module`` classes with the release's keys."""

from ct2pet_node.engine.networks.build import Networks, build_networks
from ct2pet_node.engine.networks.conditioner import SpatialRescaler
from ct2pet_node.engine.networks.release_config import RELEASE_CONFIG
from ct2pet_node.engine.networks.segmentation import (
    SegmentationArchitecture,
    SegmentationUNet,
    segmentation_spec_from_shapes,
)
from ct2pet_node.engine.networks.unet import UNet, timestep_embedding
from ct2pet_node.engine.networks.vqgan import VQGAN, VectorQuantizer

__all__ = [
    "RELEASE_CONFIG",
    "VQGAN",
    "Networks",
    "SegmentationArchitecture",
    "SegmentationUNet",
    "SpatialRescaler",
    "UNet",
    "VectorQuantizer",
    "build_networks",
    "segmentation_spec_from_shapes",
    "timestep_embedding",
]

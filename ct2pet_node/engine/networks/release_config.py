"""The full-size CPDM release's network hyper-parameters, as its YAML states them.

Every number here was checked against ``cpdm-official-manifest.json`` (the
release's key/shape listing) by ``tests/unit/engine/test_networks.py``, which
builds each network on the meta device and compares key for key, shape for
shape. The values also agree with the authors' public config
(``configs/RegCPDM.yaml`` of thanhhff/RegCPDM, with 9 UNet input channels for
CPDM instead of RegCPDM's 12). Numbers a state dict cannot reveal (the
attention resolutions 32 and 16, which a 64x64 latent with three
downsamplings never reaches, and num_heads 8, which num_head_channels 64
overrides) are taken from that config; both choices give 8 heads of 64
channels at the one attention resolution used (ds 8, 512 channels).

The structure mirrors the release YAML: ``VQGAN`` is ``model.VQGAN.params``,
``UNetParams`` is ``model.BB.params.UNetParams``, ``CondStageParams`` is
``model.CondStageParams``; ``segmentation`` is the constructor that the tiny
reference's ``segmentation.json`` states for the release.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["RELEASE_CONFIG"]


def _frozen(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: _frozen(v) if isinstance(v, Mapping) else v for k, v in tree.items()})


RELEASE_CONFIG: Mapping[str, Any] = _frozen(
    {
        "image_size": 256,
        "VQGAN": {
            "ddconfig": {
                "attn_resolutions": (),
                "ch": 128,
                "ch_mult": (1, 2, 4),
                "double_z": False,
                "dropout": 0.0,
                "in_channels": 1,
                "out_ch": 1,
                "num_res_blocks": 1,
                "resolution": 256,
                "z_channels": 3,
            },
            "embed_dim": 3,
            "n_embed": 8192,
        },
        "UNetParams": {
            "attention_resolutions": (32, 16, 8),
            "channel_mult": (1, 2, 3, 4),
            "condition_key": "SpatialRescaler",
            "context_dim": None,
            "conv_resample": True,
            "dims": 2,
            "image_size": 64,
            "in_channels": 9,
            "model_channels": 128,
            "num_head_channels": 64,
            "num_heads": 8,
            "num_res_blocks": 2,
            "out_channels": 3,
            "resblock_updown": True,
            "use_scale_shift_norm": True,
            "use_spatial_transformer": False,
        },
        "CondStageParams": {"in_channels": 1, "n_stages": 2, "out_channels": 3},
        "segmentation": {
            "arch": "Unet",
            "in_channels": 1,
            "classes": 1,
            "encoder_name": "resnet34",
            "encoder_depth": 5,
            "decoder_channels": (256, 128, 64, 32, 16),
        },
    }
)

"""The release's SpatialRescaler: the conditioner that shrinks a guide map to the latent grid.

CPDM guides the denoiser with two image-sized maps (attention and attenuation).
Each is brought to the latent resolution by repeated bilinear halving and then
given the latent's channel count by a bias-free 1x1 convolution; the result is
concatenated to the noisy latent on channels before the UNet runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ct2pet_node.errors import ConfigError

__all__ = ["SpatialRescaler"]

_SUPPORTED_METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")


class SpatialRescaler(nn.Module):
    """Rescale a map ``n_stages`` times by ``multiplier``, then map its channels.

    State-dict keys are exactly the release's: ``channel_mapper.weight`` only
    (shape ``(out_channels, in_channels, 1, 1)``, no bias).

    Parameters
    ----------
    n_stages : int
        Number of successive interpolations (the release uses 2, i.e. a
        factor 4 matching the VQGAN's downsampling).
    in_channels, out_channels : int
        Channels of the guide map and of the latent it is concatenated to.
    method : str
        ``torch.nn.functional.interpolate`` mode; the release uses bilinear.
    multiplier : float
        Scale factor of each stage (0.5 halves height and width).
    """

    def __init__(
        self,
        n_stages: int = 1,
        in_channels: int = 3,
        out_channels: int | None = None,
        method: str = "bilinear",
        multiplier: float = 0.5,
    ) -> None:
        super().__init__()
        if n_stages < 0:
            raise ConfigError([f"CondStageParams.n_stages is {n_stages}; it must be >= 0"])
        if method not in _SUPPORTED_METHODS:
            raise ConfigError([f"SpatialRescaler method {method!r} is not one of {_SUPPORTED_METHODS}"])
        self.n_stages = n_stages
        self.method = method
        self.multiplier = multiplier
        self.channel_mapper: nn.Conv2d | None = None
        if out_channels is not None:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (B, C_in, H, W) to (B, C_out, H / 2**n_stages, W / 2**n_stages)."""
        # align_corners only exists for the linear family; the release leaves it False.
        align = False if self.method in ("linear", "bilinear", "trilinear", "bicubic") else None
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method, align_corners=align)
        if self.channel_mapper is not None:
            x = self.channel_mapper(x)
        return x

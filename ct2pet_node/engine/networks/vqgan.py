"""The release's first stage: a taming-transformers VQGAN (VQModel) without its losses.

CPDM works in the latent space of this autoencoder. At inference the release
encodes without quantising (``quant_conv(encoder(x))``) and quantises only
right before decoding, so :meth:`VQGAN.encode` and :meth:`VQGAN.decode` keep
that split. State-dict keys are exactly the release's (``encoder.*``,
``decoder.*``, ``quantize.embedding.weight``, ``quant_conv.*``,
``post_quant_conv.*``), without any ``vqgan.`` prefix.

All tensors are (B, C, H, W). GroupNorm runs in float32 whatever the input
dtype, so the network behaves the same under ``torch.autocast``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ct2pet_node.engine.networks.unet import GroupNorm32

__all__ = ["VQGAN", "Decoder", "Encoder", "VectorQuantizer"]


def _normalize(channels: int) -> nn.GroupNorm:
    # taming's Normalize: 32 groups, eps 1e-6, affine; computed in float32 like the UNet's.
    return GroupNorm32(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, conv_shortcut: bool = False):
        super().__init__()
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.use_conv_shortcut = conv_shortcut
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        result: torch.Tensor = x + h
        return result


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 ``q``/``k``/``v``/``proj_out`` convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        # (B, 1 head, HW tokens, C): SDPA computes softmax(q k^T / sqrt(C)) v as taming does,
        # without materialising the HW x HW matrix on backends that fuse it.
        q = self.q(h).reshape(b, 1, c, height * width).transpose(2, 3)
        k = self.k(h).reshape(b, 1, c, height * width).transpose(2, 3)
        v = self.v(h).reshape(b, 1, c, height * width).transpose(2, 3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(b, c, height, width)
        result: torch.Tensor = x + self.proj_out(out)
        return result


class Downsample(nn.Module):
    """Halve H and W; taming pads right/bottom only, then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            result: torch.Tensor = self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
            return result
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double H and W by nearest neighbour, then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _Level(nn.Module):
    """One resolution level: ``block`` and ``attn`` lists plus an optional resampler (key names)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        # Only the resampler a level has is registered, so the keys stay taming's.
        self.downsample: nn.Module | None = None
        self.upsample: nn.Module | None = None

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i_block, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i_block](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.block_2(self.attn_1(self.block_1(x)))
        return result


class Encoder(nn.Module):
    """taming ``Encoder``: image (B, in_channels, H, W) -> (B, z, H / 2**(L-1), W / 2**(L-1))."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_ch_mult = (1, *tuple(ch_mult))
        curr_res = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for i_level, mult in enumerate(ch_mult):
            level = _Level()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * mult
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != len(ch_mult) - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in cast(list[_Level], list(self.down)):
            h = level.run_blocks(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h)
        result: torch.Tensor = self.conv_out(F.silu(self.norm_out(h)))
        return result


class Decoder(nn.Module):
    """taming ``Decoder``: latent (B, z, h, w) -> image (B, out_ch, h * 2**(L-1), w * 2**(L-1))."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        num_levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (num_levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        levels: list[_Level] = []
        for i_level in reversed(range(num_levels)):
            level = _Level()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            levels.insert(0, level)
        # Stored lowest level first (``up.0`` is full resolution), run deepest first.
        self.up = nn.ModuleList(levels)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in cast(list[_Level], list(self.up))[::-1]:
            h = level.run_blocks(h)
            if level.upsample is not None:
                h = level.upsample(h)
        result: torch.Tensor = self.conv_out(F.silu(self.norm_out(h)))
        return result


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser (taming ``VectorQuantizer2``, inference part only)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise ``z`` (B, C, h, w); return (zq (B, C, h, w), indices (B, h * w) row-major)."""
        b, c, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c).float()
        codebook = self.embedding.weight.float()
        # Code choice stays float32 under autocast: a half-precision matmul would flip near-ties.
        with torch.autocast(device_type=z.device.type, enabled=False):
            # taming's expansion |z|^2 + |e|^2 - 2 z.e, kept verbatim so near-ties pick the same code.
            distances = (
                flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2.0 * flat @ codebook.t()
            )
        indices = torch.argmin(distances, dim=1)
        zq = F.embedding(indices, self.embedding.weight).view(b, height, width, c)
        zq = zq.permute(0, 3, 1, 2).to(z.dtype)
        return zq, indices.view(b, height * width)


class VQGAN(nn.Module):
    """The release's first-stage autoencoder (latent factor 2**(len(ch_mult)-1)).

    Parameters
    ----------
    ddconfig : Mapping
        The release's ``VQGAN.params.ddconfig`` (ch, ch_mult, num_res_blocks,
        attn_resolutions, dropout, in_channels, out_ch, resolution,
        z_channels, double_z).
    embed_dim : int
        Codebook vector length (the latent channel count).
    n_embed : int
        Codebook size.

    Notes
    -----
    ``vqgan.quantize(z)`` calls the :class:`VectorQuantizer` submodule (its
    name fixes the ``quantize.embedding.weight`` key) and returns
    ``(zq, indices)``.
    """

    def __init__(self, ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int):
        super().__init__()
        common: dict[str, Any] = {
            "ch": int(ddconfig["ch"]),
            "ch_mult": tuple(int(m) for m in ddconfig["ch_mult"]),
            "num_res_blocks": int(ddconfig["num_res_blocks"]),
            "attn_resolutions": tuple(int(r) for r in ddconfig.get("attn_resolutions") or ()),
            "resolution": int(ddconfig["resolution"]),
            "z_channels": int(ddconfig["z_channels"]),
            "dropout": float(ddconfig.get("dropout", 0.0)),
        }
        double_z = bool(ddconfig.get("double_z", False))
        z_channels = common["z_channels"]
        self.encoder = Encoder(in_channels=int(ddconfig["in_channels"]), double_z=double_z, **common)
        self.decoder = Decoder(out_ch=int(ddconfig["out_ch"]), **common)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(2 * z_channels if double_z else z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.downsampling_factor = 2 ** (len(common["ch_mult"]) - 1)

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> VQGAN:
        """Build from the release's ``model.VQGAN.params`` mapping (``ckpt_path``, ``lossconfig`` ignored)."""
        return cls(params["ddconfig"], embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_channels, H, W) -> unquantised latent (B, embed_dim, H / f, W / f)."""
        result: torch.Tensor = self.quant_conv(self.encoder(x))
        return result

    def decode_quantized(self, zq: torch.Tensor) -> torch.Tensor:
        """Already-quantised latent (B, embed_dim, h, w) -> image (B, out_ch, h * f, w * f)."""
        result: torch.Tensor = self.decoder(self.post_quant_conv(zq))
        return result

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unquantised latent -> image, quantising first as the release does."""
        return self.decode_quantized(self.quantize(z)[0])

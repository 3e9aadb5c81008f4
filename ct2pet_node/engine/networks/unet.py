"""The release's denoiser: the openai/guided-diffusion ``UNetModel`` as vendored by BBDM/CPDM.

Only the configuration the release can use is built: 2-D, no class labels,
no spatial transformer. With ``condition_key: SpatialRescaler`` the caller
concatenates the conditioner output to the noisy latent on channels before
calling :meth:`UNet.forward` (hence ``in_channels`` 9 = 3 latent + 2 x 3
context). State-dict keys are exactly the release's (``time_embed.0.weight``,
``input_blocks.0.0.weight``, ..., ``out.2.weight``), without the
``denoise_fn.`` prefix.

All tensors are (B, C, H, W); GroupNorm runs in float32 whatever the input
dtype, as guided-diffusion's ``GroupNorm32`` does, so ``torch.autocast`` and
channels_last are safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ct2pet_node.errors import ConfigError

__all__ = ["GroupNorm32", "UNet", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), cosines first (guided-diffusion's formula)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype and memory format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        if channels_last and y.device.type == "cpu":
            # PyTorch's CPU channels_last GroupNorm kernel takes the variance as E[x^2] - E[x]^2
            # and loses ~1e-3 on the VQGAN's activations; the contiguous kernel is exact enough.
            out = super().forward(y.contiguous())
            return out.to(dtype=x.dtype, memory_format=torch.channels_last)
        return super().forward(y).type(x.dtype)


def _normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv when ``use_conv`` (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv when ``use_conv``, else 2x2 average pooling (key ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op: nn.Module
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.op(x)
        return result


class ResBlock(TimestepBlock):
    """guided-diffusion ResBlock, optionally resampling (``up``/``down``) inside the block."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # Resample between the activation and the conv, and resample the skip path too.
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        result: torch.Tensor = self.skip_connection(x) + h
        return result


class AttentionBlock(nn.Module):
    """Multi-head spatial self-attention (keys ``norm``, ``qkv``, ``proj_out``; 1-D convs).

    ``use_new_attention_order`` False is guided-diffusion's ``QKVAttentionLegacy``
    (the qkv channels are grouped per head: [q_h, k_h, v_h] for each head h);
    True is ``QKVAttention`` (all queries, then all keys, then all values).
    """

    def __init__(self, channels: int, num_heads: int, use_new_attention_order: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ConfigError(
                [
                    f"{channels} attention channels cannot be split into {num_heads} heads; "
                    "fix num_heads / num_head_channels"
                ]
            )
        self.num_heads = num_heads
        self.use_new_attention_order = use_new_attention_order
        self.norm = _normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        head_ch = c // self.num_heads
        if self.use_new_attention_order:
            q, k, v = (t.reshape(b * self.num_heads, head_ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.num_heads, 3 * head_ch, length).split(head_ch, dim=1)
        # softmax(q^T k / sqrt(head_ch)) v, identical to the release's two 1/sqrt(sqrt(ch)) scalings.
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, length))
        result: torch.Tensor = (x + h).reshape(b, c, *spatial)
        return result


class UNet(nn.Module):
    """guided-diffusion UNetModel (2-D) with the release's options; see :meth:`from_config`."""

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.model_channels = model_channels
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def res(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, **updown)

        def attn(ch: int, heads: int) -> AttentionBlock:
            # num_head_channels, when given, overrides num_heads (guided-diffusion's rule).
            n = heads if num_head_channels == -1 else ch // num_head_channels
            return AttentionBlock(ch, n, use_new_attention_order)

        ch = model_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            _normalization(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1)
        )

    @classmethod
    def from_config(cls, unet_params: Mapping[str, Any]) -> UNet:
        """Build from the release's ``model.BB.params.UNetParams`` mapping.

        Raises
        ------
        ConfigError
            For options the release's inference never needs and this port does
            not build (spatial transformer, class labels, dims other than 2).
        """
        p = unet_params
        problems = []
        if p.get("use_spatial_transformer", False):
            problems.append("UNetParams.use_spatial_transformer is true; only false (concat conditioning)")
        if p.get("num_classes") is not None:
            problems.append(f"UNetParams.num_classes is {p['num_classes']!r}; class labels are not supported")
        if int(p.get("dims", 2)) != 2:
            problems.append(f"UNetParams.dims is {p['dims']!r}; only 2-D is supported")
        if problems:
            raise ConfigError(problems)
        return cls(
            in_channels=int(p["in_channels"]),
            model_channels=int(p["model_channels"]),
            out_channels=int(p["out_channels"]),
            num_res_blocks=int(p["num_res_blocks"]),
            attention_resolutions=tuple(int(r) for r in p["attention_resolutions"]),
            dropout=float(p.get("dropout", 0.0)),
            channel_mult=tuple(int(m) for m in p.get("channel_mult", (1, 2, 4, 8))),
            conv_resample=bool(p.get("conv_resample", True)),
            num_heads=int(p.get("num_heads", 1)),
            num_head_channels=int(p.get("num_head_channels", -1)),
            num_heads_upsample=int(p.get("num_heads_upsample", -1)),
            use_scale_shift_norm=bool(p.get("use_scale_shift_norm", False)),
            resblock_updown=bool(p.get("resblock_updown", False)),
            use_new_attention_order=bool(p.get("use_new_attention_order", False)),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predict from x (B, in_channels, h, w) at integer-valued ``timesteps`` (B,).

        ``x`` is the noisy latent with the context already concatenated on
        channels; h and w must be divisible by 2**(len(channel_mult) - 1).
        """
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        result: torch.Tensor = self.out(h)
        return result

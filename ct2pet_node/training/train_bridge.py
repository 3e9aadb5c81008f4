"""Stage 3: the Brownian-bridge denoiser and its two conditioners, with BBDM's objective.

As in the release (BBDM ``p_losses``): encode PET to x0 and CT to y with the
frozen first stage (unquantised), draw t uniformly in [0, T) and Gaussian
noise, form x_t = (1 - m_t) x0 + m_t y + sqrt(var_t) noise, and regress the
schedule's objective (``grad``: m_t (y - x0) + sqrt(var_t) noise) with an L1
loss from the UNet fed concat(x_t, context). The context is built from the
attention map the trained segmentation net predicts (what inference will
see) and the attenuation map. Latents and maps are computed once up front,
because the first stage and the segmenter are frozen here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ct2pet_node.engine.attenuation import attenuation_map
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.networks import VQGAN, SpatialRescaler, UNet
from ct2pet_node.training.checkpoints import Ema, StageRun
from ct2pet_node.training.config import BridgeConfig


def cond_stage_params(latent_factor: int, latent_channels: int) -> dict[str, int]:
    """The release-style ``CondStageParams``: halve log2(factor) times, map 1 -> C channels."""
    return {"n_stages": int(math.log2(latent_factor)), "in_channels": 1, "out_channels": latent_channels}


def build_bridge_networks(cfg: BridgeConfig, cond: Mapping[str, int]) -> dict[str, nn.Module]:
    """Fresh ``unet``, ``cond_attention`` and ``cond_attenuation`` (output conv of the UNet zeroed)."""
    unet = UNet.from_config(cfg.unet)
    # guided-diffusion zero-initialises the output convolution: the untrained net predicts 0.
    output_conv = unet.out[2]
    assert isinstance(output_conv, nn.Conv2d)
    nn.init.zeros_(output_conv.weight)
    if output_conv.bias is not None:
        nn.init.zeros_(output_conv.bias)
    return {
        "unet": unet,
        "cond_attention": SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
        "cond_attenuation": SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
    }


@torch.no_grad()
def encode_all(vqgan: VQGAN, images: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    """Unquantised latents quant_conv(encoder(x)) of (N, 1, H, W) images, on the CPU."""
    vqgan.eval()
    return torch.cat(
        [
            vqgan.encode(images[s : s + batch].to(device)).float().cpu()
            for s in range(0, images.shape[0], batch)
        ]
    )


def attenuation_maps(ct01: torch.Tensor, kvp: float) -> torch.Tensor:
    """exp(-mu_511keV) maps (N, 1, H, W) at ``kvp`` from CT in [0, 1], as inference computes them."""
    return torch.from_numpy(attenuation_map(ct01.numpy().astype(np.float32), kvp))


def bridge_stage(
    cfg: BridgeConfig,
    networks: Mapping[str, nn.Module],
    caches: Mapping[str, torch.Tensor],
    device: torch.device,
    seed: int,
    fingerprint: str,
) -> StageRun:
    """The bridge stage for :func:`~ct2pet_node.training.checkpoints.run_stage`.

    Parameters
    ----------
    caches : Mapping
        CPU tensors over the N training slices: ``x0`` (N, C, h, w) PET latents,
        ``y`` CT latents, ``attention`` (N, 1, H, W) binary maps and
        ``attenuation`` (N, 1, H, W) exp(-mu) maps.
    """
    schedule = BridgeSchedule.from_config(cfg.schedule)
    for net in networks.values():
        net.to(device)
    parameters: list[Any] = [p for net in networks.values() for p in net.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr)
    generator = torch.Generator("cpu").manual_seed(seed)
    ema = Ema(networks, cfg.ema_decay, cfg.ema_start)
    unet, cond_attention, cond_attenuation = (
        networks["unet"],
        networks["cond_attention"],
        networks["cond_attenuation"],
    )
    count = caches["x0"].shape[0]

    def step(_: int, gen: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, count, (cfg.batch_size,), generator=gen)
        t = torch.randint(0, schedule.num_timesteps, (cfg.batch_size,), generator=gen)
        x0, y = caches["x0"][index], caches["y"][index]
        # Noise is drawn on the CPU so a CUDA run samples the same numbers as a CPU run.
        noise = torch.randn(x0.shape, generator=gen)
        x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)
        x_t = schedule.q_sample(x0, y, t, noise)
        target = schedule.objective_target(x0, y, t, noise)
        context = torch.cat(
            [
                cond_attention(caches["attention"][index].to(device)),
                cond_attenuation(caches["attenuation"][index].to(device)),
            ],
            dim=1,
        )
        prediction: torch.Tensor = unet(torch.cat([x_t, context], dim=1), t)
        return (prediction - target).abs().mean()

    return StageRun(
        name="bridge",
        total_steps=cfg.steps,
        modules=dict(networks),
        optimizer=optimizer,
        step_fn=step,
        generator=generator,
        fingerprint=fingerprint,
        ema=ema,
    )

"""Stage 1: the VQGAN first stage, trained with L1 reconstruction and codebook losses only.

The release's first stage also had a GAN and an LPIPS loss; LPIPS needs a
downloaded VGG, so we train without perceptual or adversarial terms. One
autoencoder serves both modalities, as in the release: CT in [0, 1] and PET
in [-1, 1] (the bridge's two ends). Training may run on random square crops
(``crop_size``) with random left-right flips, but the default is whole
slices: the mid-block self-attention then sees as many tokens in training as
at inference. On the sample study, a first stage trained on 64x64 crops of
128x128 slices reconstructed held-out PET tiles to 0.05 SUV MAE but whole
slices only to 0.59. Codes unused in a batch are re-seeded from that batch's
encoder outputs every ``dead_code_every`` steps (and at step 0, a
data-dependent initialisation), which keeps a small codebook from collapsing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ct2pet_node.engine.networks import VQGAN
from ct2pet_node.training.checkpoints import StageRun
from ct2pet_node.training.config import VqganConfig


def build_vqgan(cfg: VqganConfig) -> VQGAN:
    """A fresh first stage with the configured architecture."""
    return VQGAN(cfg.ddconfig, embed_dim=cfg.embed_dim, n_embed=cfg.n_embed)


def vqgan_params(cfg: VqganConfig) -> dict[str, object]:
    """The release-style ``VQGAN.params`` mapping written to the weights manifest."""
    return {"ddconfig": dict(cfg.ddconfig), "embed_dim": cfg.embed_dim, "n_embed": cfg.n_embed}


def _random_crops(images: torch.Tensor, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random crops (count, 1, size, size) of images (N, 1, H, W), with random left-right flips."""
    n, _, h, w = images.shape
    index = torch.randint(0, n, (count,), generator=generator)
    top = torch.randint(0, h - size + 1, (count,), generator=generator)
    left = torch.randint(0, w - size + 1, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    crops = []
    for i in range(count):
        crop = images[index[i], :, top[i] : top[i] + size, left[i] : left[i] + size]
        crops.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(crops)


@torch.no_grad()
def _reseed_dead_codes(
    vqgan: VQGAN, z: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
) -> None:
    """Move codebook entries no vector of this batch chose onto random encoder outputs of the batch."""
    codebook = vqgan.quantize.embedding.weight
    used = torch.zeros(codebook.shape[0], dtype=torch.bool, device=codebook.device)
    used[indices.reshape(-1)] = True
    dead = (~used).nonzero().reshape(-1)
    if dead.numel() == 0:
        return
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
    codebook[dead] = flat[pick].to(codebook.dtype)


def vqgan_stage(
    cfg: VqganConfig,
    vqgan: VQGAN,
    ct01: torch.Tensor,
    pet_m11: torch.Tensor,
    device: torch.device,
    seed: int,
    fingerprint: str,
) -> StageRun:
    """The VQGAN stage for :func:`~ct2pet_node.training.checkpoints.run_stage`.

    Parameters
    ----------
    ct01, pet_m11 : torch.Tensor
        (N, 1, H, W) CPU float32 training slices: CT in [0, 1], PET in [-1, 1].
    """
    images = torch.cat([ct01, pet_m11], dim=0)
    size = min(cfg.crop_size, images.shape[-1], images.shape[-2])
    vqgan.to(device)
    optimizer = torch.optim.Adam(vqgan.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    generator = torch.Generator("cpu").manual_seed(seed)

    def step(i: int, gen: torch.Generator) -> torch.Tensor:
        x = _random_crops(images, cfg.batch_size, size, gen).to(device)
        z = vqgan.encode(x)
        zq, indices = vqgan.quantize(z)
        if cfg.dead_code_every and i % cfg.dead_code_every == 0:
            _reseed_dead_codes(vqgan, z, indices, gen)
            zq, indices = vqgan.quantize(z)
        # taming's VectorQuantizer2 loss: pull codes to encodings, commit encodings to codes.
        codebook_loss = F.mse_loss(zq, z.detach()) + cfg.commitment_beta * F.mse_loss(z, zq.detach())
        straight_through = z + (zq - z).detach()
        reconstruction = vqgan.decode_quantized(straight_through)
        return (reconstruction - x).abs().mean() + codebook_loss

    return StageRun(
        name="vqgan",
        total_steps=cfg.steps,
        modules={"vqgan": vqgan},
        optimizer=optimizer,
        step_fn=step,
        generator=generator,
        fingerprint=fingerprint,
    )

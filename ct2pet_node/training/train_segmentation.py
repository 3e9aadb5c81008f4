"""Stage 2: the attention-map U-Net, learning where PET will be hot from CT alone.

Target: real PET >= ``hot_suv_threshold`` SUVbw (see
:mod:`ct2pet_node.training.config`). Loss: binary cross-entropy plus soft
Dice, because hot pixels are a few percent of a slice and cross-entropy
alone learns "never hot". Input is CT in [0, 1] without ImageNet
normalisation, as the release runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ct2pet_node.engine.networks import SegmentationArchitecture, SegmentationUNet
from ct2pet_node.training.checkpoints import StageRun
from ct2pet_node.training.config import ENCODERS, SegmentationConfig


def _used_stages(layers: tuple[int, int, int, int], depth: int) -> tuple[int, int, int, int]:
    kept = [count if index < depth - 1 else 0 for index, count in enumerate(layers)]
    return (kept[0], kept[1], kept[2], kept[3])


def build_segmentation(cfg: SegmentationConfig) -> SegmentationUNet:
    """A fresh smp-style U-Net (ResNet basic-block encoder, 3x3 head) as the config describes."""
    arch = SegmentationArchitecture(
        in_channels=1,
        classes=1,
        block="basic",
        # Stages past the depth never run; leaving them out keeps the shipped weights small.
        layers=_used_stages(ENCODERS[cfg.encoder], len(cfg.decoder_channels)),
        decoder_channels=tuple(cfg.decoder_channels),
        head_kernel=3,
    )
    return SegmentationUNet(arch)


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)


def segmentation_stage(
    cfg: SegmentationConfig,
    net: SegmentationUNet,
    ct01: torch.Tensor,
    hot: torch.Tensor,
    device: torch.device,
    seed: int,
    fingerprint: str,
) -> StageRun:
    """The segmentation stage for :func:`~ct2pet_node.training.checkpoints.run_stage`.

    Parameters
    ----------
    ct01 : torch.Tensor
        (N, 1, H, W) CPU float32 CT in [0, 1].
    hot : torch.Tensor
        (N, 1, H, W) CPU float32 target mask, 1 where PET is hot.
    """
    net.to(device)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    generator = torch.Generator("cpu").manual_seed(seed)

    def step(_: int, gen: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, ct01.shape[0], (cfg.batch_size,), generator=gen)
        x, y = ct01[index].to(device), hot[index].to(device)
        logits = net(x)
        return F.binary_cross_entropy_with_logits(logits, y) + _dice_loss(logits, y)

    return StageRun(
        name="segmentation",
        total_steps=cfg.steps,
        modules={"segmentation": net},
        optimizer=optimizer,
        step_fn=step,
        generator=generator,
        fingerprint=fingerprint,
    )


@torch.no_grad()
def predict_attention(
    net: SegmentationUNet, ct01: torch.Tensor, device: torch.device, batch: int = 16
) -> torch.Tensor:
    """Binary attention maps (N, 1, H, W) on the CPU: sigmoid(logits) >= 0.5, as inference makes them."""
    net.eval()
    maps = []
    for start in range(0, ct01.shape[0], batch):
        logits = net(ct01[start : start + batch].to(device))
        maps.append((torch.sigmoid(logits) >= 0.5).float().cpu())
    return torch.cat(maps)

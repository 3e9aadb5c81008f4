"""The bridge's sampling loop, written out: the network predicts, the schedule steps.

The sampler (:class:`~ct2pet_node.engine.bridge.BridgeSchedule`) owns no
weights and never calls the network; the network never sees the schedule.
This loop is the only place the two meet. Tensors are latents (B, C, h, w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.errors import EngineError

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def sample_bridge(
    schedule: BridgeSchedule,
    denoise: Denoise,
    y: torch.Tensor,
    context: torch.Tensor,
    steps: int | None,
    eta: float | None,
    generator: Generators,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    """Run the bridge from x = y to the target latent; see :meth:`Pipeline.sample_latent`.

    ``denoise(x_t, t, context)`` is the network's prediction at timesteps ``t`` (B,).
    """
    eta = schedule.eta if eta is None else float(eta)
    timesteps = schedule.timesteps(steps)
    x = y
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)
        x0_hat = schedule.predict_x0(x, y, t_batch, denoise(x, t_batch, context))
        next_t = int(timesteps[i + 1]) if i + 1 < len(timesteps) and t != 0 else None
        noise = draw_noise(x, generator) if eta > 0 and next_t is not None else None
        x = schedule.step(x0_hat, y, x, t, next_t, noise, eta)
        if progress is not None:
            progress(1)
        if next_t is None:
            break
    return x


def draw_noise(like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: from one generator, or one per slice on the CPU."""
    if generator is None:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, torch.Generator):
        drawn = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
        return drawn.to(like.device)
    if len(generator) != like.shape[0]:
        raise EngineError(f"{len(generator)} generators for a batch of {like.shape[0]} slices")
    per_slice = [torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in generator]
    return torch.stack(per_slice).to(like.device)

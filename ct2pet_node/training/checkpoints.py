"""Resumable training: atomic checkpoints, EMA, and the one loop every stage runs.

A stage's checkpoint (``checkpoints/<stage>.pt``) holds its networks,
optimiser, EMA shadow, step and the state of the one generator that drives
batch sampling and noise, so resuming from step k continues exactly as an
uninterrupted run would (on the same device and thread count). A finished
stage writes ``checkpoints/<stage>.final.pt`` and is skipped on re-runs.
Files are written to a temporary name, fsynced and renamed, so a crash leaves
either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn
from tqdm import tqdm

from ct2pet_node.engine.release_files import read_torch_dict
from ct2pet_node.errors import ConfigError, WeightsError
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_file

log = structlog.get_logger(__name__)


def save_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically and durably; a failed write raises :class:`StorageError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, UMASK_FILE_MODE) as handle:
        torch.save(dict(payload), handle)


def load_payload(path: Path) -> dict[str, Any] | None:
    """A checkpoint written by :func:`save_atomic`, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return read_torch_dict(path, "delete it to restart that stage")


class Ema:
    """Exponential moving average of the trainable parameters of some modules.

    Before ``start`` steps the shadow simply follows the weights (the
    release's ``start_step``), afterwards ``shadow = d * shadow + (1 - d) * w``.
    """

    def __init__(self, modules: Mapping[str, nn.Module], decay: float, start: int) -> None:
        self.modules = dict(modules)
        self.decay = float(decay)
        self.start = int(start)
        self.shadow = {
            f"{name}.{key}": p.detach().clone()
            for name, module in self.modules.items()
            for key, p in module.named_parameters()
        }

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = 0.0 if step < self.start else self.decay
        for name, module in self.modules.items():
            for key, p in module.named_parameters():
                self.shadow[f"{name}.{key}"].mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def state_dict_of(self, name: str) -> dict[str, torch.Tensor]:
        """The module's state dict with its parameters replaced by their averages."""
        state = {k: v.detach().clone() for k, v in self.modules[name].state_dict().items()}
        for key in state:
            averaged = self.shadow.get(f"{name}.{key}")
            if averaged is not None:
                state[key] = averaged.clone()
        return state


@dataclass(frozen=True, slots=True)
class StageRun:
    """What one training stage needs from the loop.

    Attributes
    ----------
    name : str
        Stage name, also the checkpoint file stem.
    total_steps : int
        Optimiser steps of the whole stage.
    modules : Mapping[str, nn.Module]
        Networks trained (and checkpointed) by the stage.
    optimizer : torch.optim.Optimizer
    step_fn : Callable[[int, torch.Generator], torch.Tensor]
        Computes the loss of step ``i`` drawing all randomness from the generator.
    generator : torch.Generator
        CPU generator seeded for this stage; its state is checkpointed.
    fingerprint : str
        Hash of the settings the stage depends on; resuming with different ones is refused.
    ema : Ema or None
    lr_final_fraction : float
        Cosine learning-rate decay from the optimiser's ``lr`` down to this
        fraction of it at ``total_steps`` (1.0: constant). A pure function of
        the step, so resuming needs no scheduler state.
    """

    name: str
    total_steps: int
    modules: Mapping[str, nn.Module]
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[int, torch.Generator], torch.Tensor]
    generator: torch.Generator
    fingerprint: str
    ema: Ema | None = None
    lr_final_fraction: float = 1.0

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step`` (0-based) under the cosine decay."""
        base = float(self.optimizer.defaults["lr"])
        progress = min(1.0, step / max(1, self.total_steps - 1))
        floor = self.lr_final_fraction
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _restore(run: StageRun, payload: Mapping[str, Any], path: Path) -> int:
    if payload.get("fingerprint") != run.fingerprint:
        raise ConfigError(
            [
                f"checkpoint {path} was made with different settings or data than this run "
                f"(only a stage's steps may change between runs); train into a new --out directory, "
                f"or delete {path.name} and {run.name}.final.pt (and those of later stages) to retrain"
            ]
        )
    if int(payload["step"]) > run.total_steps:
        raise ConfigError(
            [
                f"checkpoint {path} is at step {payload['step']}, past the {run.total_steps} steps configured "
                f"for {run.name}; raise its steps, or delete {path.name} to retrain it"
            ]
        )
    for name, module in run.modules.items():
        module.load_state_dict(payload["modules"][name])
    run.optimizer.load_state_dict(payload["optimizer"])
    if run.ema is not None:
        run.ema.shadow = {k: v.clone() for k, v in payload["ema"].items()}
    run.generator.set_state(payload["generator"])
    return int(payload["step"])


def _payload(run: StageRun, step: int) -> dict[str, Any]:
    return {
        "stage": run.name,
        "step": step,
        "fingerprint": run.fingerprint,
        "modules": {name: module.state_dict() for name, module in run.modules.items()},
        "optimizer": run.optimizer.state_dict(),
        "ema": run.ema.shadow if run.ema is not None else {},
        "generator": run.generator.get_state(),
    }


def run_stage(
    run: StageRun,
    checkpoint_dir: Path,
    checkpoint_every: int,
    progress: bool,
    stop_after: int | None = None,
) -> tuple[bool, int]:
    """Train one stage from its last checkpoint.

    Parameters
    ----------
    stop_after : int, optional
        Stop (checkpointing first) after this many optimiser steps in this
        call, as an interruption would; for time-boxed sessions and tests.

    Returns
    -------
    (finished, steps_done) : (bool, int)
        Whether the stage reached ``total_steps``, and steps run in this call.
    """
    path = Path(checkpoint_dir) / f"{run.name}.pt"
    start = 0
    payload = load_payload(path)
    if payload is not None:
        start = _restore(run, payload, path)
        log.info("training_resumed", stage=run.name, step=start)
    for module in run.modules.values():
        module.train()
    done = 0
    bar = tqdm(total=run.total_steps, initial=start, desc=run.name, disable=not progress, leave=True)
    try:
        for step in range(start, run.total_steps):
            if stop_after is not None and done >= stop_after:
                save_atomic(path, _payload(run, step))
                return False, done
            run.optimizer.zero_grad(set_to_none=True)
            loss = run.step_fn(step, run.generator)
            if not torch.isfinite(loss):
                raise WeightsError(
                    f"stage {run.name} diverged at step {step} (loss {loss.item()}); lower its lr and resume"
                )
            loss.backward()  # type: ignore[no-untyped-call]
            for group in run.optimizer.param_groups:
                group["lr"] = run.lr_at(step)
            run.optimizer.step()
            if run.ema is not None:
                run.ema.update(step)
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % checkpoint_every == 0 and step + 1 < run.total_steps:
                save_atomic(path, _payload(run, step + 1))
    finally:
        bar.close()
    save_atomic(path, _payload(run, run.total_steps))
    for module in run.modules.values():
        module.eval()
    return True, done


def final_path(checkpoint_dir: Path, stage: str) -> Path:
    """Where a finished stage keeps the weights later stages and the export read."""
    return Path(checkpoint_dir) / f"{stage}.final.pt"

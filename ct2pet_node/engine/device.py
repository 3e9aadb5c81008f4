"""Which torch device a configured name means, refused early with the fix when it cannot be had."""

from __future__ import annotations

import torch

from ct2pet_node.config import AUTO
from ct2pet_node.errors import EngineError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present else CPU; ``cpu``, ``cuda``, ``cuda:N`` checked to exist."""
    if device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {device!r} asked for but CUDA is not available; use cpu or auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise EngineError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices present")
    elif chosen.type != "cpu":
        raise EngineError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return chosen

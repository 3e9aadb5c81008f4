"""What the node makes: ``[engine]`` (model, device, sampling, fast paths) and ``[output]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ct2pet_node.config.checks import Checker
from ct2pet_node.config.engine_ray import parse_backend, parse_ray
from ct2pet_node.config.model import (
    AUTO,
    CUDA_ONLY_PRECISIONS,
    ENGINE_COUNTS,
    ENGINE_SWITCHES,
    OUTPUT_KINDS,
    PRECISIONS,
    EngineConfig,
    OutputConfig,
)


def _device(value: str) -> bool:
    if value in (AUTO, "cpu", "cuda"):
        return True
    prefix, _, index = value.partition(":")
    return prefix == "cuda" and index.isdigit()


def _optional_auto(
    check: Checker,
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    rule: Callable[[Any], bool],
    fix: str,
) -> Any:
    """An optional ``[engine]`` value where absent or ``"auto"`` means None (the default's choice)."""
    if table.get(key, AUTO) == AUTO:
        return None
    return check.get("[engine]", table, key, kind, rule, f'{fix}, or "auto"')


def parse_engine(check: Checker) -> EngineConfig:
    table = check.table("engine")
    known = {
        *("backend", "ray", "weights", "device", "steps", "precision", "eta", "seed"),
        *ENGINE_SWITCHES,
        *ENGINE_COUNTS,
    }
    check.unknown_keys("[engine]", table, known)
    weights = check.get("[engine]", table, "weights", str, bool, '"demo" or a weights directory')
    device = check.get("[engine]", table, "device", str, _device, '"auto", "cpu", "cuda" or "cuda:N"')
    steps = check.get("[engine]", table, "steps", int, lambda v: v == 0 or 2 <= v <= 1000, "0 or 2-1000")
    precision = check.get(
        "[engine]", table, "precision", str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"
    )
    # Absent: the model's own eta (its manifest), as steps = 0 takes the model's own steps.
    eta = _optional_auto(check, table, "eta", (int, float), lambda v: 0 <= v <= 1, "between 0 and 1")
    seed = check.get("[engine]", table, "seed", int, lambda v: v >= 0, "an integer, 0 or more")
    if precision in CUDA_ONLY_PRECISIONS and device == "cpu":
        check.problems.append(
            f'[engine] precision: {precision} needs CUDA; use "float32" (or "bfloat16") with device "cpu"'
        )
    switches = {
        key: _optional_auto(check, table, key, bool, lambda _: True, "true or false")
        for key in ENGINE_SWITCHES
    }
    counts = {
        key: _optional_auto(check, table, key, int, lambda v: v >= 1, "a whole number, 1 or more")
        for key in ENGINE_COUNTS
    }
    return EngineConfig(
        weights=weights or "",
        device=device or AUTO,
        steps=steps or 0,
        precision=precision or "float32",
        eta=None if eta is None else float(eta),
        seed=seed or 0,
        **switches,
        **counts,
        backend=parse_backend(check, table),
        ray=parse_ray(check, table),
    )


def parse_output(check: Checker) -> OutputConfig:
    table = check.table("output")
    check.unknown_keys("[output]", table, set(OutputConfig.__slots__))
    series = check.get("[output]", table, "series", list, bool, f"a non-empty list from {OUTPUT_KINDS}")
    kinds: list[str] = []
    for kind in series or []:
        if kind in OUTPUT_KINDS and kind not in kinds:
            kinds.append(kind)
        else:
            check.problems.append(f"[output] series: {kind!r} is unknown or repeated; use {OUTPUT_KINDS}")
    grid = check.get("[output]", table, "grid", str, lambda v: v in ("model", "ct"), '"model" or "ct"')
    return OutputConfig(series=tuple(kinds), grid=grid or "model")

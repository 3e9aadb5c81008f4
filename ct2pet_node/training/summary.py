"""Per-slice metrics of synthetic PET and their summary, as ``metrics.json`` reports them (pure numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ct2pet_node.training import metrics

METRIC_NAMES = ("mae_suv", "psnr_db", "ssim", "suv_mean_error", "suv_max_error")


def slice_metrics(
    pred: np.ndarray, real: np.ndarray, body: np.ndarray, data_range: float
) -> dict[str, float | None]:
    """All metrics of one (y, x) slice in SUVbw; SUV errors None when the slice has no body."""
    suv = metrics.suv_errors(pred, real, body)
    return {
        "mae_suv": metrics.mae(pred, real),
        "psnr_db": metrics.psnr(pred, real, data_range),
        "ssim": metrics.ssim(pred, real, data_range),
        "suv_mean_error": None if suv is None else suv.suv_mean_error,
        "suv_max_error": None if suv is None else suv.suv_max_error,
    }


def _finite_mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def summarise(
    pred: np.ndarray, real: np.ndarray, body: np.ndarray, data_range: float, indices: Sequence[int]
) -> dict[str, Any]:
    """Per-slice metrics, their means (infinite PSNR and empty bodies left out), and slab SUV stats."""
    per_slice = []
    for k, index in enumerate(indices):
        values = slice_metrics(pred[k], real[k], body[k], data_range)
        per_slice.append({"slice": int(index), **{n: _json_number(values[n]) for n in METRIC_NAMES}})
    mean = {name: _json_number(_finite_mean([s[name] for s in per_slice])) for name in METRIC_NAMES}
    mean["abs_suv_mean_error"] = _json_number(
        _finite_mean([abs(s["suv_mean_error"]) for s in per_slice if s["suv_mean_error"] is not None])
    )
    mean["abs_suv_max_error"] = _json_number(
        _finite_mean([abs(s["suv_max_error"]) for s in per_slice if s["suv_max_error"] is not None])
    )
    slab = metrics.suv_errors(pred, real, body)
    volume = None
    if slab is not None:
        volume = {
            "suv_mean_real": _json_number(slab.suv_mean_real),
            "suv_mean_synthetic": _json_number(slab.suv_mean_synthetic),
            "suv_mean_error": _json_number(slab.suv_mean_error),
            "suv_max_real": _json_number(slab.suv_max_real),
            "suv_max_synthetic": _json_number(slab.suv_max_synthetic),
            "suv_max_error": _json_number(slab.suv_max_error),
        }
    return {"mean": mean, "volume": volume, "per_slice": per_slice}

"""``ct2pet-node evaluate``: synthetic vs real PET on chosen slices, for the model and the HU baseline.

Writes into REPORT_DIR:

* ``metrics.json``: per-slice and mean MAE (SUV), PSNR (dB), SSIM, and
  SUVmean / SUVmax error inside the body, for the model and for the HU-bin
  baseline saved beside the weights; plus the SUVmean / SUVmax over the whole
  evaluated slab. Definitions: :mod:`ct2pet_node.training.metrics`. Metrics
  are computed at the model's own size (``image_size``), where the paper
  computes them.
* ``panels/slice_<i>.png``: CT, real PET, synthetic PET and difference.
* ``panels/mip_coronal.png``: coronal MIPs of real and synthetic PET.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from ct2pet_node.errors import InputError, WeightsError
from ct2pet_node.training import metrics
from ct2pet_node.training.baseline import load_baseline
from ct2pet_node.training.panels import coronal_mip_panel, slice_panel
from ct2pet_node.training.train import read_dataset

log = structlog.get_logger(__name__)

METRIC_NAMES = ("mae_suv", "psnr_db", "ssim", "suv_mean_error", "suv_max_error")
PANEL_SLICES = 4


def parse_slices(text: str | None, count: int) -> tuple[int, int]:
    """``"A:B"`` (half-open, either side may be empty) -> (first, stop) within ``count`` slices."""
    if not text:
        return 0, count
    try:
        a, b = text.split(":")
        first = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else count
    except ValueError as exc:
        raise InputError(f"--slices {text!r} must look like A:B (slice indices, B excluded)") from exc
    if not 0 <= first < stop <= count:
        raise InputError(f"--slices {text!r} is outside 0:{count}; pick A < B within the study")
    return first, stop


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


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def evaluate_arrays(
    weights_dir: Path | str,
    hu: np.ndarray,
    suv: np.ndarray,
    out_dir: Path | str,
    *,
    body: np.ndarray | None = None,
    z_over_x: float = 1.0,
    first_index: int = 0,
    study: str = "",
    device: str = "auto",
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on paired slices already at the model's size.

    Parameters
    ----------
    hu, suv : numpy.ndarray
        float32 (N, S, S) CT in HU and real PET in SUVbw, S the model's ``image_size``.
    body : numpy.ndarray, optional
        bool (N, S, S) body mask; default :func:`metrics.body_mask` of ``hu``.
    z_over_x : float
        Slice spacing / pixel spacing, for the coronal MIP's proportions.
    first_index : int
        Slice index of ``hu[0]`` within its study (for the report).
    steps, seed : optional
        Sampling steps (default: the weights' own) and noise seed.

    Returns
    -------
    dict
        The content written to ``metrics.json``.
    """
    from ct2pet_node.engine.pipeline import load_pipeline

    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(weights_dir, device=device)
    if pipeline.output_units != "SUVbw":
        raise WeightsError(
            f"weights {weights_dir} output {pipeline.output_units!r}, not SUVbw; "
            "evaluate compares SUV, so use weights trained by ct2pet-node train"
        )
    if hu.shape != suv.shape or hu.ndim != 3 or hu.shape[1:] != (pipeline.image_size,) * 2:
        raise InputError(
            f"evaluation slices {hu.shape} / {suv.shape} must be paired (N, {pipeline.image_size}, "
            f"{pipeline.image_size}) arrays at the model size"
        )
    try:
        baseline = load_baseline(Path(weights_dir))
    except WeightsError as exc:
        log.warning("evaluation_without_baseline", reason=str(exc))
        baseline = None
    bar = tqdm(total=1, desc="synthesising", disable=not progress)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    synthetic = pipeline(hu, steps=steps, seed=seed, progress=advance)
    bar.close()
    data_range = float(pipeline.manifest.pet_scaling.scale)
    body = metrics.body_mask(hu) if body is None else np.asarray(body, dtype=bool)
    indices = list(range(first_index, first_index + hu.shape[0]))
    report: dict[str, Any] = {
        "model_id": pipeline.model_id,
        "output_units": pipeline.output_units,
        "study": study,
        "slices": [first_index, first_index + hu.shape[0]],
        "image_size": pipeline.image_size,
        "data_range_suv": data_range,
        "sampling": {
            "steps": steps or pipeline.schedule.sample_step,
            "eta": pipeline.schedule.eta,
            "seed": seed,
        },
        "definitions": {
            "mae_suv": "mean |synthetic - real| over all pixels of the slice, SUVbw",
            "psnr_db": "10 log10(R^2 / MSE), both clipped to [0, R], R = data_range_suv",
            "ssim": "skimage-compatible SSIM: gaussian sigma 1.5, K1 0.01, K2 0.03, data range R, on [0, R]",
            "suv_mean_error": "mean SUV in body, synthetic minus real "
            "(body: CT > -500 HU, largest region, holes filled)",
            "suv_max_error": "max SUV in body, synthetic minus real",
            "mean": "average over slices; infinite PSNR and body-less slices left out",
            "baseline": "each 16-HU bin mapped to its mean SUV over the training slices",
        },
        "model": summarise(synthetic, suv, body, data_range, indices),
        "baseline": None
        if baseline is None
        else summarise(baseline.predict(hu), suv, body, data_range, indices),
    }
    panels = out_dir / "panels"
    chosen = np.unique(np.linspace(0, hu.shape[0] - 1, min(PANEL_SLICES, hu.shape[0])).round().astype(int))
    for k in chosen:
        slice_panel(
            hu[k], suv[k], synthetic[k], f"slice {indices[k]}", panels / f"slice_{indices[k]:04d}.png"
        )
    coronal_mip_panel(
        suv,
        synthetic,
        panels / "mip_coronal.png",
        z_over_x=z_over_x,
        title=f"slices {indices[0]}-{indices[-1]}",
    )
    report["panels"] = sorted(str(p.relative_to(out_dir)) for p in panels.glob("*.png"))
    report["seconds"] = round(time.monotonic() - started, 3)
    _write_json(out_dir / "metrics.json", report)
    log.info(
        "evaluation_finished",
        model_id=pipeline.model_id,
        slices=hu.shape[0],
        mae_suv=report["model"]["mean"]["mae_suv"],
        baseline_mae_suv=None if baseline is None else report["baseline"]["mean"]["mae_suv"],
    )
    return report


def evaluate_dataset(
    weights_dir: Path | str,
    data_dir: Path | str,
    slices: str | None,
    out_dir: Path | str,
    *,
    study: str | None = None,
    device: str = "auto",
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on a built dataset folder (``study``: a CT series UID; default the first)."""
    studies = read_dataset(Path(data_dir))
    uid = study or next(iter(studies))
    if uid not in studies:
        raise InputError(f"study {uid!r} is not in dataset {data_dir} (it has {sorted(studies)})")
    data = studies[uid]
    first, stop = parse_slices(slices, data.hu.shape[0])
    return evaluate_arrays(
        weights_dir,
        data.hu[first:stop],
        data.suv[first:stop],
        out_dir,
        body=data.body[first:stop],
        z_over_x=data.z_over_x,
        first_index=first,
        study=uid,
        device=device,
        steps=steps,
        seed=seed,
        progress=progress,
    )


def evaluate(
    weights_dir: Path | str,
    ct_dir: Path | str,
    pet_dir: Path | str,
    slices: str | None,
    out_dir: Path | str,
    *,
    device: str = "auto",
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on a CT series folder and its PET series folder (DICOM), at the model's size.

    The pair is resampled and converted to SUVbw by the dataset builder into a
    temporary folder, then :func:`evaluate_dataset` runs on it.
    """
    from ct2pet_node.engine.weights import load_manifest
    from ct2pet_node.training.dataset import build_dataset

    size = int(load_manifest(Path(weights_dir)).architecture["image_size"])
    with tempfile.TemporaryDirectory(prefix="ct2pet-eval-") as tmp:
        build_dataset(Path(ct_dir), Path(pet_dir), Path(tmp) / "dataset", size=size)
        return evaluate_dataset(
            weights_dir,
            Path(tmp) / "dataset",
            slices,
            out_dir,
            device=device,
            steps=steps,
            seed=seed,
            progress=progress,
        )

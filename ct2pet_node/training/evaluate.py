"""``ct2pet-node evaluate``: synthetic vs real PET on chosen slices, for the model and the HU baseline.

Writes into REPORT_DIR:

* ``metrics.json``: per-slice and mean MAE (SUV), PSNR (dB), SSIM, and
  SUVmean / SUVmax error inside the body, for the model and for the HU-bin
  baseline saved beside the weights; plus the SUVmean / SUVmax over the whole
  evaluated slab. Definitions: :data:`METRIC_DEFINITIONS` and
  :mod:`ct2pet_node.training.metrics`. Metrics are computed at the model's own
  size (``image_size``), where the paper computes them.
* ``panels/slice_<i>.png``: CT, real PET, synthetic PET and difference.
* ``panels/mip_coronal.png``: coronal MIPs of real and synthetic PET.

Other reports (e.g. ``benchmarks/steps_curve.py``) reuse the parts without the
files: :func:`~ct2pet_node.training.evaluation_pair.load_evaluation_pair`
prepares the slices once, :func:`score` runs a loaded pipeline on them and
summarises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from ct2pet_node.engine import Pipeline, load_pipeline
from ct2pet_node.engine.weights import load_manifest
from ct2pet_node.errors import InputError, WeightsError
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_write_json
from ct2pet_node.training import metrics
from ct2pet_node.training.baseline import HuLookupBaseline, load_baseline
from ct2pet_node.training.evaluation_pair import (
    EvaluationPair,
    load_dataset_pair,
    load_evaluation_pair,
    suv_range,
)
from ct2pet_node.training.panels import write_evaluation_panels
from ct2pet_node.training.summary import METRIC_NAMES, slice_metrics, summarise

__all__ = [
    "METRIC_DEFINITIONS",
    "METRIC_NAMES",
    "evaluate",
    "evaluate_arrays",
    "evaluate_dataset",
    "evaluate_pair",
    "sampling",
    "score",
    "slice_metrics",
    "summarise",
    "synthesise",
]

log = structlog.get_logger(__name__)

PANEL_SLICES = 4
# What every figure of a report means; embedded in metrics.json as "definitions".
METRIC_DEFINITIONS: Mapping[str, str] = MappingProxyType(
    {
        "mae_suv": "mean |synthetic - real| over all pixels of the slice, SUVbw",
        "psnr_db": "10 log10(R^2 / MSE), both clipped to [0, R], R = data_range_suv",
        "ssim": "skimage-compatible SSIM: gaussian sigma 1.5, K1 0.01, K2 0.03, data range R, on [0, R]",
        "suv_mean_error": "mean SUV in body, synthetic minus real "
        "(body: CT > -500 HU, largest region, holes filled)",
        "suv_max_error": "max SUV in body, synthetic minus real",
        "mean": "average over slices; infinite PSNR and body-less slices left out",
        "baseline": "each 16-HU bin mapped to its mean SUV over the training slices",
    }
)


def sampling(pipeline: Pipeline, steps: int | None, eta: float | None, seed: int) -> dict[str, Any]:
    """The sampling actually used: ``{"steps", "eta", "seed"}``, the weights' own where None."""
    return {
        "steps": steps or pipeline.default_steps,
        "eta": pipeline.default_eta if eta is None else eta,
        "seed": seed,
    }


def synthesise(
    pipeline: Pipeline,
    pair: EvaluationPair,
    *,
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Synthetic PET (N, S, S) SUVbw of the pair's CT; None steps or eta: the weights' own.

    The noise of row k derives from (seed, ``pair.first_index`` + k), as the
    node seeds the same slices of the whole study.
    """
    data_range = suv_range(pipeline.manifest, pipeline.model_id)
    if pair.hu.shape[1:] != (pipeline.image_size,) * 2 or data_range != pair.data_range:
        raise InputError(
            f"evaluation slices {pair.hu.shape} with data range {pair.data_range} SUV do not fit model "
            f"{pipeline.model_id} ({pipeline.image_size}x{pipeline.image_size}, range {data_range}); "
            "load the pair with this model's weights"
        )
    return pipeline(
        pair.hu, steps=steps, eta=eta, seed=seed, progress=progress, first_slice_index=pair.first_index
    )


def score(
    pipeline: Pipeline,
    pair: EvaluationPair,
    *,
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the pipeline on the pair and summarise; no files.

    Returns
    -------
    dict
        ``steps``, ``eta``, ``seed`` (as used), ``seconds`` (the pipeline call
        alone), then :func:`summarise`'s ``mean``, ``volume`` and ``per_slice``.
    """
    tick = time.perf_counter()
    synthetic = synthesise(pipeline, pair, steps=steps, eta=eta, seed=seed)
    seconds = time.perf_counter() - tick
    return {**sampling(pipeline, steps, eta, seed), "seconds": seconds, **pair.summarise(synthetic)}


def _load_baseline(folder: Path | str | None) -> HuLookupBaseline | None:
    try:
        return None if folder is None else load_baseline(Path(folder))
    except WeightsError as exc:
        log.warning("evaluation_without_baseline", reason=str(exc))
        return None


def evaluate_pair(
    model: Path | str | Pipeline,
    pair: EvaluationPair,
    out_dir: Path | str,
    *,
    baseline_dir: Path | str | None = None,
    device: str = "auto",
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (weights folder, or a pipeline already loaded) on a pair; write the report.

    ``baseline_dir`` holds ``hu_baseline.json``: default the weights folder,
    none for a loaded pipeline. ``device`` applies when loading; None steps
    or eta: the weights' own. Returns the content written to ``metrics.json``.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = model if isinstance(model, Pipeline) else load_pipeline(model, device=device)
    baseline_dir = baseline_dir or (None if isinstance(model, Pipeline) else model)
    baseline = _load_baseline(baseline_dir)
    bar = tqdm(total=1, desc="synthesising", disable=not progress)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    synthetic = synthesise(pipeline, pair, steps=steps, eta=eta, seed=seed, progress=advance)
    bar.close()
    report: dict[str, Any] = {
        "model_id": pipeline.model_id,
        "output_units": pipeline.output_units,
        "study": pair.study,
        "slices": [pair.first_index, pair.first_index + pair.hu.shape[0]],
        "image_size": pipeline.image_size,
        "data_range_suv": pair.data_range,
        "sampling": sampling(pipeline, steps, eta, seed),
        "definitions": dict(METRIC_DEFINITIONS),
        "model": pair.summarise(synthetic),
        "baseline": None if baseline is None else pair.summarise(baseline.predict(pair.hu)),
    }
    report["panels"] = write_evaluation_panels(
        pair.hu, pair.suv, synthetic, pair.indices, out_dir, z_over_x=pair.z_over_x, count=PANEL_SLICES
    )
    report["seconds"] = round(time.monotonic() - started, 3)
    atomic_write_json(out_dir / "metrics.json", report, UMASK_FILE_MODE, indent=1)
    log.info(
        "evaluation_finished",
        model_id=pipeline.model_id,
        slices=pair.hu.shape[0],
        mae_suv=report["model"]["mean"]["mae_suv"],
        baseline_mae_suv=None if baseline is None else report["baseline"]["mean"]["mae_suv"],
    )
    return report


def evaluate_arrays(
    weights_dir: Path | str | Pipeline,
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
    eta: float | None = None,
    seed: int = 0,
    progress: bool = True,
    baseline_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Evaluate a model on paired slices already at the model's size.

    Parameters
    ----------
    weights_dir : path or Pipeline
        A weights folder, or a pipeline already loaded (then ``device`` is
        unused and the HU baseline is read from ``baseline_dir`` if given).
    hu, suv : numpy.ndarray
        float32 (N, S, S) CT in HU and real PET in SUVbw, S the model's ``image_size``.
    body : numpy.ndarray, optional
        bool (N, S, S) body mask; default :func:`metrics.body_mask` of ``hu``.
    z_over_x : float
        Slice spacing / pixel spacing, for the coronal MIP's proportions.
    first_index : int
        Slice index of ``hu[0]`` within its study (for the report and the noise seeding).
    steps, eta, seed : optional
        Sampling steps and noise scale (default: the weights' own) and noise seed.

    Returns
    -------
    dict
        The content written to ``metrics.json``.
    """
    manifest = weights_dir.manifest if isinstance(weights_dir, Pipeline) else load_manifest(Path(weights_dir))
    pair = EvaluationPair(
        np.asarray(hu, dtype=np.float32),
        np.asarray(suv, dtype=np.float32),
        metrics.body_mask(hu) if body is None else np.asarray(body, dtype=bool),
        suv_range(manifest, weights_dir),
        first_index,
        study,
        z_over_x,
    )
    return evaluate_pair(
        weights_dir,
        pair,
        out_dir,
        baseline_dir=baseline_dir,
        device=device,
        steps=steps,
        eta=eta,
        seed=seed,
        progress=progress,
    )


def evaluate_dataset(
    weights_dir: Path | str,
    data_dir: Path | str,
    slices: str | None,
    out_dir: Path | str,
    *,
    study: str | None = None,
    device: str = "auto",
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on a built dataset folder (``study``: a CT series UID; default the first)."""
    pair = load_dataset_pair(weights_dir, data_dir, slices, study=study)
    return evaluate_pair(
        weights_dir, pair, out_dir, device=device, steps=steps, eta=eta, seed=seed, progress=progress
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
    eta: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on a CT series folder and its PET series folder (DICOM), at the model's size.

    The pair is resampled and converted to SUVbw by the dataset builder into a
    temporary folder (:func:`~ct2pet_node.training.evaluation_pair.load_evaluation_pair`), then evaluated.
    """
    pair = load_evaluation_pair(weights_dir, ct_dir, pet_dir, slices)
    return evaluate_pair(
        weights_dir, pair, out_dir, device=device, steps=steps, eta=eta, seed=seed, progress=progress
    )

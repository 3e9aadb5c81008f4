"""The baseline every trained model must beat: each HU bin mapped to its mean SUV.

Fitted on the training slices only (the same ones the networks see), saved as
JSON beside the weights, and applied pixel by pixel. It knows tissue density
and nothing about anatomy or uptake, so a model that cannot beat it has not
learned anything a lookup table could not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ct2pet_node.errors import WeightsError
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_write_json

BASELINE_FILE = "hu_baseline.json"
DEFAULT_HU_RANGE = (-1024.0, 3072.0)
DEFAULT_BIN_WIDTH_HU = 16.0


@dataclass(frozen=True, slots=True, eq=False)
class HuLookupBaseline:
    """Piecewise-constant HU -> SUVbw map.

    Attributes
    ----------
    bin_edges_hu : numpy.ndarray
        float64 (B + 1,), increasing; HU below the first edge use bin 0, above
        the last edge bin B - 1.
    mean_suv : numpy.ndarray
        float64 (B,), SUVbw per bin; bins without training pixels take the
        value of the nearest bin that had some.
    pixel_counts : numpy.ndarray
        int64 (B,), training pixels per bin (provenance only).
    """

    bin_edges_hu: np.ndarray
    mean_suv: np.ndarray
    pixel_counts: np.ndarray

    def __post_init__(self) -> None:
        edges, means = self.bin_edges_hu, self.mean_suv
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise WeightsError("HU baseline bin edges must be an increasing list of at least 2 values")
        if means.shape != (len(edges) - 1,) or self.pixel_counts.shape != means.shape:
            raise WeightsError(
                f"HU baseline has {len(edges) - 1} bins but {means.shape} means and "
                f"{self.pixel_counts.shape} counts; refit it"
            )
        if not np.all(np.isfinite(means)):
            raise WeightsError("HU baseline holds non-finite mean SUVs; refit it")

    def predict(self, hu: np.ndarray) -> np.ndarray:
        """SUVbw (float32) for CT values in HU, same shape as ``hu``."""
        index = np.clip(np.searchsorted(self.bin_edges_hu, hu, side="right") - 1, 0, len(self.mean_suv) - 1)
        return self.mean_suv[index].astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, inverse of :meth:`from_json`."""
        return {
            "kind": "hu_bin_mean_suv",
            "units": "SUVbw",
            "bin_edges_hu": [float(v) for v in self.bin_edges_hu],
            "mean_suv": [float(v) for v in self.mean_suv],
            "pixel_counts": [int(v) for v in self.pixel_counts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HuLookupBaseline:
        """Rebuild from :meth:`to_json` output."""
        try:
            if data.get("kind") != "hu_bin_mean_suv":
                raise WeightsError(f"HU baseline kind {data.get('kind')!r} is not 'hu_bin_mean_suv'")
            return cls(
                bin_edges_hu=np.asarray(data["bin_edges_hu"], dtype=np.float64),
                mean_suv=np.asarray(data["mean_suv"], dtype=np.float64),
                pixel_counts=np.asarray(data["pixel_counts"], dtype=np.int64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"HU baseline is malformed ({exc}); refit it with training") from exc


def fit_hu_baseline(
    hu: np.ndarray,
    suv: np.ndarray,
    hu_range: tuple[float, float] = DEFAULT_HU_RANGE,
    bin_width_hu: float = DEFAULT_BIN_WIDTH_HU,
) -> HuLookupBaseline:
    """Fit the lookup on paired training slices.

    Parameters
    ----------
    hu, suv : numpy.ndarray
        Same shape, any axis order (typically (N, y, x)): CT in HU and the
        co-registered PET in SUVbw.
    hu_range : (float, float)
        First and last bin edge in HU; values outside fall in the end bins.
    bin_width_hu : float
        Width of each bin in HU.
    """
    hu = np.asarray(hu, dtype=np.float64).ravel()
    suv = np.asarray(suv, dtype=np.float64).ravel()
    if hu.shape != suv.shape or hu.size == 0:
        raise ValueError(
            f"HU baseline needs equal, non-empty CT and PET arrays, got {hu.size} and {suv.size}"
        )
    low, high = hu_range
    if not (bin_width_hu > 0 and high > low):
        raise ValueError(f"HU baseline range {hu_range} / bin width {bin_width_hu} is empty")
    edges = np.arange(low, high + bin_width_hu / 2, bin_width_hu, dtype=np.float64)
    bins = len(edges) - 1
    index = np.clip(np.searchsorted(edges, hu, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=suv, minlength=bins)
    filled = counts > 0
    means = np.zeros(bins)
    means[filled] = sums[filled] / counts[filled]
    if not filled.all():
        # Nearest populated bin: a CT value never seen in training gets its closest neighbour's SUV.
        centres = np.arange(bins)
        known = centres[filled]
        nearest = known[np.clip(np.searchsorted(known, centres), 0, len(known) - 1)]
        before = known[np.clip(np.searchsorted(known, centres) - 1, 0, len(known) - 1)]
        pick = np.where(np.abs(before - centres) <= np.abs(nearest - centres), before, nearest)
        means[~filled] = means[pick[~filled]]
    return HuLookupBaseline(edges, means, counts.astype(np.int64))


def save_baseline(baseline: HuLookupBaseline, weights_dir: Path) -> Path:
    """Write ``hu_baseline.json`` into ``weights_dir`` atomically; return its path."""
    path = Path(weights_dir) / BASELINE_FILE
    atomic_write_json(path, baseline.to_json(), UMASK_FILE_MODE)
    return path


def load_baseline(weights_dir: Path) -> HuLookupBaseline:
    """Read ``hu_baseline.json`` from a weights directory written by training."""
    path = Path(weights_dir) / BASELINE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(
            f"{path} does not exist: these weights were not made by ct2pet-node train, "
            "so evaluate has no HU baseline to compare with"
        ) from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is unreadable: {exc}") from exc
    return HuLookupBaseline.from_json(data)

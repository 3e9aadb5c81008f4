"""Image metrics for synthetic PET, in pure numpy (no torch, no scipy, no I/O).

Every function takes arrays indexed ``[z, y, x]`` (or one ``[y, x]`` slice)
in SUVbw and returns plain floats, so evaluation, tests and notebooks agree.

Definitions (written down once, used by ``evaluate``):

* **MAE** (SUV): mean absolute difference over every pixel of the slice.
* **PSNR** (dB): both images clipped to ``[0, data_range]`` SUV, then
  ``10 log10(data_range**2 / MSE)``; ``data_range`` is the largest SUV the
  model can represent (its PET normalisation ``scale``), the analogue of the
  paper's fixed PET range (stored value / 32767). Infinite when identical.
* **SSIM**: the Wang et al. (2004) index exactly as
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=R)`` computes it for one
  2-D slice: Gaussian window sigma 1.5 truncated at 3.5 sigma (11 taps),
  statistics filtered with mirror ('reflect', half-sample symmetric)
  borders, K1 = 0.01, K2 = 0.03, and the mean of the SSIM map after cropping
  the 5-pixel border the window cannot fully see. Images are clipped to
  ``[0, R]`` first, as for PSNR. These are the settings the CPDM/BBDM
  evaluation code uses through scikit-image.
* **Body**: the largest 4-connected region of CT > ``-500`` HU after a
  2-pixel opening (which cuts thin couch contacts), with enclosed holes
  (lungs, bowel gas) filled.
* **SUVmean / SUVmax error**: synthetic minus real, over the body voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
BODY_HU_THRESHOLD = -500.0


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error in the images' units (SUV) over all pixels."""
    pred, target = _pair(pred, target)
    return float(np.mean(np.abs(pred - target)))


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over ``[0, data_range]`` (see module docstring)."""
    pred, target = _pair(pred, target)
    _check_range(data_range)
    mse = float(np.mean((np.clip(pred, 0, data_range) - np.clip(target, 0, data_range)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    taps /= taps.sum()
    return taps


def _filter_axis(image: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    radius = len(taps) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    # numpy's 'symmetric' repeats the edge pixel: scipy.ndimage's 'reflect'.
    padded = np.pad(image, pad, mode="symmetric")
    out = np.zeros_like(image)
    length = image.shape[axis]
    for offset, weight in enumerate(taps):
        out += weight * np.take(padded, np.arange(offset, offset + length), axis=axis)
    return out


def _gaussian_filter(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    return _filter_axis(_filter_axis(image, taps, 0), taps, 1)


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Structural similarity of two 2-D slices (y, x) in SUV; see module docstring.

    Raises
    ------
    ValueError
        When the slices are not 2-D, differ in shape, or are smaller than the
        11x11 window.
    """
    pred, target = _pair(pred, target)
    _check_range(data_range)
    if pred.ndim != 2:
        raise ValueError(f"ssim takes one (y, x) slice, got shape {pred.shape}")
    taps = _gaussian_taps()
    win = len(taps)
    if min(pred.shape) < win:
        raise ValueError(f"slice {pred.shape} is smaller than the {win}x{win} SSIM window")
    x = np.clip(pred, 0, data_range)
    y = np.clip(target, 0, data_range)
    mu_x = _gaussian_filter(x, taps)
    mu_y = _gaussian_filter(y, taps)
    var_x = _gaussian_filter(x * x, taps) - mu_x * mu_x
    var_y = _gaussian_filter(y * y, taps) - mu_y * mu_y
    cov = _gaussian_filter(x * y, taps) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator
    crop = (win - 1) // 2
    return float(ssim_map[crop:-crop, crop:-crop].mean())


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) on its last two axes, filled with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= _shift(mask, dy, dx)
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected True region of a 2-D mask (label propagation by neighbour maxima)."""
    if not mask.any():
        return mask.copy()
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        grown = labels.copy()
        grown[1:] = np.maximum(grown[1:], labels[:-1])
        grown[:-1] = np.maximum(grown[:-1], labels[1:])
        grown[:, 1:] = np.maximum(grown[:, 1:], labels[:, :-1])
        grown[:, :-1] = np.maximum(grown[:, :-1], labels[:, 1:])
        grown = np.where(mask, grown, 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    values, counts = np.unique(labels[mask], return_counts=True)
    largest: np.ndarray = labels == values[np.argmax(counts)]
    return largest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions of a 2-D mask not connected to the image border."""
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = True, True, True, True
    outside &= ~mask
    background = ~mask
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= background
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def body_mask(hu: np.ndarray, hu_threshold: float = BODY_HU_THRESHOLD) -> np.ndarray:
    """Boolean body mask of a CT slice (y, x) or volume (z, y, x) in HU; see module docstring."""
    hu = np.asarray(hu)
    if hu.ndim == 3:
        return np.stack([body_mask(s, hu_threshold) for s in hu])
    if hu.ndim != 2:
        raise ValueError(f"body_mask takes (y, x) or (z, y, x), got shape {hu.shape}")
    raw = hu > hu_threshold
    opened = _dilate(_dilate(_erode(_erode(raw))))
    body = _largest_component(opened)
    return _fill_holes(body)


@dataclass(frozen=True, slots=True)
class SuvErrors:
    """SUV statistics inside the body: real, synthetic, and synthetic minus real."""

    suv_mean_real: float
    suv_mean_synthetic: float
    suv_max_real: float
    suv_max_synthetic: float

    @property
    def suv_mean_error(self) -> float:
        return self.suv_mean_synthetic - self.suv_mean_real

    @property
    def suv_max_error(self) -> float:
        return self.suv_max_synthetic - self.suv_max_real


def suv_errors(pred: np.ndarray, target: np.ndarray, body: np.ndarray) -> SuvErrors | None:
    """SUVmean and SUVmax of synthetic and real PET over ``body`` voxels; None if the body is empty."""
    pred, target = _pair(pred, target)
    body = np.asarray(body, dtype=bool)
    if body.shape != pred.shape:
        raise ValueError(f"body mask shape {body.shape} differs from image shape {pred.shape}")
    if not body.any():
        return None
    return SuvErrors(
        suv_mean_real=float(target[body].mean()),
        suv_mean_synthetic=float(pred[body].mean()),
        suv_max_real=float(target[body].max()),
        suv_max_synthetic=float(pred[body].max()),
    )


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"synthetic shape {a.shape} differs from real shape {b.shape}")
    return a, b


def _check_range(data_range: float) -> None:
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range {data_range!r} must be a positive number of SUV")

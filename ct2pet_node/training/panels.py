"""PNG panels a person would look at: slices side by side, and coronal MIPs (Pillow only).

Display windows are fixed so that panels of different runs compare at a
glance: CT at level 40 / width 400 HU (soft tissue), PET inverted grey from 0
to ``PET_WINDOW_SUV`` SUVbw, difference (synthetic - real) from -3 (blue) to
+3 (red) SUVbw. Arrays are (z, y, x); a coronal MIP takes the maximum along
y (anterior-posterior) and shows the highest z (head) at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CT_WINDOW_HU = (-160.0, 240.0)
PET_WINDOW_SUV = 6.0
DIFF_WINDOW_SUV = 3.0
TILE = 256
LABEL_HEIGHT = 16


def _grey(values: np.ndarray, low: float, high: float, invert: bool = False) -> np.ndarray:
    unit = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    if invert:
        unit = 1.0 - unit
    grey = (unit * 255.0 + 0.5).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


def _diverging(diff: np.ndarray, limit: float) -> np.ndarray:
    """Blue (negative) - white (0) - red (positive) RGB image of a difference map."""
    unit = np.clip(np.asarray(diff, dtype=np.float64) / limit, -1.0, 1.0)
    rgb = np.ones((*unit.shape, 3))
    positive, negative = np.clip(unit, 0, 1), np.clip(-unit, 0, 1)
    rgb[..., 1] -= positive + negative
    rgb[..., 2] -= positive
    rgb[..., 0] -= negative
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _tile(rgb: np.ndarray, label: str, height: int, width: int) -> Image.Image:
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.NEAREST)
    framed = Image.new("RGB", (width, height + LABEL_HEIGHT), (0, 0, 0))
    framed.paste(image, (0, LABEL_HEIGHT))
    ImageDraw.Draw(framed).text((3, 2), label, fill=(255, 255, 255))
    return framed


def _row(tiles: Sequence[Image.Image]) -> Image.Image:
    width = sum(t.width for t in tiles)
    height = max(t.height for t in tiles)
    row = Image.new("RGB", (width, height), (0, 0, 0))
    x = 0
    for t in tiles:
        row.paste(t, (x, 0))
        x += t.width
    return row


def slice_panel(hu: np.ndarray, real: np.ndarray, synthetic: np.ndarray, title: str, path: Path) -> Path:
    """One (y, x) slice: CT, real PET, synthetic PET, difference; written as PNG to ``path``."""
    scale = max(1, TILE // max(hu.shape))
    h, w = hu.shape[0] * scale, hu.shape[1] * scale
    tiles = [
        _tile(_grey(hu, *CT_WINDOW_HU), f"{title} CT", h, w),
        _tile(_grey(real, 0.0, PET_WINDOW_SUV, invert=True), f"real PET 0-{PET_WINDOW_SUV:g} SUV", h, w),
        _tile(_grey(synthetic, 0.0, PET_WINDOW_SUV, invert=True), "synthetic PET", h, w),
        _tile(_diverging(synthetic - real, DIFF_WINDOW_SUV), f"synth-real +-{DIFF_WINDOW_SUV:g}", h, w),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    _row(tiles).save(path)
    return path


def coronal_mip_panel(
    real: np.ndarray, synthetic: np.ndarray, path: Path, z_over_x: float = 1.0, title: str = ""
) -> Path:
    """Coronal maximum-intensity projections of real and synthetic PET (z, y, x), side by side.

    ``z_over_x`` is slice spacing divided by pixel spacing, so the body keeps its proportions.
    """
    mips = [np.max(volume, axis=1)[::-1] for volume in (real, synthetic)]
    rows, cols = mips[0].shape
    scale = max(1.0, TILE / max(cols, rows * z_over_x))
    h, w = max(1, round(rows * z_over_x * scale)), max(1, round(cols * scale))
    tiles = [
        _tile(
            _grey(mips[0], 0.0, PET_WINDOW_SUV, invert=True),
            f"{title} real MIP 0-{PET_WINDOW_SUV:g} SUV",
            h,
            w,
        ),
        _tile(_grey(mips[1], 0.0, PET_WINDOW_SUV, invert=True), "synthetic MIP", h, w),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    _row(tiles).save(path)
    return path


def write_evaluation_panels(
    hu: np.ndarray,
    real: np.ndarray,
    synthetic: np.ndarray,
    indices: Sequence[int],
    out_dir: Path,
    *,
    z_over_x: float = 1.0,
    count: int = 4,
) -> list[str]:
    """Up to ``count`` evenly spread slice panels and the coronal MIP under ``out_dir/panels``.

    Returns the written PNGs' paths relative to ``out_dir``, sorted.
    """
    panels, slices = out_dir / "panels", hu.shape[0]
    chosen = np.unique(np.linspace(0, slices - 1, min(count, slices)).round().astype(int))
    for k in chosen:
        name = f"slice_{indices[k]:04d}.png"
        slice_panel(hu[k], real[k], synthetic[k], f"slice {indices[k]}", panels / name)
    coronal_mip_panel(
        real,
        synthetic,
        panels / "mip_coronal.png",
        z_over_x=z_over_x,
        title=f"slices {indices[0]}-{indices[-1]}",
    )
    return sorted(str(p.relative_to(out_dir)) for p in panels.glob("*.png"))

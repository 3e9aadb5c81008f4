"""Preview pictures of a job's results, for a person to judge at a glance (Pillow only).

Two PNGs per job, in ``<results_dir>/preview/`` (0600, written atomically):

- ``mip.png``: coronal maximum-intensity projections of the CT and of the
  synthetic PET side by side, both on the CT's grid, each pixel as wide and
  as tall as the millimetres it covers, head at the top and the patient's
  right on the viewer's left (radiological convention);
- ``axial.png``: a few axial slices of each, anterior at the top.

Every tile carries its display window in its units (SUVbw when the model
gives SUV) and the synthetic ones "SYNTHETIC — not for diagnosis". Nothing
identifies the patient: the pictures are labelled by job id and model only.

Arrays are (z, y, x) with an LPS affine (:mod:`ct2pet_node.domain.volume`);
which array axis points where is read from the affine, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume
from ct2pet_node.spool.atomic import atomic_write, ensure_private_dir

PREVIEW_DIR = "preview"
MIP_NAME = "mip.png"
AXIAL_NAME = "axial.png"
PREVIEW_NAMES = (MIP_NAME, AXIAL_NAME)

CT_MIP_WINDOW_HU = (-500.0, 1500.0)  # bone stands out of soft tissue, as on a radiograph
CT_SLICE_WINDOW_HU = (-160.0, 240.0)  # soft tissue
PET_WINDOW = {PetUnits.SUVBW: (0.0, 6.0), PetUnits.RELATIVE: (0.0, 1.0)}
SYNTHETIC_MARK = "SYNTHETIC — not for diagnosis"
MIP_HEIGHT = 420  # pixels of the taller side of a MIP
AXIAL_TILE = 192
AXIAL_SLICES = 4
_WARN = (255, 200, 0)
_WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class View:
    """How an (z, y, x) array lies in the patient, read from its affine.

    ``ap_axis`` and ``lr_axis`` are the in-plane array axes (1 or 2) closest to
    anterior-posterior and left-right; the flips put head up, anterior up and
    the patient's right on the left; spacings in mm.
    """

    ap_axis: int
    lr_axis: int
    flip_z: bool
    flip_ap: bool
    flip_lr: bool
    z_mm: float
    ap_mm: float
    lr_mm: float

    @classmethod
    def of(cls, affine: np.ndarray) -> View:
        # Affine columns 0, 1, 2 are the directions of x, y, z indices, i.e. array axes 2, 1, 0.
        columns = {2: affine[:3, 0], 1: affine[:3, 1]}
        ap_axis = max(columns, key=lambda axis: abs(columns[axis][1]))
        lr_axis = 3 - ap_axis
        z_column = affine[:3, 2]
        return cls(
            ap_axis=ap_axis,
            lr_axis=lr_axis,
            flip_z=bool(z_column[2] > 0),  # rows go top-down; superior must come first
            flip_ap=bool(columns[ap_axis][1] < 0),  # LPS: +y is posterior, which belongs at the bottom
            flip_lr=bool(columns[lr_axis][0] < 0),  # LPS: +x is the patient's left, the viewer's right
            z_mm=float(np.linalg.norm(z_column)),
            ap_mm=float(np.linalg.norm(columns[ap_axis])),
            lr_mm=float(np.linalg.norm(columns[lr_axis])),
        )

    def coronal_mip(self, volume: np.ndarray) -> np.ndarray:
        """(z, lr) maximum along anterior-posterior, head at row 0."""
        mip: np.ndarray = volume.max(axis=self.ap_axis)
        if self.flip_z:
            mip = mip[::-1]
        return mip[:, ::-1] if self.flip_lr else mip

    def axial(self, volume: np.ndarray, index: int) -> np.ndarray:
        """(ap, lr) slice ``index``, anterior at row 0."""
        plane: np.ndarray = volume[index]
        if self.ap_axis == 2:
            plane = plane.T
        if self.flip_ap:
            plane = plane[::-1]
        return plane[:, ::-1] if self.flip_lr else plane


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no system fonts), or its bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _grey(values: np.ndarray, window: tuple[float, float], invert: bool = False) -> Image.Image:
    low, high = window
    unit = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    if invert:
        unit = 1.0 - unit
    return Image.fromarray((unit * 255.0 + 0.5).astype(np.uint8), mode="L").convert("RGB")


def _labelled(image: Image.Image, lines: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """``image`` under a black band carrying ``lines`` (text, colour), burnt into the pixels."""
    text_font = font(13)
    band = 6 + 17 * len(lines)
    framed = Image.new("RGB", (max(image.width, 240), image.height + band), (0, 0, 0))
    framed.paste(image, ((framed.width - image.width) // 2, band))
    draw = ImageDraw.Draw(framed)
    for row, (text, colour) in enumerate(lines):
        _draw_text(draw, (4, 3 + 17 * row), text, colour, text_font)
    return framed


def _draw_text(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    text: str,
    colour: tuple[int, int, int],
    text_font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """``text`` at ``origin``; an em dash, which Pillow's own font lacks, drawn as a line."""
    x, y = origin
    for index, part in enumerate(text.split("—")):
        if index:
            dash = round(draw.textlength("M", font=text_font))
            middle = y + round(draw.textbbox((0, 0), "x", font=text_font)[3] * 0.62)
            draw.line([(x + 2, middle), (x + dash - 1, middle)], fill=colour, width=1)
            x += dash + 1
        draw.text((x, y), part, fill=colour, font=text_font)
        x += round(draw.textlength(part, font=text_font))


def _side_by_side(tiles: list[Image.Image], gap: int = 4) -> Image.Image:
    out = Image.new(
        "RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)), (0, 0, 0)
    )
    x = 0
    for tile in tiles:
        out.paste(tile, (x, 0))
        x += tile.width + gap
    return out


def _pet_label(units: PetUnits) -> str:
    low, high = PET_WINDOW[units]
    if units is PetUnits.SUVBW:
        return f"PET window {low:g}-{high:g} SUVbw"
    return f"PET window {low:g}-{high:g} relative (no SUV)"


def render_mip(ct: CtVolume, pet: PetVolume, title: str) -> Image.Image:
    """The coronal MIPs of ``ct`` and ``pet`` (on the CT's grid), true to millimetres."""
    view = View.of(ct.affine)
    height_mm = ct.hu.shape[0] * view.z_mm
    width_mm = ct.hu.shape[view.lr_axis] * view.lr_mm
    scale = MIP_HEIGHT / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    ct_image = _grey(view.coronal_mip(ct.hu), CT_MIP_WINDOW_HU).resize(size, Image.Resampling.BILINEAR)
    pet_image = _grey(view.coronal_mip(pet.values), PET_WINDOW[pet.units], invert=True).resize(
        size, Image.Resampling.BILINEAR
    )
    low, high = CT_MIP_WINDOW_HU
    ct_tile = _labelled(ct_image, [(title, _WHITE), (f"CT MIP, window {low:g} to {high:g} HU", _WHITE)])
    pet_tile = _labelled(pet_image, [(SYNTHETIC_MARK, _WARN), (_pet_label(pet.units), _WARN)])
    return _side_by_side([ct_tile, pet_tile])


def render_axial(ct: CtVolume, pet: PetVolume) -> Image.Image:
    """A row of CT slices over the same slices of the synthetic PET, evenly spread through the volume."""
    view = View.of(ct.affine)
    count = ct.hu.shape[0]
    indices = sorted({round(count * (k + 1) / (AXIAL_SLICES + 1)) for k in range(AXIAL_SLICES)})
    ap_mm = ct.hu.shape[view.ap_axis] * view.ap_mm
    lr_mm = ct.hu.shape[view.lr_axis] * view.lr_mm
    scale = AXIAL_TILE / max(ap_mm, lr_mm)
    size = (max(1, round(lr_mm * scale)), max(1, round(ap_mm * scale)))
    ct_tiles, pet_tiles = [], []
    for index in indices:
        index = min(index, count - 1)
        ct_slice = _grey(view.axial(ct.hu, index), CT_SLICE_WINDOW_HU).resize(size, Image.Resampling.BILINEAR)
        pet_slice = _grey(view.axial(pet.values, index), PET_WINDOW[pet.units], invert=True)
        ct_tiles.append(_labelled(ct_slice, [(f"CT slice {index + 1}/{count}", _WHITE)]))
        pet_tiles.append(_labelled(pet_slice.resize(size, Image.Resampling.BILINEAR), [("SYNTHETIC", _WARN)]))
    rows = [_side_by_side(ct_tiles), _side_by_side(pet_tiles)]
    low, high = CT_SLICE_WINDOW_HU
    caption = f"CT window {low:g} to {high:g} HU; {_pet_label(pet.units)}"
    sheet = Image.new("RGB", (rows[0].width, rows[0].height + rows[1].height + 4), (0, 0, 0))
    sheet.paste(rows[0], (0, 0))
    sheet.paste(rows[1], (0, rows[0].height + 4))
    return _labelled(sheet, [(SYNTHETIC_MARK, _WARN), (caption, _WHITE)])


def write_previews(ct: CtVolume, pet_on_ct: PetVolume, results_dir: Path, title: str) -> tuple[Path, ...]:
    """Render both previews into ``results_dir/preview/``; ``pet_on_ct`` must share the CT's grid.

    ``title`` labels the pictures (job and model; never a patient's name or ID).
    """
    if pet_on_ct.values.shape != ct.hu.shape or not np.allclose(pet_on_ct.affine, ct.affine, atol=1e-3):
        raise ValueError("previews need the PET on the CT's own grid (pet_on_grid(pet, 'ct'))")
    folder = ensure_private_dir(results_dir / PREVIEW_DIR)
    written = []
    for name, image in (
        (MIP_NAME, render_mip(ct, pet_on_ct, title)),
        (AXIAL_NAME, render_axial(ct, pet_on_ct)),
    ):
        written.append(folder / name)
        atomic_write(folder / name, _png(image))
    return tuple(written)


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()

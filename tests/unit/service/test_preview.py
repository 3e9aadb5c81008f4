"""Preview pictures: orientation and aspect from the affine, the warning burnt in, private files."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume, SourceSlice
from ct2pet_node.service import preview
from ct2pet_node.service.preview import View, render_mip, write_previews

SLICES, ROWS, COLS = 20, 64, 48
Z_MM, PIXEL_MM = 5.0, 1.0


def _affine(z_step: float = Z_MM) -> np.ndarray:
    # Standard axial: columns run to the patient's left (+x), rows to posterior (+y), slices along z.
    affine = np.eye(4)
    affine[0, 0] = affine[1, 1] = PIXEL_MM
    affine[2, 2] = z_step
    affine[2, 3] = 0.0 if z_step > 0 else -z_step * (SLICES - 1)
    return affine


def _volumes(affine: np.ndarray) -> tuple[CtVolume, PetVolume]:
    hu = np.full((SLICES, ROWS, COLS), -1000.0, dtype=np.float32)
    # A bright block in the patient's left (high x), anterior (low y), superior (high patient z).
    z_super = SLICES - 3 if affine[2, 2] > 0 else 0
    hu[z_super : z_super + 3, 2:10, COLS - 10 : COLS - 2] = 1500.0
    sources = tuple(
        SourceSlice(SopInstanceUid(f"1.2.3.{i}"), Uid("1.2.840.10008.5.1.4.1.1.2"), (0.0, 0.0, float(i)))
        for i in range(SLICES)
    )
    ct = CtVolume(hu, affine, StudyUid("1.2.3"), SeriesUid("1.2.3.4"), Uid("1.2.3.5"), sources, 120.0)
    pet = PetVolume(np.clip((hu + 1000) / 400, 0, 6).astype(np.float32), affine, PetUnits.SUVBW, ct)
    return ct, pet


def _bright_quadrant(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[str, str]:
    grey = np.asarray(image.crop(box).convert("L"), dtype=np.float64)
    rows, cols = np.nonzero(grey > 200)
    vertical = "top" if rows.mean() < grey.shape[0] / 2 else "bottom"
    horizontal = "left" if cols.mean() < grey.shape[1] / 2 else "right"
    return vertical, horizontal


@pytest.mark.parametrize("z_step", [Z_MM, -Z_MM])
def test_coronal_mip_puts_the_head_up_and_the_patients_left_on_the_viewers_right(z_step: float) -> None:
    ct, pet = _volumes(_affine(z_step))
    image = render_mip(ct, pet, "job 1")
    band = 6 + 17 * 2
    height = image.height - band
    width = round(COLS * PIXEL_MM * preview.MIP_HEIGHT / (SLICES * Z_MM))
    ct_box = ((240 - width) // 2, band, (240 - width) // 2 + width, band + height)
    assert _bright_quadrant(image, ct_box) == ("top", "right")


def test_mip_keeps_the_millimetre_aspect_ratio() -> None:
    view = View.of(_affine())
    assert (view.ap_axis, view.lr_axis, view.z_mm) == (1, 2, Z_MM)
    ct, pet = _volumes(_affine())
    image = render_mip(ct, pet, "job 1")
    band = 6 + 17 * 2
    assert image.height - band == preview.MIP_HEIGHT  # 100 mm tall beats 48 mm wide
    expected_width = COLS * PIXEL_MM / (SLICES * Z_MM) * preview.MIP_HEIGHT
    # The CT tile's dark body sits centred in a 240-pixel-wide frame: measure the image's own columns.
    assert round(expected_width) < 240 and image.width == 240 * 2 + 4


def test_synthetic_warning_is_burnt_into_the_pet_tile() -> None:
    ct, pet = _volumes(_affine())
    pixels = np.asarray(render_mip(ct, pet, "job 1"))
    warn = np.all(pixels == preview._WARN, axis=-1)
    assert warn[:, 244:].any() and not warn[:, :240].any()  # on the PET half, not on the CT


def test_pet_window_label_states_its_units() -> None:
    assert "SUVbw" in preview._pet_label(PetUnits.SUVBW)
    assert "no SUV" in preview._pet_label(PetUnits.RELATIVE)


def test_previews_are_private_pngs_under_the_results_dir(tmp_path: Path) -> None:
    ct, pet = _volumes(_affine())
    written = write_previews(ct, pet, tmp_path / "results" / "7", "job 7 · tiny")
    assert [path.name for path in written] == list(preview.PREVIEW_NAMES)
    for path in written:
        assert path.parent == tmp_path / "results" / "7" / "preview"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert stat.S_IMODE(written[0].parent.stat().st_mode) == 0o700


def test_a_pet_off_the_ct_grid_is_refused(tmp_path: Path) -> None:
    ct, pet = _volumes(_affine())
    shifted = _affine()
    shifted[0, 3] = 5.0
    moved = PetVolume(pet.values, shifted, pet.units, ct)
    with pytest.raises(ValueError, match="CT's own grid"):
        write_previews(ct, moved, tmp_path, "job 1")

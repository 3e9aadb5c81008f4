"""One CT series made by code, written to DICOM in each of the eight right-angle in-plane storages.

Headers to volume to the model to files, with the tiny reference model: every
storage gives, mapped back to the head-first-supine pixel order, the very same
stored pixel values as the head-first-supine series, on either output grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import make_ct_series
from pydicom.dataset import Dataset

from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.inplane import ALL_OPS, InPlaneOp
from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.pipeline import Pipeline
from ct2pet_node.service.convert import convert_folder

ROWS = COLUMNS = 64
SLICES = 5
# The tiny model's assumed frame: 500 mm over 64 pixels, so this series needs no padding.
SPACING = 500.0 / 64


@pytest.fixture(scope="module")
def tiny(tiny_weights: Path) -> Pipeline:
    return load_pipeline(tiny_weights, device="cpu")


def _body() -> np.ndarray:
    """An asymmetric phantom, so a mirrored or rotated view is a different input."""
    z, y, x = np.meshgrid(np.arange(SLICES), np.arange(ROWS), np.arange(COLUMNS), indexing="ij")
    hu = np.full((SLICES, ROWS, COLUMNS), -1000.0)
    body = ((x - 30) / 26.0) ** 2 + ((y - 34) / 18.0) ** 2 < 1
    hu[body] = 40.0
    hu[body & (x < 20) & (y < 30)] = 700.0  # a bone on the patient's right, anterior
    hu[body & (x > 40) & (y > 38)] = -600.0 + 10 * z[body & (x > 40) & (y > 38)]  # lung, left posterior
    return hu


def _write_storage(directory: Path, op: InPlaneOp) -> None:
    hfs = np.eye(4)
    hfs[:3, :3] = np.diag([SPACING, SPACING, 3.0])
    hfs[:3, 3] = (-COLUMNS * SPACING / 2, -ROWS * SPACING / 2, -100.0)
    stored = op.apply_to_affine(hfs, (ROWS, COLUMNS))
    row_direction = stored[:3, 0] / SPACING
    column_direction = stored[:3, 1] / SPACING

    def place(index: int, ds: Dataset) -> None:
        # The same patient: each stored slice's first pixel is where that pixel of the anatomy is.
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (stored @ (0, 0, index, 1))[:3]]

    make_ct_series(
        directory,
        n=SLICES,
        rows=ROWS,
        cols=COLUMNS,
        spacing=(SPACING, SPACING),
        step=3.0,
        first_z=-100.0,
        orientation=(*row_direction, *column_direction),
        hu=op.apply(_body()),
        mutate=place,
    )


def _config(grid: str) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        routing=dataclasses.replace(config.routing, min_slices=SLICES),
        output=dataclasses.replace(config.output, series=("pet",), grid=grid),
        engine=dataclasses.replace(config.engine, steps=3, eta=0.0, seed=0),
    )


def _pixels_by_position(folder: Path) -> dict[float, tuple[np.ndarray, Dataset]]:
    found = {}
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        found[round(float(ds.ImagePositionPatient[2]), 3)] = (ds.pixel_array, ds)
    return found


@pytest.mark.parametrize("grid", ["model", "ct"])
def test_every_storage_gives_the_head_first_supine_pixels(tmp_path: Path, tiny: Pipeline, grid: str) -> None:
    results = {}
    for number, op in enumerate(ALL_OPS):
        _write_storage(tmp_path / "in" / str(number), op)
        (converted,) = convert_folder(
            _config(grid), tmp_path / "in" / str(number), tmp_path / "out" / str(number), tiny
        )
        assert converted.refused is None
        results[op] = _pixels_by_position(tmp_path / "out" / str(number))
    reference = results[ALL_OPS[0]]
    assert len(reference) == SLICES
    for op, slices in results.items():
        assert slices.keys() == reference.keys()
        for z, (pixels, ds) in slices.items():
            expected, expected_ds = reference[z]
            # Written in the CT's own pixel order: undo the storage to compare.
            np.testing.assert_array_equal(op.invert(pixels), expected, err_msg=f"{op.describe()} at z {z}")
            assert ds.RescaleSlope == expected_ds.RescaleSlope
            said = "in the model's orientation" if op.is_identity else "to the model's orientation"
            assert said in ds.DerivationDescription

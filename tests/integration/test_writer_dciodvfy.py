"""Every output kind passes dicom3tools' ``dciodvfy`` IOD check with no errors.

dciodvfy prints the IOD it checked, then one line per finding starting
with ``Error - `` or ``Warning - ``; its exit status does not tell errors
apart, so the lines are read.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import make_ct_series

from ct2pet_node.dicom.resample import pet_on_grid
from ct2pet_node.dicom.writer import SynthesisInfo, write_pet_series
from ct2pet_node.domain.model_grid import ModelFrame, plan_model_grid
from ct2pet_node.domain.volume import CtVolume, PetUnits, PetVolume, SourceSlice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed"),
]

# The body part is unknown (the CT states none), so Laterality is present
# and empty, which is what the IOD asks for then; dciodvfy warns anyway.
EXPECTED_WARNING = "attribute <Laterality>"


def dciodvfy(path: Path) -> tuple[str, list[str], list[str]]:
    """(IOD name, error lines, warning lines) of one file."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return (lines[0] if lines else ""), errors, warnings


def ct_volume(paths: list[Path]) -> CtVolume:
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    spacing_rows, spacing_columns = (float(v) for v in headers[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([spacing_columns, spacing_rows, 1.0])
    affine[:3, 2] = positions[1] - positions[0]
    affine[:3, 3] = positions[0]
    first = headers[0]
    return CtVolume(
        hu=np.zeros((len(headers), int(first.Rows), int(first.Columns)), np.float32),
        affine=affine,
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        frame_of_reference_uid=first.FrameOfReferenceUID,
        sources=tuple(
            SourceSlice(h.SOPInstanceUID, h.SOPClassUID, tuple(p))
            for h, p in zip(headers, positions, strict=True)
        ),
        kvp=120.0,
    )


def write_one(ct: CtVolume, header: Path, kind: str, units: PetUnits, grid: str, out: Path) -> Path:
    # The engine's output: an 8 x 8 model grid over the CT's field of view.
    rows, columns = ct.hu.shape[1:]
    frame = ModelFrame(8, columns * ct.spacing[0] / 8)
    mapping = plan_model_grid(ct.affine, (rows, columns), frame)
    values = np.random.default_rng(0).random((ct.hu.shape[0], 8, 8)).astype(np.float32) * 8.0
    pet = pet_on_grid(PetVolume(values, mapping.model_affine, units, ct), grid)
    info = SynthesisInfo("cpdm-test", "test weights 1", 25, 7, 1.0, "0.1.0", units)
    return write_pet_series(pet, kind, info, header, out, now=datetime.datetime(2025, 1, 2, 3, 4, 5))[1]


@pytest.mark.parametrize("units", list(PetUnits))
@pytest.mark.parametrize(("kind", "iod"), [("secondary-capture", "SCImage"), ("pet", "PETImage")])
def test_outputs_pass_dciodvfy(tmp_path: Path, kind: str, iod: str, units: PetUnits) -> None:
    paths = make_ct_series(tmp_path / "ct", n=3, rows=16, cols=16)
    checked, errors, warnings = dciodvfy(
        write_one(ct_volume(paths), paths[0], kind, units, "model", tmp_path)
    )
    assert checked == iod
    assert errors == []
    assert all(EXPECTED_WARNING in line for line in warnings), warnings


def test_a_known_body_part_leaves_no_warning(tmp_path: Path) -> None:
    def chest(_: int, ds: pydicom.Dataset) -> None:
        ds.BodyPartExamined = "CHEST"

    paths = make_ct_series(tmp_path / "ct", n=3, rows=16, cols=16, mutate=chest)
    for kind in ("secondary-capture", "pet"):
        _, errors, warnings = dciodvfy(
            write_one(ct_volume(paths), paths[0], kind, PetUnits.SUVBW, "ct", tmp_path / kind)
        )
        assert (errors, warnings) == ([], [])


def test_outputs_from_the_real_sample_pass_dciodvfy(sample_dir: Path, tmp_path: Path) -> None:
    files = sorted((sample_dir / "CT").glob("*.dcm"))[:30]
    ordered = sorted(
        files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )[:2]
    ct = ct_volume(ordered)
    for kind in ("secondary-capture", "pet"):
        _, errors, warnings = dciodvfy(
            write_one(ct, ordered[0], kind, PetUnits.SUVBW, "model", tmp_path / kind)
        )
        assert errors == []
        assert all(EXPECTED_WARNING in line for line in warnings), warnings

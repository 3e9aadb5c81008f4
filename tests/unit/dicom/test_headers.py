"""read_slice_header: classic and Enhanced CT headers, and the errors for bad files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ctfactory import (
    AXIAL,
    FRAME_OF_REFERENCE_UID,
    STUDY_UID,
    make_ct_series,
    series_uid_for,
    set_raw,
)
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, JPEGLSLossless

from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.errors import InputError


def test_classic_ct_header_carries_identity_and_geometry(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=4, rows=32, cols=48, spacing=(0.8, 0.7), step=2.5, first_z=-50.0)
    header = read_slice_header(paths[1])
    assert header.sop_class_uid == CTImageStorage
    assert header.series_uid == series_uid_for("ct")
    assert header.study_uid == STUDY_UID
    assert header.frame_of_reference_uid == FRAME_OF_REFERENCE_UID
    assert header.modality == "CT"
    assert header.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert (header.rows, header.columns) == (32, 48)
    assert header.image_position == pytest.approx((-48 * 0.7 / 2, -32 * 0.8 / 2, -47.5))
    assert header.image_orientation == AXIAL
    assert header.pixel_spacing == (0.8, 0.7)
    assert header.slice_thickness == 2.5
    assert header.kvp == 120.0
    assert header.gantry_tilt is None
    assert header.images_in_acquisition is None
    assert (header.frames, header.frame_positions) == (1, ())
    assert header.path == paths[1]


def test_images_in_acquisition_and_compressed_files_are_read(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=3, images_in_acquisition=3, transfer_syntax=JPEGLSLossless)
    header = read_slice_header(paths[0])
    assert header.images_in_acquisition == 3
    assert header.image_position is not None


def test_enhanced_ct_header_lists_every_frame_position(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n=6, step=2.0, first_z=10.0, enhanced=True, tilt_degrees=0.3)
    header = read_slice_header(path)
    assert header.sop_class_uid == EnhancedCTImageStorage
    assert header.frames == 6
    # The factory writes frames against position order; the header keeps frame order.
    assert [p[2] for p in header.frame_positions] == pytest.approx([20.0, 18.0, 16.0, 14.0, 12.0, 10.0])
    assert header.image_position == header.frame_positions[0]
    assert header.pixel_spacing == (0.9, 0.9)
    assert header.image_orientation is not None and header.image_orientation[5] == pytest.approx(0.005236)
    assert header.gantry_tilt == pytest.approx(0.3)
    assert header.kvp == 120.0


def test_non_finite_geometry_reaches_qualification_intact(tmp_path: Path) -> None:
    def nan_position(index: int, ds: Dataset) -> None:
        set_raw(ds, "ImagePositionPatient", "NaN\\0\\inf")

    (path,) = make_ct_series(tmp_path, n=1, mutate=nan_position)
    header = read_slice_header(path)
    assert header.image_position is not None
    assert math.isnan(header.image_position[0]) and math.isinf(header.image_position[2])


def test_text_in_a_number_tag_is_an_input_error(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n=1, mutate=lambda i, ds: set_raw(ds, "PixelSpacing", "0.9\\abc"))
    with pytest.raises(InputError, match=r"PixelSpacing '0.9\\\\abc' is not a list of numbers"):
        read_slice_header(path)


def test_missing_series_uid_is_named(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n=1, mutate=lambda i, ds: delattr(ds, "SeriesInstanceUID"))
    with pytest.raises(InputError, match="missing SeriesInstanceUID"):
        read_slice_header(path)


def test_missing_rows_means_not_an_image(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, n=1, mutate=lambda i, ds: delattr(ds, "Rows"))
    with pytest.raises(InputError, match="missing or invalid Rows"):
        read_slice_header(path)


def test_non_dicom_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file"):
        read_slice_header(path)


def test_vanished_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be read"):
        read_slice_header(tmp_path / "gone.dcm")

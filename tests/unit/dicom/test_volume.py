"""build_ct_volume (HU, order, sources, decoders, broken pixel data) and scan_folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import default_hu, make_ct_series, series_uid_for
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import build_ct_volume, scan_folder
from ct2pet_node.domain.uids import SeriesUid
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import InputError, SeriesRefused
from ct2pet_node.routing.qualify import qualify_series

RULES = RoutingConfig(
    series_quiet_seconds=30, min_slices=3, max_gantry_tilt_degrees=0.5, slice_spacing_tolerance_mm=0.05
)


def volume_of(paths: Sequence[Path]) -> CtVolume:
    return build_ct_volume(qualify_series([read_slice_header(p) for p in paths], RULES))


def test_classic_series_becomes_hu_in_position_order(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=6, rows=16, cols=20)
    volume = volume_of(sorted(paths, key=lambda p: p.name))
    assert volume.hu.dtype == np.float32 and volume.hu.shape == (6, 16, 20)
    np.testing.assert_array_equal(volume.hu, default_hu(6, 16, 20))
    assert [s.sop_instance_uid for s in volume.sources] == [
        read_slice_header(p).sop_instance_uid for p in paths
    ]
    assert [s.position[2] for s in volume.sources] == pytest.approx([-100.0 + 3.0 * k for k in range(6)])
    assert all(s.frame_number is None for s in volume.sources)
    assert volume.series_uid == series_uid_for("ct")
    assert volume.spacing == pytest.approx((0.9, 0.9, 3.0))
    assert volume.kvp == 120.0


def test_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    slopes = [0.5, 1.0, 2.0, 1.0]
    intercepts = [-1024.0, -1000.0, -1024.0, 0.0]
    paths = make_ct_series(tmp_path, n=4, rows=8, cols=8, slope=slopes, intercept=intercepts)
    np.testing.assert_array_equal(volume_of(paths).hu, default_hu(4, 8, 8))


def test_enhanced_ct_applies_per_frame_rescale(tmp_path: Path) -> None:
    paths = make_ct_series(
        tmp_path,
        n=5,
        rows=8,
        cols=12,
        enhanced=True,
        slope=[1, 0.5, 1, 2, 1],
        intercept=[-1024, -1024, 0, -1024, -3],
    )
    volume = volume_of(paths)
    np.testing.assert_array_equal(volume.hu, default_hu(5, 8, 12))
    assert [s.frame_number for s in volume.sources] == [5, 4, 3, 2, 1]
    assert {s.sop_class_uid for s in volume.sources} == {"1.2.840.10008.5.1.4.1.1.2.1"}


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_transfer_syntaxes_decode_to_the_same_hu(tmp_path: Path, syntax: str) -> None:
    # 64 x 64: OpenJPEG's default of 6 resolutions needs at least 32 pixels a side.
    paths = make_ct_series(tmp_path, n=3, rows=64, cols=64, transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(volume_of(paths).hu, default_hu(3, 64, 64))


def test_truncated_pixel_data_refuses_naming_the_instance(tmp_path: Path) -> None:
    def truncate(index: int, ds: Dataset) -> None:
        if index == 1:
            ds.PixelData = ds.PixelData[:100]

    paths = make_ct_series(tmp_path, n=3, rows=16, cols=16, mutate=truncate)
    uid = read_slice_header(paths[1]).sop_instance_uid
    with pytest.raises(
        SeriesRefused,
        match=rf"instance {uid} holds 100 bytes of pixel data, but 1 frame\(s\) of "
        r"16x16 pixels at 16 bits need 512; the file is truncated",
    ):
        volume_of(paths)


def test_undecodable_compressed_pixel_data_is_an_input_error_naming_the_instance(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=3, rows=16, cols=16, transfer_syntax=RLELossless)
    broken = pydicom.dcmread(paths[2])
    broken.PixelData = encapsulate([b"\x00" * 64])
    broken.save_as(paths[2])
    with pytest.raises(InputError, match=rf"pixel data of instance {broken.SOPInstanceUID} \(RLE Lossless\)"):
        volume_of(paths)


def test_scan_folder_groups_series_recursively_and_skips_other_files(tmp_path: Path) -> None:
    first = make_ct_series(tmp_path / "a", n=3, name="first")
    second = make_ct_series(tmp_path / "b" / "deeper", n=2, name="second")
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "b" / "empty.dcm").write_bytes(b"")
    found = scan_folder(tmp_path)
    assert set(found) == {series_uid_for("first"), series_uid_for("second")}
    assert {h.path for h in found[SeriesUid(series_uid_for("first"))]} == set(first)
    assert {h.path for h in found[SeriesUid(series_uid_for("second"))]} == set(second)


def test_scan_folder_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a directory"):
        scan_folder(tmp_path / "nowhere")


def test_sample_volume_has_the_scanners_hu(sample_dir: Path) -> None:
    (headers,) = scan_folder(sample_dir / "CT").values()
    rules = RoutingConfig(30, 20, 0.5, 0.05)
    volume = build_ct_volume(qualify_series(headers, rules))
    assert volume.hu.shape == (247, 512, 512)
    # HU = stored - 1024; padding stored as -2000 stays -3024 HU.
    assert volume.hu[0, 0, 0] == -3024.0
    assert volume.hu[0, 256, 256] == -997.0
    assert volume.hu[123, 256, 256] == 50.0
    assert volume.hu[123, 300, 200] == 56.0
    assert volume.sources[123].position == pytest.approx((-250.0, -250.0, -907.42 + 123 * 3.27))
    middle = pydicom.dcmread(
        next(h.path for h in headers if h.sop_instance_uid == volume.sources[123].sop_instance_uid)
    )
    assert int(middle.pixel_array[256, 256]) - 1024 == 50

"""qualify_series: the order, the affine, every refusal reason and the dropping policy."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from ctfactory import CORONAL, SAGITTAL, make_ct_series
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import scan_folder
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.uids import Uid
from ct2pet_node.errors import SeriesRefused
from ct2pet_node.routing.qualify import QualifiedSeries, qualify_series

RULES = RoutingConfig(
    series_quiet_seconds=30, min_slices=20, max_gantry_tilt_degrees=0.5, slice_spacing_tolerance_mm=0.05
)


def headers_of(paths: Sequence[Path]) -> list[SliceHeader]:
    return [read_slice_header(p) for p in paths]


def qualify(paths: Sequence[Path]) -> QualifiedSeries:
    return qualify_series(headers_of(paths), RULES)


def refusal(headers: Sequence[SliceHeader], rules: RoutingConfig = RULES) -> str:
    with pytest.raises(SeriesRefused) as caught:
        qualify_series(headers, rules)
    return str(caught.value)


def assert_affine_reproduces_positions(series: QualifiedSeries) -> None:
    for z, slice_ in enumerate(series.slices):
        lps = series.affine @ np.array([0.0, 0.0, z, 1.0])
        assert lps[:3] == pytest.approx(slice_.position, abs=1e-6)
    # In-plane: voxel (x, y) of slice 0 steps along the row and column directions.
    corner = series.affine @ np.array([3.0, 2.0, 0.0, 1.0])
    orientation = series.slices[0].header.image_orientation
    spacing = series.slices[0].header.pixel_spacing
    assert orientation is not None and spacing is not None
    expected = (
        np.array(series.slices[0].position)
        + 3.0 * spacing[1] * np.array(orientation[:3])
        + 2.0 * spacing[0] * np.array(orientation[3:])
    )
    assert corner[:3] == pytest.approx(expected)


def test_axial_series_is_ordered_by_position_not_name_or_number(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=30, step=3.0, first_z=-100.0)
    shuffled = sorted(paths, key=lambda p: p.name)
    series = qualify(shuffled)
    assert [s.header.path for s in series.slices] == paths
    assert [s.position[2] for s in series.slices] == pytest.approx([-100.0 + 3.0 * k for k in range(30)])
    assert series.spacing == pytest.approx((0.9, 0.9, 3.0))
    assert (series.rows, series.columns, series.notes) == (64, 64, ())
    assert not series.affine.flags.writeable
    assert_affine_reproduces_positions(series)


def test_normal_pointing_to_the_feet_sorts_along_the_normal(tmp_path: Path) -> None:
    # Columns run towards the patient's anterior: normal is -z, so z falls along the stack.
    series = qualify(make_ct_series(tmp_path, n=25, orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)))
    zs = [s.position[2] for s in series.slices]
    assert zs == sorted(zs, reverse=True)
    assert series.affine[2, 2] == pytest.approx(-3.0)
    assert_affine_reproduces_positions(series)


def test_small_tilt_within_the_limit_is_kept_as_a_sheared_affine(tmp_path: Path) -> None:
    series = qualify(make_ct_series(tmp_path, n=25, tilt_degrees=0.3))
    assert_affine_reproduces_positions(series)


def test_enhanced_ct_frames_are_ordered_with_frame_numbers(tmp_path: Path) -> None:
    series = qualify(make_ct_series(tmp_path, n=24, step=2.0, enhanced=True))
    assert len(series.slices) == 24
    # The factory writes frames against position order: frame 24 is the lowest slice.
    assert [s.frame_number for s in series.slices] == list(range(24, 0, -1))
    assert_affine_reproduces_positions(series)


def test_missing_slice_is_named_with_its_neighbours(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=30, step=3.5, first_z=-200.0, missing=(10,))
    assert refusal(headers_of(paths)).startswith(
        "slice 11 missing between z=-168.5 and z=-161.5 (expected a 3.50 mm step)"
    )


def test_several_gaps_are_numbered_on_the_full_grid(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=30, step=3.0, first_z=0.0, missing=(5, 6, 20))
    assert refusal(headers_of(paths)).startswith(
        "slices 6-7 missing between z=12.0 and z=21.0; slice 21 missing between z=57.0 and z=63.0 "
        "(expected a 3.00 mm step)"
    )


def test_uneven_step_is_refused_not_resampled(tmp_path: Path) -> None:
    def shift(index: int, ds: Dataset) -> None:
        if index == 10:
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 1.0]

    reason = refusal(headers_of(make_ct_series(tmp_path, n=30, first_z=0.0, mutate=shift)))
    assert reason.startswith(
        "uneven slice spacing: slice 10 (z=27.0) to slice 11 (z=31.0) is 4.00 mm, expected 3.00 mm ± 0.05 mm"
    )
    assert "does not resample" in reason


def test_duplicate_position_names_both_instances(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=30, first_z=0.0)
    extra = make_ct_series(tmp_path / "again", n=1, first_z=15.0)
    headers = headers_of([*paths, *extra])
    reason = refusal(headers)
    original = next(
        h for h in headers if h.image_position and h.image_position[2] == 15.0 and h.path in paths
    )
    assert "share position z=15.0" in reason
    assert original.sop_instance_uid in reason and headers[-1].sop_instance_uid in reason


def test_same_instance_twice_is_used_once(tmp_path: Path) -> None:
    headers = headers_of(make_ct_series(tmp_path, n=25))
    series = qualify_series([*headers, headers[3]], RULES)
    assert len(series.slices) == 25
    assert series.notes == ("1 instance(s) received more than once; each used once",)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"rows": 32}, "slices differ in size"),
        ({"pixel_spacing": (0.7, 0.7)}, "slices differ in pixel spacing"),
        ({"image_orientation": (1.0, 0.0, 0.0, 0.0, 0.9998, 0.02)}, "slices differ in orientation"),
        ({"frame_of_reference_uid": Uid("1.2.3.999")}, "series has 2 frames of reference"),
        ({"frame_of_reference_uid": None}, "has no FrameOfReferenceUID"),
        ({"image_position": (math.nan, 0.0, 0.0)}, "non-finite ImagePositionPatient (nan\\0.0\\0.0)"),
        ({"pixel_spacing": (math.inf, 0.9)}, "non-finite PixelSpacing"),
        ({"image_orientation": None}, "has no ImageOrientationPatient"),
        ({"image_orientation": (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)}, "not two perpendicular unit vectors"),
        ({"modality": "PT"}, "series mixes modalities"),
        ({"sop_class_uid": Uid("1.2.840.10008.5.1.4.1.1.128")}, "not a CT image"),
    ],
)
def test_one_bad_slice_refuses_the_series_and_is_named(
    tmp_path: Path, change: dict[str, object], expected: str
) -> None:
    headers = headers_of(make_ct_series(tmp_path, n=25))
    headers[7] = dataclasses.replace(headers[7], **change)  # type: ignore[arg-type]
    reason = refusal(headers)
    assert expected in reason
    if "frames of reference" not in expected:
        assert headers[7].sop_instance_uid in reason


def test_other_modality_is_refused(tmp_path: Path) -> None:
    reason = refusal(headers_of(make_ct_series(tmp_path, n=25, modality="PT")))
    assert reason == "series modality is PT, not CT; only CT series are translated to PET"


def test_gantry_tilt_tag_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    reason = refusal(headers_of(make_ct_series(tmp_path, n=25, tilt_degrees=15.0)))
    assert reason.startswith("gantry tilt 15.0° (instance ")
    assert "exceeds the 0.5° this node accepts" in reason


def test_tilt_without_a_tag_is_found_from_the_geometry(tmp_path: Path) -> None:
    headers = [
        dataclasses.replace(h, gantry_tilt=None)
        for h in headers_of(make_ct_series(tmp_path, n=25, tilt_degrees=3.0))
    ]
    assert refusal(headers).startswith("slices are stacked at 3.0° to their image plane's normal")


@pytest.mark.parametrize("orientation", [CORONAL, SAGITTAL])
def test_non_axial_series_is_refused(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    reason = refusal(headers_of(make_ct_series(tmp_path, n=25, orientation=orientation)))
    assert reason.startswith(
        "series is not axial: its slice normal is 90.0° from the patient's head-foot axis"
    )


def test_too_few_slices_is_refused(tmp_path: Path) -> None:
    reason = refusal(headers_of(make_ct_series(tmp_path, n=10)))
    assert reason.startswith("series has 10 slice(s), at least 20 are needed ([routing] min_slices)")


def test_localizers_and_secondary_captures_are_dropped_with_a_note(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=25)
    scout = make_ct_series(
        tmp_path, n=1, orientation=CORONAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    unlabelled = make_ct_series(tmp_path, n=1, orientation=SAGITTAL)
    capture = make_ct_series(
        tmp_path, n=1, sop_class_uid=SecondaryCaptureImageStorage, image_type=("DERIVED", "SECONDARY")
    )
    series = qualify([*scout, *paths, *unlabelled, *capture])
    assert [s.header.path for s in series.slices] == paths
    scout_uid, unlabelled_uid, capture_uid = (
        read_slice_header(p[0]).sop_instance_uid for p in (scout, unlabelled, capture)
    )
    notes = "\n".join(series.notes)
    assert f"dropped localizer {scout_uid} (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)" in notes
    assert f"dropped non-axial image {unlabelled_uid}" in notes
    assert f"dropped secondary capture {capture_uid}" in notes
    assert len(series.notes) == 3


def test_many_non_axial_images_mixed_in_are_refused(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n=25)
    reformats = make_ct_series(tmp_path, n=5, orientation=CORONAL)
    reason = refusal(headers_of([*paths, *reformats]))
    assert reason.startswith("series mixes 25 axial and 5 non-axial images")


def test_only_localizers_is_refused(tmp_path: Path) -> None:
    scouts = make_ct_series(tmp_path, n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert "only localizers or secondary captures" in refusal(headers_of(scouts))


def test_empty_series_is_refused() -> None:
    assert refusal([]) == "series has no instances; nothing to translate"


def test_sample_series_qualifies(sample_dir: Path) -> None:
    (headers,) = scan_folder(sample_dir / "CT").values()
    series = qualify_series(headers, RULES)
    assert len(series.slices) == 247
    assert series.spacing == pytest.approx((0.976562, 0.976562, 3.27))
    assert series.slices[0].position == pytest.approx((-250.0, -250.0, -907.42))
    assert series.slices[-1].position == pytest.approx((-250.0, -250.0, -103.0))
    assert series.notes == ()
    for z in (0, 100, 246):
        lps = series.affine @ np.array([0.0, 0.0, z, 1.0])
        assert lps[:3] == pytest.approx(series.slices[z].position, abs=1e-3)

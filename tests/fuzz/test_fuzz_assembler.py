"""Fuzz the series assembler: completion, qualification and volume building never raise anything
but a refusal with a reason.

Headers built by hypothesis (random positions, orientations, NaN/inf,
duplicates, mixed series and modalities, Enhanced CT frames) go to
``decide_completion`` and ``qualify_series``; small real files with mutated
headers and pixel data go through ``read_slice_header`` -> ``qualify_series``
-> ``build_ct_volume``. Each either qualifies or raises SeriesRefused or
InputError with a message; any other exception is a finding.

CI runs a bounded number of examples; ``CT2PET_FUZZ_EXAMPLES=N`` runs N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ctfactory import make_ct_series, set_raw
from fuzz.harness import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import build_ct_volume
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.errors import InputError, SeriesRefused
from ct2pet_node.routing.completion import decide_completion
from ct2pet_node.routing.qualify import qualify_series

RULES = RoutingConfig(
    series_quiet_seconds=30, min_slices=2, max_gantry_tilt_degrees=0.5, slice_spacing_tolerance_mm=0.05
)
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SOP_CLASSES = [CT, CT, CT, ENHANCED_CT, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.128"]
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

odd_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.nan, math.inf, -math.inf]),
)
coordinate = st.one_of(st.floats(-500, 500, allow_nan=False), odd_float)
cosine = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.7071067811865476]), odd_float)


def _tuple(element: st.SearchStrategy[float], size: int) -> st.SearchStrategy[tuple[float, ...] | None]:
    return st.one_of(st.none(), st.tuples(*[element] * size))


@st.composite
def slice_header(draw: st.DrawFn, index: int) -> SliceHeader:
    regular = draw(st.booleans())  # half the slices sit on a plausible axial grid
    step = draw(st.sampled_from([3.0, 2.5, -1.25, 0.0]))
    position = (0.0, 0.0, index * step) if regular else draw(_tuple(coordinate, 3))
    orientation = AXIAL if regular and draw(st.booleans()) else draw(_tuple(cosine, 6))
    frames = draw(st.sampled_from([1, 1, 1, 2, 3]))
    frame_positions = (
        tuple(draw(st.tuples(coordinate, coordinate, coordinate)) for _ in range(frames))
        if frames > 1
        else ()
    )
    return SliceHeader(
        sop_instance_uid=SopInstanceUid(f"1.2.3.{draw(st.integers(0, 6)) if draw(st.booleans()) else index}"),
        sop_class_uid=Uid(draw(st.sampled_from(SOP_CLASSES))),
        series_uid=SeriesUid(draw(st.sampled_from(["1.2.3", "1.2.3", "1.2.4"]))),
        study_uid=StudyUid("1.2"),
        frame_of_reference_uid=draw(st.sampled_from([Uid("1.9"), Uid("1.9"), Uid("1.8"), None])),
        modality=draw(st.sampled_from(["CT", "CT", "CT", "MR", "", "PT"])),
        image_type=draw(st.sampled_from([(), ("ORIGINAL", "PRIMARY", "AXIAL"), ("DERIVED", "LOCALIZER")])),
        instance_number=draw(st.one_of(st.none(), st.integers(-5, 5))),
        rows=draw(st.sampled_from([64, 64, 32, 1])),
        columns=draw(st.sampled_from([64, 64, 63])),
        image_position=position,  # type: ignore[arg-type]
        image_orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=draw(_tuple(st.one_of(st.sampled_from([0.9, 0.9, 0.0, -1.0]), odd_float), 2)),  # type: ignore[arg-type]
        slice_thickness=draw(st.one_of(st.none(), odd_float)),
        gantry_tilt=draw(st.one_of(st.none(), st.sampled_from([0.0, 0.3, 20.0]), odd_float)),
        images_in_acquisition=draw(st.one_of(st.none(), st.integers(-1, 12))),
        kvp=draw(st.one_of(st.none(), odd_float)),
        frames=frames,
        frame_positions=frame_positions,  # type: ignore[arg-type]
        path=Path(f"/nonexistent/{index}.dcm"),
    )


@st.composite
def series_headers(draw: st.DrawFn) -> list[SliceHeader]:
    count = draw(st.integers(0, 12))
    return [draw(slice_header(index)) for index in range(count)]


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=series_headers(), now=st.floats(0, 1e6), forced=st.booleans())
def test_completion_and_qualification_only_refuse(
    headers: list[SliceHeader], now: float, forced: bool
) -> None:
    decision = decide_completion(headers, last_instance_at=0.0, now=now, quiet_seconds=30.0, forced=forced)
    assert isinstance(decision.complete, bool) and decision.why
    try:
        series = qualify_series(headers, RULES)
    except SeriesRefused as refusal:
        assert str(refusal)
        return
    # What qualifies is usable: a finite affine with a non-zero step, one frame of reference, CT only.
    assert np.isfinite(series.affine).all()
    assert abs(np.linalg.det(series.affine[:3, :3])) > 0
    assert len(series.slices) >= RULES.min_slices
    assert all(s.header.modality == "CT" for s in series.slices)
    assert len({s.header.frame_of_reference_uid for s in series.slices}) == 1


# Files: mutated headers and pixel data through the whole assembler -------------------------------


def _set_bits_8(ds: Dataset) -> None:
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7


def _delete_pixels(ds: Dataset) -> None:
    del ds.PixelData


MUTATORS: dict[str, Callable[[Dataset], None]] = {
    "none": lambda ds: None,
    "truncate_pixels": lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 3]),
    "drop_pixels": _delete_pixels,
    "rows_bigger": lambda ds: setattr(ds, "Rows", ds.Rows + 5),
    "bits_8": _set_bits_8,
    "samples_3": lambda ds: setattr(ds, "SamplesPerPixel", 3),
    "nan_slope": lambda ds: set_raw(ds, "RescaleSlope", "NaN"),
    "inf_position": lambda ds: set_raw(ds, "ImagePositionPatient", "0\\0\\inf"),
    "garbage_spacing": lambda ds: set_raw(ds, "PixelSpacing", "0.9\\abc"),
    "duplicate_position": lambda ds: set_raw(ds, "ImagePositionPatient", "0\\0\\0"),
    "zero_rows": lambda ds: setattr(ds, "Rows", 0),
    "orientation_five_values": lambda ds: set_raw(ds, "ImageOrientationPatient", "1\\0\\0\\0\\1"),
    "huge_frames": lambda ds: setattr(ds, "NumberOfFrames", 4_000_000),
}
FILE_MUTATIONS = sorted(MUTATORS)


@pytest.fixture(scope="module")
def file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("assembler-fuzz")


def _assemble(paths: list[Path]) -> None:
    headers = []
    for path in paths:
        try:
            headers.append(read_slice_header(path))
        except InputError as error:
            assert str(error)
    try:
        volume = build_ct_volume(qualify_series(headers, RULES))
    except (SeriesRefused, InputError) as refusal:
        assert str(refusal)
        return
    assert volume.hu.shape[0] == len(volume.sources) and np.isfinite(volume.hu).all()


counter = iter(range(10**9))


@settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(FILE_MUTATIONS), min_size=1, max_size=3),
    targets=st.sets(st.integers(0, 3), min_size=1, max_size=4),
    compressed=st.booleans(),
)
def test_mutated_files_are_built_or_refused(
    file_dir: Path, kinds: list[str], targets: set[int], compressed: bool
) -> None:
    def mutate(index: int, ds: Dataset) -> None:
        if index in targets:
            for kind in kinds:
                MUTATORS[kind](ds)

    folder = file_dir / str(next(counter))
    try:
        paths = make_ct_series(
            folder,
            n=4,
            rows=8,
            cols=8,
            mutate=mutate,
            transfer_syntax=RLELossless if compressed else "1.2.840.10008.1.2.1",
        )
    except Exception:  # pydicom cannot even encode this combination (e.g. RLE of 3 samples): no input
        return
    _assemble(paths)

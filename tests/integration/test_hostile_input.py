"""Hand-made hostile and broken inputs: each answered with the right status or refused with a
specific reason, and the node keeps serving."""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from ctfactory import make_ct_series, set_raw
from fuzz.harness import RunningScp, node_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import _config

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import build_ct_volume
from ct2pet_node.errors import InputError, SeriesRefused
from ct2pet_node.net.scp import CANNOT_PARSE, INSTANCE_TOO_LARGE, INVALID_HEADER, SUCCESS
from ct2pet_node.routing.qualify import qualify_series

pytestmark = pytest.mark.integration

RULES = RoutingConfig(
    series_quiet_seconds=30, min_slices=3, max_gantry_tilt_degrees=0.5, slice_spacing_tolerance_mm=0.05
)
STUDY = "1.2.826.0.1.3680043.10.9"
SERIES = "1.2.826.0.1.3680043.10.9.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningScp]:
    running = RunningScp(node_config(tmp_path / "data", max_instance_mb=8))
    yield running
    running.stop()


def _element(group: int, element: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, size) + value
    return struct.pack("<HH2sH", group, element, vr, size) + value


def raw_file(path: Path, sop: str, body: bytes) -> Path:
    """A Part 10 file with valid meta (so the SCU can send it) and a hand-made data set."""
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    with pydicom.config.disable_value_validation():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop if 0 < len(sop) <= 64 and "/" not in sop else "1.2.3"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + body)
    return path


def header_body(sop: str, modality: bytes = b"CT", extra: bytes = b"", sop_vr: bytes = b"UI") -> bytes:
    return b"".join(
        (
            _element(0x0008, 0x0016, b"UI", CTImageStorage.encode()),
            _element(0x0008, 0x0018, sop_vr, sop.encode()),
            _element(0x0008, 0x0060, b"CS", modality),
            extra,
            _element(0x0020, 0x000D, b"UI", STUDY.encode()),
            _element(0x0020, 0x000E, b"UI", SERIES.encode()),
        )
    )


def send_raw(node: RunningScp, paths: list[Path], request_sop: str | None = None) -> list[int | None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        patch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
        return node.send(paths)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sop",
    ["../../etc", "1.2/../..", "/etc/passwd", "1." + "2" * 64, "1.2.3\x00/../../x", "1.2.3 ", "..", ""],
)
def test_path_traversal_and_overlong_uids_are_refused(node: RunningScp, tmp_path: Path, sop: str) -> None:
    path = raw_file(tmp_path / "evil.dcm", sop, header_body(sop))
    (status,) = send_raw(node, [path])
    if sop == "1.2.3 ":  # trailing space is UI padding: a valid UID, stored under its real name
        assert status == SUCCESS and [p.name for p in node.spooled()] == ["1.2.3.dcm"]
    else:
        assert status in (INVALID_HEADER, 0xC212)  # invalid UID, or differs from the request's
        assert node.spooled() == []
    assert not list(tmp_path.rglob("passwd")) and not (tmp_path / "etc").exists()
    assert node.echo()


def test_a_200_mb_declared_length_is_cannot_understand(node: RunningScp, tmp_path: Path) -> None:
    liar = _element(0x0009, 0x1010, b"OB", b"\x00" * 16, length=200 * 1024 * 1024)
    path = raw_file(tmp_path / "liar.dcm", f"{SERIES}.1", header_body(f"{SERIES}.1", extra=liar))
    assert send_raw(node, [path])[0] in (CANNOT_PARSE, INVALID_HEADER)  # unparseable, or keys missing
    assert node.spooled() == [] and node.echo()


def test_a_real_50_mb_private_element_exceeds_max_instance_mb(node: RunningScp, tmp_path: Path) -> None:
    big = _element(0x0009, 0x1010, b"OB", b"\xab" * (50 * 1024 * 1024))
    path = raw_file(tmp_path / "big.dcm", f"{SERIES}.2", header_body(f"{SERIES}.2", extra=big))
    small = raw_file(tmp_path / "small.dcm", f"{SERIES}.3", header_body(f"{SERIES}.3"))
    assert send_raw(node, [path, small]) == [INSTANCE_TOO_LARGE, SUCCESS]  # same association goes on
    assert [p.name for p in node.spooled()] == [f"{SERIES}.3.dcm"]


def test_truncated_data_set_and_wrong_vr(node: RunningScp, tmp_path: Path) -> None:
    body = header_body(f"{SERIES}.4")
    truncated = raw_file(tmp_path / "cut.dcm", f"{SERIES}.4", body[: len(body) - 30])
    wrong_vr = raw_file(
        tmp_path / "vr.dcm", f"{SERIES}.5", header_body(f"{SERIES}.5", sop_vr=b"US")
    )  # the SOP Instance UID claims to be an unsigned short
    statuses = send_raw(node, [truncated, wrong_vr])
    assert statuses[0] in (CANNOT_PARSE, INVALID_HEADER)
    assert statuses[1] == INVALID_HEADER  # regression: was stored (0x0000) with a US-typed UID
    assert node.spooled() == [] and node.echo()


def test_a_non_ct_modality_is_stored_then_refused_by_qualification(node: RunningScp, tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path / "mr", n=4, modality="MR", name="mr")
    assert (
        node.send(paths) == [SUCCESS] * 4
    )  # the CT SOP class was negotiated; the modality is the series' problem
    headers = [read_slice_header(p) for p in node.spooled()]
    with pytest.raises(SeriesRefused, match="series modality is MR, not CT"):
        qualify_series(headers, RULES)


def _headers(paths: list[Path]) -> list:
    return [read_slice_header(p) for p in paths]


def test_pixel_data_shorter_than_rows_by_columns_names_the_instance(tmp_path: Path) -> None:
    def cut(index: int, ds: Dataset) -> None:
        if index == 2:
            ds.PixelData = ds.PixelData[:100]

    paths = make_ct_series(tmp_path / "ct", n=4, rows=16, cols=16, mutate=cut)
    victim = pydicom.dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(SeriesRefused, match=rf"instance {victim} holds 100 bytes of pixel data.*truncated"):
        build_ct_volume(qualify_series(_headers(paths), RULES))


def test_pixel_data_a_whole_frame_longer_than_the_header_says_is_refused(tmp_path: Path) -> None:
    # Regression (fuzz): 16-bit pixels declared 8-bit decoded as two frames, with only a warning.
    def lie(index: int, ds: Dataset) -> None:
        if index == 1:
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7

    paths = make_ct_series(tmp_path / "ct", n=4, rows=16, cols=16, mutate=lie)
    victim = pydicom.dcmread(paths[1], stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(SeriesRefused, match=rf"instance {victim} holds 512 bytes .* are 256; its Rows"):
        build_ct_volume(qualify_series(_headers(paths), RULES))


@pytest.mark.parametrize(
    ("keyword", "text", "reason"),
    [
        ("ImagePositionPatient", "0\\0\\NaN", r"non-finite ImagePositionPatient \(0.0\\0.0\\nan\)"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\inf\\0", "non-finite ImageOrientationPatient"),
        ("PixelSpacing", "-inf\\0.9", "non-finite PixelSpacing"),
    ],
)
def test_non_finite_geometry_is_refused_by_name(tmp_path: Path, keyword: str, text: str, reason: str) -> None:
    def poison(index: int, ds: Dataset) -> None:
        if index == 1:
            set_raw(ds, keyword, text)

    paths = make_ct_series(tmp_path / "ct", n=4, rows=8, cols=8, mutate=poison)
    victim = pydicom.dcmread(paths[1], stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(SeriesRefused, match=rf"instance {victim} has a {reason}"):
        qualify_series(_headers(paths), RULES)


def test_duplicate_positions_and_mixed_series_are_refused(tmp_path: Path) -> None:
    first = make_ct_series(tmp_path / "a", n=4, rows=8, cols=8, name="dup")
    again = make_ct_series(
        tmp_path / "b", n=1, rows=8, cols=8, name="dup"
    )  # same series, same first position
    with pytest.raises(SeriesRefused, match=r"share position z=-100\.0"):
        qualify_series(_headers(first + again), RULES)
    other = make_ct_series(tmp_path / "c", n=4, rows=16, cols=16, name="dup", first_z=200.0)
    with pytest.raises(SeriesRefused, match="slices differ in size"):
        qualify_series(_headers(first + other), RULES)


def test_a_garbage_file_in_the_spool_is_an_input_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(InputError, match=r"junk\.dcm"):
        read_slice_header(junk)


def test_data_dir_is_for_the_service_user_only(node: RunningScp) -> None:
    """After a real store, every directory under data_dir is 0700 and every file 0600."""
    assert node.send(make_ct_series(node.data_dir.parent / "ct", n=3, rows=8, cols=8)) == [SUCCESS] * 3
    entries = [node.data_dir, *node.data_dir.rglob("*")]
    assert any(p.suffix == ".dcm" for p in entries) and any(
        p.name.startswith("jobs.sqlite3") for p in entries
    )
    loose = {
        str(p.relative_to(node.data_dir)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in entries
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    }
    assert loose == {}

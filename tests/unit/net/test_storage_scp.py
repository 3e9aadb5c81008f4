"""The storage SCP against pynetdicom's own SCU: negotiation, status codes, spooling."""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    Verification,
)
from structlog.testing import capture_logs

from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.records import AssociationReleased, InstanceRecord
from ct2pet_node.net.scp import (
    CANNOT_PARSE,
    INVALID_HEADER,
    OUT_OF_RESOURCES,
    SOP_INSTANCE_MISMATCH,
    SUCCESS,
    StorageScp,
)
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

STUDY = "1.2.826.0.1.3680043.10.2"
SERIES = "1.2.826.0.1.3680043.10.2.1"
OTHER_SERIES = "1.2.826.0.1.3680043.10.2.2"


def ct_dataset(index: int, fill: int | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{SERIES}.{index}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    pixels = np.arange(16, dtype=np.int16).reshape(4, 4) * (index + 1) + (fill or 0)
    ds.PixelData = pixels.tobytes()
    return ds


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def raw_instance(path: Path, meta_sop: str, body_sop: str, tail: bytes = b"") -> Path:
    """A Part 10 file whose data set is written byte by byte (explicit VR little endian)."""
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    with pydicom.config.disable_value_validation():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = meta_sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        write_file_meta_info(buffer, meta, enforce_standard=True)
    body = b"".join(
        (
            _element(0x0008, 0x0016, b"UI", CTImageStorage.encode()),
            _element(0x0008, 0x0018, b"UI", body_sop.encode()),
            _element(0x0008, 0x0060, b"CS", b"CT"),
            tail,
            _element(0x0020, 0x000D, b"UI", STUDY.encode()),
            _element(0x0020, 0x000E, b"UI", SERIES.encode()),
        )
    )
    path.write_bytes(buffer.getvalue() + body)
    return path


def config_for(
    data_dir: Path,
    allowed: tuple[str, ...] = (),
    min_free_mb: int = 0,
    max_instance_mb: int = 512,
    **node: object,
) -> Config:
    config = load_config()
    node_config = dataclasses.replace(
        config.node,
        data_dir=data_dir,
        host="127.0.0.1",
        min_free_mb=min_free_mb,
        network_timeout_seconds=5,
        **node,  # type: ignore[arg-type]
    )
    security = dataclasses.replace(
        config.security, allowed_calling_ae_titles=allowed, max_instance_mb=max_instance_mb
    )
    return dataclasses.replace(config, node=node_config, security=security)


class Harness:
    def __init__(
        self,
        data_dir: Path,
        allowed: tuple[str, ...] = (),
        min_free_mb: int = 0,
        on_stored: Callable[[InstanceRecord], None] | None = None,
        max_instance_mb: int = 512,
        **node: object,
    ) -> None:
        self.config = config_for(data_dir, allowed, min_free_mb, max_instance_mb, **node)
        self.spool = InstanceSpool(data_dir, self.config.node.min_free_mb)
        self.store = JobStore.open(data_dir)
        self.stored: list[InstanceRecord] = []
        self.released: list[AssociationReleased] = []
        self.refused: list[int] = []
        self.scp = StorageScp(
            self.config.node,
            self.config.security,
            self.spool,
            self.store,
            on_stored or self.stored.append,
            address=("127.0.0.1", 0),
            on_released=self.released.append,
            on_refused=self.refused.append,
        )
        self.scp.start()

    def associate(self, contexts=(CTImageStorage,), called: str | None = None, calling: str = "SCANNER"):
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        for context in contexts:
            ae.add_requested_context(context, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae.associate("127.0.0.1", self.scp.port, ae_title=called or self.config.node.ae_title)

    def send_raw(self, path: Path) -> int:
        """Send a file's data set bytes as they are, hostile values included."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
            # pynetdicom reads the hostile UID from the file meta; let it, quietly.
            patch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
            return self.send(path)

    def send(self, dataset_or_path: Dataset | Path) -> int:
        assoc = self.associate()
        assert assoc.is_established
        try:
            status = assoc.send_c_store(dataset_or_path)
        finally:
            assoc.release()
        return int(status.Status)

    def close(self) -> None:
        self.scp.stop(timeout=5)
        self.store.close()


@pytest.fixture
def harness(tmp_path: Path):
    made = Harness(tmp_path / "data")
    yield made
    made.close()


def spooled_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "spool").rglob("*") if p.is_file())


def test_echo_and_tcp_nodelay(harness: Harness) -> None:
    assoc = harness.associate(contexts=(Verification,))
    assert assoc.is_established
    try:
        server = harness.scp._server
        assert server is not None
        (acceptor,) = server.active_associations
        sock = acceptor.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert int(assoc.send_c_echo().Status) == SUCCESS
    finally:
        assoc.release()


def test_store_spools_a_valid_part10_file_and_records_it(harness: Harness, tmp_path: Path) -> None:
    assert harness.send(ct_dataset(1)) == SUCCESS
    (path,) = spooled_files(tmp_path / "data")
    assert path == tmp_path / "data" / "spool" / STUDY / SERIES / f"{SERIES}.1.dcm"
    spooled = pydicom.dcmread(path)
    assert spooled.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert spooled.file_meta.MediaStorageSOPInstanceUID == f"{SERIES}.1"
    np.testing.assert_array_equal(spooled.pixel_array, np.arange(16, dtype=np.int16).reshape(4, 4) * 2)
    (record,) = harness.stored
    assert record.path == path and record.calling_ae_title == "SCANNER" and record.modality == "CT"
    assert harness.store.instances_of(SERIES) == [record]
    job = harness.store.job_for_series(SERIES)
    assert job is not None and job.n_instances == 1


def test_a_clean_release_reports_what_the_association_stored_and_an_abort_nothing(
    harness: Harness,
) -> None:
    assoc = harness.associate()
    for index in (1, 2):
        assert assoc.send_c_store(ct_dataset(index)).Status == SUCCESS
    assert assoc.send_c_store(ct_dataset(1)).Status == SUCCESS  # a re-send stores nothing new
    assoc.release()
    wait_for(lambda: len(harness.released) == 1)
    (release,) = harness.released
    assert release.calling_ae_title == "SCANNER"
    assert release.delivered == {SERIES: frozenset({f"{SERIES}.1", f"{SERIES}.2"})}
    aborted = harness.associate()
    assert aborted.send_c_store(ct_dataset(3)).Status == SUCCESS
    aborted.abort()
    dropped = harness.associate()
    assert dropped.send_c_store(ct_dataset(4)).Status == SUCCESS
    connection = dropped.dul.socket.socket
    connection.shutdown(socket.SHUT_RDWR)  # the connection drops: no release, no abort PDU
    wait_for(lambda: not dropped.is_alive())
    connection.close()
    echo_only = harness.associate(contexts=(Verification,))
    echo_only.release()
    wait_for(lambda: harness.scp._server is not None and not harness.scp._server.active_associations)
    assert len(harness.released) == 1  # neither the abort, the drop nor an association that stored nothing
    assert harness.scp._deliveries.open_associations() == 0


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_resent_instance_is_stored_once(harness: Harness, tmp_path: Path) -> None:
    assert harness.send(ct_dataset(1)) == SUCCESS
    (path,) = spooled_files(tmp_path / "data")
    first = path.read_bytes()
    assert harness.send(ct_dataset(1, fill=500)) == SUCCESS  # same SOP Instance UID, other pixels
    assert spooled_files(tmp_path / "data") == [path]
    assert path.read_bytes() == first
    assert len(harness.stored) == 1
    assert harness.store.job_for_series(SERIES).n_instances == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sop_uid", "status"),
    [
        ("../../../../tmp/evil", INVALID_HEADER),
        ("1.2.3/../../x", INVALID_HEADER),
        ("1.2.abc", INVALID_HEADER),
    ],
)
def test_invalid_or_hostile_uid_is_refused(
    harness: Harness, tmp_path: Path, sop_uid: str, status: int
) -> None:
    raw = raw_instance(tmp_path / "raw.dcm", sop_uid, sop_uid)
    assert harness.send_raw(raw) == status
    assert spooled_files(tmp_path / "data") == []
    assert not list(tmp_path.rglob("*evil*"))  # "../../../../tmp/evil" would land in tmp_path/tmp
    assert harness.stored == [] and harness.store.list_jobs() == []


def test_unparseable_data_set_answers_c210(harness: Harness, tmp_path: Path) -> None:
    broken_sequence = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0x1234, 0x5678, 4
    )
    raw = raw_instance(tmp_path / "raw.dcm", f"{SERIES}.7", f"{SERIES}.7", tail=broken_sequence)
    assert harness.send_raw(raw) == CANNOT_PARSE
    assert spooled_files(tmp_path / "data") == []


def test_data_set_uid_differing_from_the_request_answers_c212(harness: Harness, tmp_path: Path) -> None:
    raw = raw_instance(tmp_path / "raw.dcm", f"{SERIES}.8", f"{SERIES}.9")
    assert harness.send_raw(raw) == SOP_INSTANCE_MISMATCH
    assert spooled_files(tmp_path / "data") == []


def test_missing_modality_answers_c211(harness: Harness, tmp_path: Path) -> None:
    ds = ct_dataset(3)
    del ds.Modality
    assert harness.send(ds) == INVALID_HEADER
    assert spooled_files(tmp_path / "data") == []


def test_free_space_watermark_answers_a700(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "data", min_free_mb=10**9)
    try:
        assert harness.send(ct_dataset(1)) == OUT_OF_RESOURCES
        assert spooled_files(tmp_path / "data") == []
        assert harness.store.list_jobs() == []
    finally:
        harness.close()


def test_each_refusal_is_reported_with_its_status_and_a_stored_instance_is_not(harness: Harness) -> None:
    assert harness.send(ct_dataset(1)) == SUCCESS
    harness.spool.min_free_mb = 10**9  # the data directory is "full" from here on
    assert harness.send(ct_dataset(2)) == OUT_OF_RESOURCES
    assert harness.refused == [OUT_OF_RESOURCES]
    assert len(harness.stored) == 1


def test_a_failing_write_answers_a700_and_logs_store_failed(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "data" / "spool" / STUDY).write_bytes(b"in the way")  # the study folder cannot be made
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        assert harness.send(ct_dataset(1)) == OUT_OF_RESOURCES
    failed = [entry for entry in logs if entry["event"] == "store_failed"]
    assert failed and failed[0]["calling_ae"] == "SCANNER" and failed[0]["exc_info"] is True
    assert harness.store.list_jobs() == []


def test_a_failing_notification_still_answers_success(tmp_path: Path) -> None:
    def broken(_: InstanceRecord) -> None:
        raise RuntimeError("router gone")

    harness = Harness(tmp_path / "data", on_stored=broken)
    try:
        assert harness.send(ct_dataset(1)) == SUCCESS
        assert len(harness.store.instances_of(SERIES)) == 1
    finally:
        harness.close()


@pytest.mark.parametrize("sop_class", [MRImageStorage, PositronEmissionTomographyImageStorage])
def test_other_sop_classes_are_refused_at_negotiation_when_configured(tmp_path: Path, sop_class: str) -> None:
    harness = Harness(tmp_path / "data", other_sop_classes="refuse")
    assoc = harness.associate(contexts=(sop_class, CTImageStorage))
    try:
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CTImageStorage]
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [sop_class]
    finally:
        if assoc.is_established:
            assoc.release()
        harness.close()


def other_dataset(sop_class: str, modality: str, index: int) -> Dataset:
    """A small non-CT instance of ``sop_class`` with patient data (which must never reach the log)."""
    ds = ct_dataset(index)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{OTHER_SERIES}.{index}"
    ds.SeriesInstanceUID = OTHER_SERIES
    ds.Modality = modality
    ds.PatientName = "SECRET^PATIENT"
    ds.PatientID = "SECRET-ID-42"
    return ds


def test_other_sop_classes_are_acknowledged_counted_and_dropped(harness: Harness) -> None:
    pet = [other_dataset(PositronEmissionTomographyImageStorage, "PT", i) for i in range(3)]
    report = other_dataset(BasicTextSRStorage, "SR", 9)
    del report.PixelData
    ae = AE(ae_title="SCANNER")
    for context in (PositronEmissionTomographyImageStorage, BasicTextSRStorage, CTImageStorage):
        ae.add_requested_context(context, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", harness.scp.port, ae_title=harness.config.node.ae_title)
    assert len(assoc.accepted_contexts) == 3
    with capture_logs() as logs:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in [*pet, report, ct_dataset(1)]]
    assoc.release()
    assert statuses == [SUCCESS] * 5
    assert [p.name for p in spooled_files(harness.config.node.data_dir)] == [f"{SERIES}.1.dcm"]
    assert [job.series_uid for job in harness.store.list_jobs()] == [SERIES]
    assert harness.scp.ignored_counts() == {
        "PositronEmissionTomographyImageStorage": 3,
        "BasicTextSRStorage": 1,
    }
    ignored = [entry for entry in logs if entry["event"] == "instance_ignored"]
    assert len(ignored) == 4
    assert ignored[0]["sop_class"] == "PositronEmissionTomographyImageStorage"
    assert ignored[0]["series_uid"] == OTHER_SERIES and ignored[0]["calling_ae"] == "SCANNER"
    assert "SECRET" not in repr(logs)


def test_a_dropped_instance_is_not_held_in_memory_whatever_its_size(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "data", max_instance_mb=1)
    try:
        big = other_dataset(PositronEmissionTomographyImageStorage, "PT", 1)
        big.Rows = big.Columns = 1024
        big.PixelData = np.zeros((1024, 1024), dtype=np.int16).tobytes()  # 2 MiB
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(PositronEmissionTomographyImageStorage, [ExplicitVRLittleEndian])
        ae.maximum_pdu_size = 16_384  # many PDUs, so the guard sees the data set arrive
        assoc = ae.associate("127.0.0.1", harness.scp.port, ae_title=harness.config.node.ae_title)
        with capture_logs() as logs:
            assert int(assoc.send_c_store(big).Status) == SUCCESS
        assoc.release()
        assert spooled_files(harness.config.node.data_dir) == []
        (event,) = [entry for entry in logs if entry["event"] == "instance_ignored"]
        assert event["series_uid"] == OTHER_SERIES  # read from the bytes kept
    finally:
        harness.close()


def test_a_sender_proposing_128_contexts_is_accepted(harness: Harness) -> None:
    """DICOM's (and pynetdicom's) limit per association: a whole study's SOP classes and syntaxes."""
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    others = [
        c.abstract_syntax for c in AllStoragePresentationContexts if c.abstract_syntax != CTImageStorage
    ]
    for sop_class in [CTImageStorage, *others[:127]]:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assert len(ae.requested_contexts) == 128
    assoc = ae.associate("127.0.0.1", harness.scp.port, ae_title=harness.config.node.ae_title)
    assert assoc.is_established
    try:
        assert len(assoc.accepted_contexts) == 128
        assert int(assoc.send_c_store(ct_dataset(1)).Status) == SUCCESS
    finally:
        assoc.release()


def test_only_decodable_transfer_syntaxes_are_accepted(harness: Harness) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.4.100"])  # MPEG2
    ae.add_requested_context(CTImageStorage, [RLELossless])
    assoc = ae.associate("127.0.0.1", harness.scp.port, ae_title=harness.config.node.ae_title)
    try:
        assert [c.transfer_syntax[0] for c in assoc.accepted_contexts] == [RLELossless]
    finally:
        assoc.release()


def test_wrong_called_ae_title_is_rejected(harness: Harness) -> None:
    assoc = harness.associate(called="NOT-US")
    assert assoc.is_rejected


def test_calling_ae_allow_list(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "data", allowed=("SCANNER",))
    try:
        refused = harness.associate(calling="INTRUDER")
        assert refused.is_rejected
        allowed = harness.associate(calling="SCANNER")
        assert allowed.is_established
        allowed.release()
    finally:
        harness.close()

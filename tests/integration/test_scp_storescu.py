"""Our storage SCP against dcmtk's storescu: real peer, real sample, every accepted encoding.

Each received file is checked after decoding: the spooled file keeps the
sender's transfer syntax and its pixels equal the sent file's pixels (and,
for lossless syntaxes, the original uncompressed slice's).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSNearLossless

from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.net.scp import StorageScp
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.router import Router
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

pytestmark = pytest.mark.integration

SUBSET = 20  # consecutive slices of the sample's CT: enough for a qualifying series, quick to send
COMPRESSED_SUBSET = 5
STORESCU_TIMEOUT = 120


def _dcmtk_tool(name: str) -> str | None:
    """The dcmtk program ``name`` on PATH (pynetdicom installs a Python ``storescu`` that may shadow it)."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            probe = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in probe.stdout + probe.stderr:
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def storescu() -> str:
    found = _dcmtk_tool("storescu")
    if found is None:
        pytest.skip("dcmtk's storescu is not on PATH (install dcmtk, e.g. `apt-get install dcmtk`)")
    return found


@pytest.fixture(scope="module")
def ct_subset(sample_dir: Path) -> list[Path]:
    """SUBSET consecutive slices (by position, not file name) from the middle of the sample CT."""
    by_z = sorted(
        (float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]), p)
        for p in (sample_dir / "CT").glob("*.dcm")
    )
    middle = len(by_z) // 2
    return [path for _, path in by_z[middle - SUBSET // 2 : middle + SUBSET // 2]]


def _dcmtk_encode(tool: str, options: list[str], sources: list[Path], target: Path) -> list[Path]:
    program = _dcmtk_tool(tool)
    if program is None:
        pytest.skip(f"dcmtk's {tool} is not on PATH (install dcmtk)")
    target.mkdir()
    made = []
    for source in sources:
        out = target / source.name
        subprocess.run(
            [program, *options, str(source), str(out)], check=True, capture_output=True, timeout=60
        )
        made.append(out)
    return made


def _pydicom_encode(syntax: str, sources: list[Path], target: Path, **options: object) -> list[Path]:
    target.mkdir()
    made = []
    for source in sources:
        dataset = pydicom.dcmread(source)
        dataset.compress(syntax, **options)
        dataset.save_as(target / source.name)
        made.append(target / source.name)
    return made


# name -> (how to make it, lossless?)
VARIANTS = {
    "jpeg-lossless-sv1": (lambda s, t: _dcmtk_encode("dcmcjpeg", ["+e1"], s, t), True),
    "jpeg-lossless-p14": (lambda s, t: _dcmtk_encode("dcmcjpeg", ["+el"], s, t), True),
    "jpeg-ls-lossless": (lambda s, t: _dcmtk_encode("dcmcjpls", ["+el"], s, t), True),
    # dcmtk's JPEG-LS near-lossless encoder refuses signed pixels (the sample's); pyjpegls does them.
    "jpeg-ls-near-lossless": (lambda s, t: _pydicom_encode(JPEGLSNearLossless, s, t, jls_error=2), False),
    "jpeg2000-lossless": (lambda s, t: _pydicom_encode(JPEG2000Lossless, s, t), True),
    "jpeg2000-lossy": (lambda s, t: _pydicom_encode(JPEG2000, s, t, j2k_cr=[20]), False),
    "rle": (lambda s, t: _dcmtk_encode("dcmcrle", [], s, t), True),
}


def node_config(
    data_dir: Path,
    quiet: float = 60.0,
    allowed: tuple[str, ...] = (),
    min_free_mb: int = 0,
    settle: float = 0.0,
) -> Config:
    """The default config on loopback; ``settle`` 0 (off) so only the settle tests depend on that rule."""
    config = load_config()
    node = dataclasses.replace(
        config.node, data_dir=data_dir, host="127.0.0.1", min_free_mb=min_free_mb, network_timeout_seconds=10
    )
    routing = dataclasses.replace(
        config.routing, series_quiet_seconds=quiet, min_slices=5, settle_after_release_seconds=settle
    )
    security = dataclasses.replace(config.security, allowed_calling_ae_titles=allowed)
    return dataclasses.replace(config, node=node, routing=routing, security=security)


class Node:
    """SCP, job store, router and engine queue on one data directory, on a free loopback port."""

    def __init__(self, config: Config, with_router: bool = False) -> None:
        self.config = config
        self.data_dir = config.node.data_dir
        self.store = JobStore.open(self.data_dir)
        self.queue = InProcessQueue()
        self.stored: list[InstanceRecord] = []
        self.router = (
            Router(self.store, self.queue, config.routing, tick_seconds=0.1) if with_router else None
        )
        if self.router is not None:
            self.router.start()
        notify = self.router.notify if self.router is not None else self.stored.append
        spool = InstanceSpool(self.data_dir, config.node.min_free_mb)
        self.scp = StorageScp(
            config.node,
            config.security,
            spool,
            self.store,
            notify,
            address=("127.0.0.1", 0),
            on_released=self.router.notify_released if self.router is not None else None,
        )
        self.scp.start()

    def stop(self) -> None:
        self.scp.stop(timeout=5)
        if self.router is not None:
            self.router.stop(timeout=5)
        self.store.close()

    def spooled(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "spool").rglob("*.dcm"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    made = Node(node_config(tmp_path / "data"))
    yield made
    made.stop()


def proposing(syntax: str, folder: Path) -> list[str]:
    """storescu options proposing CT Image Storage in exactly ``syntax`` (its -x options lack some)."""
    profile = folder / "propose.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[Sent]\nTransferSyntax1 = " + syntax + "\n"
        "[[PresentationContexts]]\n[Sent]\nPresentationContext1 = 1.2.840.10008.5.1.4.1.1.2\\Sent\n"
        "[[Profiles]]\n[Sent]\nPresentationContexts = Sent\n"
    )
    return ["-xf", str(profile), "Sent"]


def send(
    storescu: str,
    port: int,
    files: list[Path],
    called: str = "CT2PET",
    calling: str = "SCANNER",
    options: tuple[str, ...] | list[str] = (),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [storescu, *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=STORESCU_TIMEOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def assert_spooled_as_sent(node: Node, sent: list[Path], originals: list[Path] | None) -> None:
    spooled = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in node.spooled()}
    assert len(spooled) == len(sent)
    for index, path in enumerate(sent):
        source = pydicom.dcmread(path)
        kept = pydicom.dcmread(spooled[source.SOPInstanceUID])
        assert spooled[source.SOPInstanceUID] == (
            node.data_dir
            / "spool"
            / source.StudyInstanceUID
            / source.SeriesInstanceUID
            / f"{source.SOPInstanceUID}.dcm"
        )
        assert kept.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert kept.SeriesInstanceUID == source.SeriesInstanceUID
        np.testing.assert_array_equal(kept.pixel_array, source.pixel_array)
        if originals is not None:
            np.testing.assert_array_equal(kept.pixel_array, pydicom.dcmread(originals[index]).pixel_array)


def test_uncompressed_series_is_spooled_bit_for_bit(storescu: str, node: Node, ct_subset: list[Path]) -> None:
    result = send(storescu, node.scp.port, ct_subset)
    assert result.returncode == 0, result.stderr
    assert_spooled_as_sent(node, ct_subset, None)
    job = node.store.job_for_series(pydicom.dcmread(ct_subset[0], stop_before_pixels=True).SeriesInstanceUID)
    assert job is not None and job.n_instances == SUBSET and job.state is JobState.RECEIVED


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compressed_series_is_spooled_in_its_own_syntax(
    storescu: str, node: Node, ct_subset: list[Path], tmp_path: Path, variant: str
) -> None:
    make, lossless = VARIANTS[variant]
    originals = ct_subset[:COMPRESSED_SUBSET]
    encoded = make(originals, tmp_path / variant)
    syntax = pydicom.dcmread(encoded[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    result = send(storescu, node.scp.port, encoded, options=proposing(syntax, tmp_path))
    assert result.returncode == 0, result.stderr
    assert_spooled_as_sent(node, encoded, originals if lossless else None)


def test_resent_series_is_stored_once(storescu: str, node: Node, ct_subset: list[Path]) -> None:
    files = ct_subset[:COMPRESSED_SUBSET]
    assert send(storescu, node.scp.port, files).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in node.spooled()}
    assert send(storescu, node.scp.port, files).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in node.spooled()} == before
    (job,) = node.store.list_jobs()
    assert job.n_instances == COMPRESSED_SUBSET


def test_pet_is_acknowledged_and_dropped(storescu: str, node: Node, sample_dir: Path) -> None:
    pet = sorted((sample_dir / "PT").glob("*.dcm"))[:2]
    result = send(storescu, node.scp.port, pet, options=["-v"])
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("Received Store Response (Success)") == 2
    assert node.spooled() == [] and node.store.list_jobs() == []
    assert node.scp.ignored_counts() == {"PositronEmissionTomographyImageStorage": 2}


def test_pet_is_refused_at_negotiation_when_configured(
    storescu: str, tmp_path: Path, sample_dir: Path
) -> None:
    config = node_config(tmp_path / "data")
    refusing = Node(
        dataclasses.replace(config, node=dataclasses.replace(config.node, other_sop_classes="refuse"))
    )
    try:
        pet = sorted((sample_dir / "PT").glob("*.dcm"))[:1]
        result = send(storescu, refusing.scp.port, pet)
        assert result.returncode != 0
        assert "presentation context" in (result.stdout + result.stderr).lower()
        assert refusing.spooled() == []
    finally:
        refusing.stop()


def test_wrong_called_ae_title_is_rejected(storescu: str, node: Node, ct_subset: list[Path]) -> None:
    result = send(storescu, node.scp.port, ct_subset[:1], called="SOMEONE-ELSE")
    assert result.returncode != 0
    assert "rejected" in (result.stdout + result.stderr).lower()
    assert node.spooled() == []


def test_calling_ae_title_allow_list(storescu: str, tmp_path: Path, ct_subset: list[Path]) -> None:
    guarded = Node(node_config(tmp_path / "data", allowed=("SCANNER",)))
    try:
        refused = send(storescu, guarded.scp.port, ct_subset[:1], calling="INTRUDER")
        assert refused.returncode != 0 and "rejected" in (refused.stdout + refused.stderr).lower()
        assert guarded.spooled() == []
        assert send(storescu, guarded.scp.port, ct_subset[:1], calling="SCANNER").returncode == 0
        assert len(guarded.spooled()) == 1
    finally:
        guarded.stop()


def test_disk_at_watermark_answers_out_of_resources(
    storescu: str, tmp_path: Path, ct_subset: list[Path]
) -> None:
    full = Node(node_config(tmp_path / "data", min_free_mb=10**9))
    try:
        result = send(storescu, full.scp.port, ct_subset[:2], options=["-v"])
        assert result.returncode != 0
        assert "Received Store Response (Refused: OutOfResources)" in result.stdout + result.stderr
        assert full.spooled() == []
        assert full.store.list_jobs() == []
    finally:
        full.stop()


def test_restart_mid_series_completes_with_every_instance(
    storescu: str, tmp_path: Path, ct_subset: list[Path]
) -> None:
    data_dir = tmp_path / "data"
    series_uid = pydicom.dcmread(ct_subset[0], stop_before_pixels=True).SeriesInstanceUID
    first = Node(node_config(data_dir, quiet=3600), with_router=True)
    try:
        assert send(storescu, first.scp.port, ct_subset[: SUBSET // 2]).returncode == 0
        job = first.store.job_for_series(series_uid)
        assert job is not None and job.state is JobState.RECEIVED
    finally:
        first.stop()

    second = Node(node_config(data_dir, quiet=0.5), with_router=True)
    try:
        # The rest, plus two the first node already acknowledged (a sender retrying).
        assert send(storescu, second.scp.port, ct_subset[SUBSET // 2 - 2 :]).returncode == 0
        assert second.queue.get(timeout=30) == job.id
        done = second.store.get_job(job.id)
        assert done is not None and done.state is JobState.WAITING and done.n_instances == SUBSET
        assert len(second.spooled()) == SUBSET
        assert len(second.store.instances_of(series_uid)) == SUBSET
    finally:
        second.stop()


def test_a_series_sent_in_one_association_completes_after_the_settle_time(
    storescu: str, tmp_path: Path, ct_subset: list[Path]
) -> None:
    settling = Node(node_config(tmp_path / "data", quiet=60.0, settle=1.0), with_router=True)
    try:
        result = send(storescu, settling.scp.port, ct_subset)
        released = time.monotonic()  # storescu exits after its A-RELEASE is answered
        assert result.returncode == 0, result.stderr
        job_id = settling.queue.get(timeout=30)
        waited = time.monotonic() - released
        job = settling.store.get_job(job_id)
        assert job is not None and job.state is JobState.WAITING and job.n_instances == SUBSET
        assert (job.details.completed_because or "").startswith("settled 1 s after its association")
        assert 0.5 <= waited < 15.0, waited  # the settle time, far below the 60 s quiet period
    finally:
        settling.stop()


def test_a_series_sent_one_association_per_instance_waits_for_quiet(
    storescu: str, tmp_path: Path, ct_subset: list[Path]
) -> None:
    quiet = 4.0
    spread = Node(node_config(tmp_path / "data", quiet=quiet, settle=1.0), with_router=True)
    try:
        files = ct_subset[:COMPRESSED_SUBSET]
        for path in files:
            assert send(storescu, spread.scp.port, [path]).returncode == 0
        last = time.monotonic()
        job_id = spread.queue.get(timeout=30)
        assert time.monotonic() - last >= quiet - 1.0  # the receipt clock and ours differ by a little
        job = spread.store.get_job(job_id)
        assert job is not None and job.n_instances == len(files)
        assert (job.details.completed_because or "").startswith("quiet for")
    finally:
        spread.stop()


def test_no_storescu_skips_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert _dcmtk_tool("storescu") is None
    assert shutil.which("storescu") is None


_CHILD_NODE = """
import dataclasses, sys, threading
from pathlib import Path
from ct2pet_node.config import load_config
from ct2pet_node.logging_setup import configure_logging
from ct2pet_node.net.scp import StorageScp
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.router import Router
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

configure_logging("warning", json=True)  # logs to stderr: stdout carries the port
config = load_config()
node = dataclasses.replace(config.node, data_dir=Path(sys.argv[1]), host="127.0.0.1", min_free_mb=0)
store = JobStore.open(node.data_dir)
router = Router(store, InProcessQueue(), config.routing)
router.start()
scp = StorageScp(node, config.security, InstanceSpool(node.data_dir, 0), store, router.notify,
                 address=("127.0.0.1", 0))
scp.start()
print(scp.port, flush=True)
threading.Event().wait()
"""


def test_every_acknowledged_instance_survives_a_kill(
    storescu: str, tmp_path: Path, ct_subset: list[Path]
) -> None:
    data_dir = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_NODE, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        result = send(storescu, port, ct_subset, options=["-v"])
    finally:
        child.kill()  # SIGKILL: no shutdown code runs
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert result.returncode == 0, result.stderr
    acknowledged = (result.stdout + result.stderr).count("Received Store Response (Success)")
    assert acknowledged == SUBSET
    restarted = Node(node_config(data_dir, quiet=0.5), with_router=True)
    try:
        series_uid = pydicom.dcmread(ct_subset[0], stop_before_pixels=True).SeriesInstanceUID
        assert len(restarted.store.instances_of(series_uid)) == acknowledged
        assert_spooled_as_sent(restarted, ct_subset, None)
        job = restarted.store.job_for_series(series_uid)
        assert job is not None
        assert restarted.queue.get(timeout=30) == job.id  # the unfinished series resumes and completes
    finally:
        restarted.stop()

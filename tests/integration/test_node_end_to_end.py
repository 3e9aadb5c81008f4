"""The whole node as a process: dcmtk's storescu -> ct2pet-node -> Orthanc, read back over REST.

Everything runs in one private network namespace (tests/peers.py): Orthanc,
storescu and ``python -m ct2pet_node start`` all listen and connect on the
namespace's own loopback, so the fixed ports cannot clash with anything and
nothing outside can reach them. The node uses the tiny reference model
(64x64) with few sampling steps: these tests prove the plumbing, not the
images.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from ctfactory import STUDY_UID, make_ct_series
from peers import DCMTK_ENV, NetNamespace, OrthancPeer, dcmtk_tool, namespaces_unavailable

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.spool.jobstore import JobStore

pytestmark = pytest.mark.integration

SCP_PORT = 11112
ADMIN_PORT = 11180
STEPS = 4
KINDS = ("secondary-capture", "pet")


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def storescu() -> str:
    found = dcmtk_tool("storescu")
    if found is None:
        pytest.skip("dcmtk's storescu not found (apt install dcmtk)")
    return found


@pytest.fixture
def orthanc(namespace: NetNamespace, tmp_path: Path) -> Iterator[OrthancPeer]:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not found (apt install orthanc)")
    with OrthancPeer(namespace, tmp_path / "orthanc") as peer:
        yield peer


class NodeProcess:
    """``python -m ct2pet_node start`` inside the namespace, its JSON log in a file."""

    def __init__(self, namespace: NetNamespace, work: Path, weights: Path, destination: bool) -> None:
        self.namespace = namespace
        work.mkdir(parents=True, exist_ok=True)
        self.data_dir = work / "data"
        self.log_path = work / "node.log"
        self.config = work / "node.toml"
        toml = (
            f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(self.data_dir))}\n'
            # Short: a destination killed mid-C-STORE is noticed only at this timeout (see the test).
            "min_free_mb = 0\nnetwork_timeout_seconds = 4\n"
            "[routing]\nseries_quiet_seconds = 1.0\nmin_slices = 5\n"
            f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = {STEPS}\n'
            f'[output]\nseries = {json.dumps(list(KINDS))}\ngrid = "model"\n'
            f'[admin]\nlisten = "127.0.0.1:{ADMIN_PORT}"\n'
        )
        if destination:
            toml += (
                '[[destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
            )
        self.config.write_text(toml)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> NodeProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = self.namespace.popen(
                [sys.executable, "-m", "ct2pet_node", "--log-json", "start", "--config", self.config],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.namespace.wait_for_port(SCP_PORT, 60, self.process)  # the SCP starts last
        return self

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.namespace.run(
            [sys.executable, "-m", "ct2pet_node", "--log-json", *args, "--config", str(self.config)],
            timeout=60,
        )

    def events(self, name: str, this_run_only: bool = False) -> list[dict[str, Any]]:
        text = self.log_path.read_bytes()[self._log_offset if this_run_only else 0 :].decode(errors="replace")
        found = []
        for line in text.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def jobs(self) -> list[Job]:
        with JobStore.open(self.data_dir) as store:
            return store.list_jobs()

    def wait_for_job(self, states: set[JobState], timeout: float = 90) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if jobs and jobs[-1].state in states:
                return jobs[-1]
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the node exited with {self.process.returncode}:\n{self._tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no job reached {states} in {timeout} s: {self.jobs()}\n{self._tail()}")

    def http(self, path: str) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with (
            self.namespace.entered(),
            opener.open(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=10) as reply,
        ):
            return bytes(reply.read())

    def _tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def make_node(
    namespace: NetNamespace, tmp_path: Path, tiny_weights: Path
) -> Iterator[Callable[[bool], NodeProcess]]:
    nodes: list[NodeProcess] = []

    def make(destination: bool = True) -> NodeProcess:
        node = NodeProcess(namespace, tmp_path / "node", tiny_weights, destination)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.terminate()


def _send_ct(namespace: NetNamespace, storescu: str, paths: list[Path]) -> None:
    done = namespace.run(
        [storescu, "-aet", "SCANNER", "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), *map(str, paths)],
        env=DCMTK_ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _orthanc_file(orthanc: OrthancPeer, instance_id: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance_id}/file"
    with orthanc.namespace.entered(), opener.open(url, timeout=10) as reply:
        return bytes(reply.read())


def _series_by_uid(orthanc: OrthancPeer) -> dict[str, dict[str, Any]]:
    return {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in orthanc.rest("/series?expand")}


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _check_series_in_orthanc(
    orthanc: OrthancPeer, job: Job, ct_paths: list[Path], tmp_path: Path
) -> dict[str, dict[str, Any]]:
    """Each output kind is one series of the CT's study with one instance per CT slice, labelled."""
    in_orthanc = _series_by_uid(orthanc)
    assert set(in_orthanc) == set(job.output_series_uids)
    ct_positions = sorted(
        (
            tuple(float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient)
            for p in ct_paths
        ),
        key=lambda position: position[2],
    )
    by_modality: dict[str, dict[str, Any]] = {}
    for series in in_orthanc.values():
        study = orthanc.rest(f"/studies/{series['ParentStudy']}")
        assert study["MainDicomTags"]["StudyInstanceUID"] == STUDY_UID
        instances = orthanc.rest(f"/series/{series['ID']}/instances")
        assert len(instances) == len(ct_paths)
        tags = [orthanc.rest(f"/instances/{i['ID']}/tags?simplify") for i in instances]
        modality = tags[0]["Modality"]
        by_modality[modality] = series
        for tag in tags:
            assert tag["SeriesDescription"].startswith("SYNTHETIC PET")
            assert "SYNTHETIC" in tag["ImageComments"] and "not for diagnosis" in tag["ImageComments"].lower()
        if modality == "PT":
            positions = sorted(
                (tuple(float(v) for v in t["ImagePositionPatient"].split("\\")) for t in tags),
                key=lambda position: position[2],
            )
            # The CT is 64x64 over 500 mm, the model's own grid, so the "model" grid is the CT's grid.
            for pet_position, ct_position in zip(positions, ct_positions, strict=True):
                assert pet_position == pytest.approx(ct_position, abs=1e-3)
            assert "SYNTHETIC PET" in tags[0]["DerivationDescription"]
        for instance in (instances[0], instances[len(instances) // 2]):
            fetched = tmp_path / f"{instance['ID']}.dcm"
            fetched.write_bytes(_orthanc_file(orthanc, instance["ID"]))
            assert _dciodvfy_errors(fetched) == [], f"{modality} instance fails dciodvfy"
    assert len(by_modality) == len(KINDS) and "PT" in by_modality
    return by_modality


def _check_private(data_dir: Path) -> None:
    """Patient data: every folder 0700 and every file 0600 under data_dir."""
    found = {path: path.stat().st_mode & 0o777 for path in [data_dir, *data_dir.rglob("*")]}
    assert any(path.suffix == ".dcm" and "results" in path.parts for path in found)
    wrong = {
        str(path.relative_to(data_dir)): oct(mode)
        for path, mode in found.items()
        if mode != (0o700 if path.is_dir() else 0o600)
    }
    assert wrong == {}


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics:\n{text}")


def test_storescu_to_node_to_orthanc_and_a_resend_leaves_one_series(
    namespace: NetNamespace,
    orthanc: OrthancPeer,
    make_node: Callable[[bool], NodeProcess],
    storescu: str,
    tmp_path: Path,
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not found")
    # 64 pixels over 500 mm: the tiny model's assumed training grid, so its model grid is the CT's.
    ct_paths = make_ct_series(tmp_path / "ct", n=30, images_in_acquisition=30, spacing=(500 / 64, 500 / 64))
    # The usual umask, which would leave 0755 folders and 0644 files: the node must not.
    umask = os.umask(0o022)
    try:
        node = make_node(True).start()
    finally:
        os.umask(umask)

    echo = node.cli("echo", "orthanc")
    assert echo.returncode == 0 and "C-ECHO success" in echo.stdout, echo.stderr

    _send_ct(namespace, storescu, ct_paths)
    job = node.wait_for_job({JobState.DONE, JobState.FAILED, JobState.REFUSED})
    assert job.state is JobState.DONE, job.reason
    assert job.n_instances == 30 and len(job.output_series_uids) == len(KINDS)

    _check_series_in_orthanc(orthanc, job, ct_paths, tmp_path)
    _check_private(node.data_dir)
    last_received = max(e["timestamp"] for e in node.events("instance_stored"))
    [delivered] = node.events("delivery_done")
    seconds = _seconds_between(last_received, delivered["timestamp"])
    print(f"\nlast CT instance received -> both series stored in Orthanc: {seconds:.2f} s")

    # The same CT again: recognised instance by instance, no new job, nothing new in Orthanc.
    instances_before = orthanc.rest("/statistics")["CountInstances"]
    _send_ct(namespace, storescu, ct_paths)
    time.sleep(2.5)  # longer than the quiet period plus a router tick
    assert len(node.events("instance_duplicate")) == 30
    assert [j.id for j in node.jobs()] == [job.id]
    assert len(_series_by_uid(orthanc)) == len(KINDS)
    assert orthanc.rest("/statistics")["CountInstances"] == instances_before == 30 * len(KINDS)

    status = node.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["version"] and report["uptime_seconds"] > 0
    assert report["model"]["id"].startswith("cpdm-") and report["model"]["device"] == "cpu"
    assert report["queues"] == {"engine": 0, "outbox_due": 0}
    assert report["jobs"]["done"] == 1 and report["oldest_waiting"] is None
    [destination] = report["destinations"]
    assert destination["name"] == "orthanc" and destination["last_result"]
    assert isinstance(report["last_errors"], list)
    text = node.cli("status")
    assert text.returncode == 0 and "destination orthanc" in text.stdout

    metrics = node.http("/metrics").decode()
    assert _metric(metrics, "ct2pet_instances_received_total") == 30
    assert _metric(metrics, "ct2pet_series_completed_total") == 1
    assert _metric(metrics, "ct2pet_series_refused_total") == 0
    assert _metric(metrics, 'ct2pet_jobs{state="done"}') == 1
    assert _metric(metrics, 'ct2pet_instances_sent_total{destination="orthanc"}') == 30 * len(KINDS)
    assert _metric(metrics, "ct2pet_engine_seconds_total") > 0
    assert _metric(metrics, 'ct2pet_queue_depth{queue="engine"}') == 0
    assert "# TYPE ct2pet_send_failures_total counter" in metrics

    assert node.terminate() == 0
    assert node.events("node_stopped")


def _seconds_between(first: str, second: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(second) - datetime.fromisoformat(first)).total_seconds()


def test_destination_stopped_mid_delivery_gets_the_series_complete_once(
    namespace: NetNamespace,
    orthanc: OrthancPeer,
    make_node: Callable[[bool], NodeProcess],
    storescu: str,
    tmp_path: Path,
) -> None:
    ct_paths = make_ct_series(tmp_path / "ct", n=40, images_in_acquisition=40)
    total = 40 * len(KINDS)
    node = make_node(True).start()
    seen_at_kill: list[int] = []

    def kill_orthanc_mid_delivery() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                count = orthanc.rest("/statistics")["CountInstances"]
            except OSError:
                count = 0
            if count >= 3:
                orthanc.stop(grace_seconds=0)
                seen_at_kill.append(count)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_orthanc_mid_delivery)
    killer.start()
    _send_ct(namespace, storescu, ct_paths)
    killer.join(95)
    assert seen_at_kill and seen_at_kill[0] < total, f"Orthanc was not stopped mid-delivery: {seen_at_kill}"

    assert node.wait_for_job({JobState.SENDING}, timeout=30).state is JobState.SENDING
    deadline = time.monotonic() + 30
    while not node.events("send_failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.events("send_failed"), "the interrupted attempt was not recorded as a failure"
    restarted = OrthancPeer(namespace, orthanc.work_dir).start()  # same storage: what it stored, it keeps
    try:
        job = node.wait_for_job({JobState.DONE, JobState.FAILED}, timeout=60)
        assert job.state is JobState.DONE, job.reason
        in_orthanc = _series_by_uid(restarted)
        assert set(in_orthanc) == set(job.output_series_uids)
        for series in in_orthanc.values():
            assert len(restarted.rest(f"/series/{series['ID']}/instances")) == 40
        assert restarted.rest("/statistics")["CountInstances"] == total
        shown = json.loads(node.cli("jobs", "show", "--json", str(job.id)).stdout)
        [delivery] = shown["deliveries"]
        assert delivery["state"] == "delivered" and delivery["attempts"] >= 2
        assert delivery["delivered"] == delivery["files"] == total
        metrics = node.http("/metrics").decode()
        assert _metric(metrics, 'ct2pet_send_failures_total{destination="orthanc"}') >= 1
    finally:
        assert node.terminate() == 0
        restarted.stop()


def test_sigterm_mid_translation_checkpoints_and_a_restart_resumes(
    namespace: NetNamespace,
    make_node: Callable[[bool], NodeProcess],
    storescu: str,
    tmp_path: Path,
) -> None:
    slices = 64  # four checkpoint chunks of 16
    ct_paths = make_ct_series(tmp_path / "ct", n=slices, images_in_acquisition=slices)
    node = make_node(False).start()
    _send_ct(namespace, storescu, ct_paths)
    job = node.wait_for_job({JobState.PROCESSING}, timeout=30)
    work = node.data_dir / "work" / str(job.id)
    deadline = time.monotonic() + 60
    while not list(work.glob("*.npy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(work.glob("*.npy")), "no chunk was checkpointed"

    assert node.terminate() == 0
    stopped = node.jobs()[-1]
    assert stopped.state is JobState.WAITING and stopped.reason == "node stopped; resumes"
    checkpointed = len(list(work.glob("*.npy")))
    assert 1 <= checkpointed < slices // 16, "the stop did not land mid-translation"
    assert node.events("generation_checkpointed") and node.events("node_stopped")

    node.start()
    job = node.wait_for_job({JobState.DONE, JobState.FAILED})
    assert job.state is JobState.DONE, job.reason
    assert job.attempts == 2
    [finished] = node.events("generation_finished", this_run_only=True)
    assert finished["reused_slices"] == 16 * checkpointed
    results = job.details.results_dir
    assert results is not None
    for kind in KINDS:
        assert len(list((results / kind).glob("*.dcm"))) == slices
    shown = json.loads(node.cli("jobs", "show", "--json", str(job.id)).stdout)
    assert "results stay" in shown["where"] and shown["deliveries"] == []
    assert node.terminate() == 0

"""DICOMweb destinations against a real Orthanc with its DICOMweb plugin, in a private network namespace.

Orthanc asks for HTTP basic authentication. Results stored over STOW-RS
arrive once and complete, also when Orthanc is stopped mid-delivery and
started again; a wrong password is a dead letter with Orthanc's 401, not a
retry loop, and a retry with the right one delivers.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from ctfactory import make_ct_series
from peers import DCMTK_ENV, NetNamespace, NodeProcess, OrthancPeer, dcmtk_tool, namespaces_unavailable
from pydicom import dcmread

from ct2pet_node.config import Destination, DicomwebEndpoint
from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.errors import DeliveryError
from ct2pet_node.net.dicomweb import echo
from ct2pet_node.net.stow import StowLimits, send_files
from ct2pet_node.routing.delivery import EntryState, RetrySchedule
from ct2pet_node.service.sender import Sender, stow_sender
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

pytestmark = pytest.mark.integration

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "ct2pet", "right-password"
QUICK = StowLimits(batch_instances=2, connect_seconds=2, answer_seconds=10)


class DicomwebOrthanc(OrthancPeer):
    """Orthanc with STOW-RS and QIDO-RS under ``/dicom-web``, behind HTTP basic authentication.

    ``delay_seconds`` makes Orthanc take that long over each instance it
    receives (a Lua filter), so a test can stop it mid-delivery.
    """

    def __init__(self, namespace: NetNamespace, work_dir: Path, delay_seconds: float = 0.0) -> None:
        super().__init__(namespace, work_dir)
        self.delay_seconds = delay_seconds
        self.url = f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config.update(
            AuthenticationEnabled=True,
            RegisteredUsers={USER: PASSWORD},
            Plugins=[str(PLUGIN)],
            DicomWeb={"Enable": True, "Root": "/dicom-web/"},
        )
        if self.delay_seconds:
            script = self.work_dir / "slow.lua"
            script.write_text(
                "function ReceivedInstanceFilter(dicom, origin, info)\n"
                f"  os.execute('sleep {self.delay_seconds}')\n  return true\nend\n"
            )
            config["LuaScripts"] = [str(script)]
        return config

    def rest(self, path: str, method: str = "GET", body: bytes | dict[str, Any] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(url, data=data, method=method)
        credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
        with self.namespace.entered(), self._opener.open(request, timeout=30) as response:
            answer = response.read()
        return json.loads(answer) if answer.strip() else None

    def instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])

    def endpoint(self, password_file: Path) -> DicomwebEndpoint:
        return DicomwebEndpoint(url=self.url, username=USER, password_file=password_file)


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        pytest.skip("Orthanc or its DICOMweb plugin not found (apt install orthanc orthanc-dicomweb)")
    with NetNamespace() as ns:
        yield ns


def _secret(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_stow_stores_each_instance_once_and_echo_answers(namespace: NetNamespace, tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "ct", n=5, rows=16, cols=16)
    right = _secret(tmp_path, "right", PASSWORD)
    wrong = _secret(tmp_path, "wrong", "not-the-password")
    with DicomwebOrthanc(namespace, tmp_path / "orthanc") as orthanc:
        destination = Destination(name="orthanc", type="dicomweb", dicomweb=orthanc.endpoint(right))
        with namespace.entered():
            assert echo(orthanc.endpoint(right), timeout=5).status == 200
            with pytest.raises(DeliveryError, match=r"answered HTTP 401 Unauthorized"):
                echo(orthanc.endpoint(wrong), timeout=5)
            results = send_files(destination, series, QUICK)
            again = send_files(destination, series, QUICK)  # a retry re-sends the same UIDs
        assert [r.status for r in results] == [0x0000] * len(series)
        assert all(r.outcome.acknowledged for r in again)
        assert orthanc.instances() == len(series)
        stored = {
            orthanc.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
            for i in orthanc.rest("/instances")
        }
        assert stored == _uids(series)


def test_a_wrong_password_is_a_dead_letter_and_a_retry_with_the_right_one_delivers(
    namespace: NetNamespace, tmp_path: Path
) -> None:
    series = make_ct_series(tmp_path / "ct", n=5, rows=16, cols=16)
    password = _secret(tmp_path, "password", "not-the-password")
    outbox = Outbox.open(tmp_path / "data")
    dead: list[tuple[int, str]] = []
    with DicomwebOrthanc(namespace, tmp_path / "orthanc") as orthanc:
        destination = Destination(name="orthanc", type="dicomweb", dicomweb=orthanc.endpoint(password))
        sender = Sender(
            outbox,
            (destination,),
            "CT2PET",
            send=stow_sender(QUICK),
            schedule=RetrySchedule((0.05,), max_attempts=10),
            on_job_dead=lambda job_id, reason: dead.append((job_id, reason)),
        )
        with namespace.entered():
            sender.submit(1, series)
            assert sender.run_once() == 1
            time.sleep(0.1)
            assert sender.run_once() == 0  # dead at once: no second try, however short the schedule
        [entry] = outbox.entries(1)
        assert (entry.state, entry.attempts) == (EntryState.DEAD, 1)
        [(job_id, reason)] = dead
        assert job_id == 1
        assert reason.startswith("delivery to orthanc failed: refused, will not retry: ")
        assert "HTTP 401 Unauthorized" in reason and "not-the-password" not in reason
        assert orthanc.instances() == 0

        password.write_text(PASSWORD)  # the operator fixes the secret, then `jobs retry 1`
        assert outbox.retry(1, now=time.time()) == 1
        with namespace.entered():
            assert sender.run_once() == 1
        [entry] = outbox.entries(1)
        assert entry.state is EntryState.DELIVERED
        assert orthanc.instances() == len(series)
    outbox.close()


# -- the node as a process: CT in over DIMSE, results out over STOW-RS ----------------------------

SCP_PORT = 11112
ADMIN = "127.0.0.1:11180"
SLICES = 6
KINDS = ("secondary-capture", "pet")


class Node(NodeProcess):
    """``python -m ct2pet_node start`` in the namespace, delivering to one DICOMweb destination."""

    def __init__(self, namespace: NetNamespace, work: Path, weights: Path, orthanc: DicomwebOrthanc) -> None:
        super().__init__(namespace, work, [SCP_PORT])
        password = _secret(work, "orthanc.password", PASSWORD)
        self.config.write_text(
            f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(self.data_dir))}\n'
            "min_free_mb = 0\nnetwork_timeout_seconds = 10\n"
            "[routing]\nseries_quiet_seconds = 1.0\nmin_slices = 5\n"
            f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = 3\n'
            f'[output]\nseries = {json.dumps(list(KINDS))}\ngrid = "model"\n[admin]\nlisten = "{ADMIN}"\n'
            "[delivery]\nretry_delays_seconds = [0.5]\nmax_attempts = 50\nstow_batch_instances = 2\n"
            f'[[destinations]]\nname = "orthanc"\ntype = "dicomweb"\nurl = "{orthanc.url}"\n'
            f'username = "{USER}"\npassword_file = {json.dumps(str(password))}\n'
        )

    def job(self) -> Job:
        with JobStore.open(self.data_dir) as store:
            [job] = store.list_jobs()
        return job

    def wait_until(self, what: str, done: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        raise AssertionError(f"{what} did not happen\n{tail}")


def _wait_until_free(namespace: NetNamespace, *ports: int, timeout: float = 10.0) -> None:
    """Block until nothing holds ``ports``: the Lua filter's ``sleep`` inherits Orthanc's sockets."""
    deadline = time.monotonic() + timeout
    with namespace.entered():
        for port in ports:
            while True:
                with socket.socket() as probe:
                    # As Orthanc binds: connections of the killed one may linger in TIME_WAIT, harmlessly.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        assert time.monotonic() < deadline, f"port {port} still held after {timeout} s"
                        time.sleep(0.05)


def _count_safely(orthanc: DicomwebOrthanc) -> int:
    try:
        return orthanc.instances()
    except OSError:
        return -1


@pytest.mark.slow
def test_the_node_delivers_over_stow_once_and_completes_after_orthanc_restarts_mid_delivery(
    namespace: NetNamespace, tmp_path: Path, tiny_weights: Path
) -> None:
    if dcmtk_tool("storescu") is None:
        pytest.skip("dcmtk's storescu not found (apt install dcmtk)")
    ct = make_ct_series(tmp_path / "ct", n=SLICES, images_in_acquisition=SLICES, spacing=(500 / 64, 500 / 64))
    results = SLICES * len(KINDS)
    # Slow enough per instance that the test can see part of the results stored, then pull the plug.
    orthanc = DicomwebOrthanc(namespace, tmp_path / "orthanc", delay_seconds=0.3)
    node = Node(namespace, tmp_path / "node", tiny_weights, orthanc)
    try:
        orthanc.start()
        echoed = node.cli("echo", "orthanc")
        assert echoed.returncode == 0, echoed.stderr
        assert echoed.stdout.startswith(f"orthanc ({orthanc.url}): QIDO-RS success, HTTP 200 in ")
        node.start()
        sent = namespace.run(
            [dcmtk_tool("storescu"), "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), *map(str, ct)],
            env=DCMTK_ENV,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr

        node.wait_until("the first results stored", lambda: _count_safely(orthanc) >= 2)
        orthanc.stop()  # mid-delivery: killed, as a crash or a reboot would
        with closing(Outbox.open(node.data_dir)) as outbox:
            node.wait_until("a failed attempt", lambda: outbox.entries(1)[0].attempts >= 1)
            assert outbox.entries(1)[0].state in (EntryState.PENDING, EntryState.SENDING)
        _wait_until_free(namespace, orthanc.http_port, orthanc.dicom_port)
        orthanc.start()
        node.wait_until("delivery after the restart", lambda: node.job().state is JobState.DONE)

        assert orthanc.instances() == results  # every result, none twice
        series = orthanc.rest("/series")
        assert len(series) == len(KINDS)
        assert sum(len(orthanc.rest(f"/series/{s}")["Instances"]) for s in series) == results
        with closing(Outbox.open(node.data_dir)) as outbox:
            [entry] = outbox.entries(1)
            assert entry.state is EntryState.DELIVERED and entry.attempts >= 2
            assert all(f.delivered for f in entry.files) and len(entry.files) == results

        status = node.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        [shown] = json.loads(status.stdout)["destinations"]
        assert (shown["name"], shown["type"], shown["address"], shown["delivered"], shown["dead"]) == (
            "orthanc",
            "dicomweb",
            orthanc.url,
            1,
            0,
        )
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with namespace.entered(), no_proxy.open(f"http://{ADMIN}/metrics", timeout=30) as answer:
            metrics = answer.read().decode()
        assert f'ct2pet_instances_sent_total{{destination="orthanc"}} {float(results)}' in metrics
        assert 'ct2pet_send_failures_total{destination="orthanc"} 1.0' in metrics
        log = node.log_path.read_text(errors="replace")
        assert PASSWORD not in log
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        attempts = [e for e in events if e.get("event") == "batch_sent" and e.get("destination") == "orthanc"]
        # Each attempt sends only what no earlier one had acknowledged: every result acknowledged once.
        assert len(attempts) >= 2 and attempts[0]["acknowledged"] < results
        assert sum(e["acknowledged"] for e in attempts) == results
        assert [e["instances"] for e in attempts[1:]] == [
            results - sum(e["acknowledged"] for e in attempts[:i]) for i in range(1, len(attempts))
        ]
        assert any(e.get("event") == "send_failed" for e in events)
    finally:
        node.stop()
        orthanc.stop()

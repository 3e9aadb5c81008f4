"""The node as a process for the soak, load and fault campaigns: start, SIGKILL, restart, observe.

Everything runs inside one private network namespace (:class:`peers.NetNamespace`):
the node (``python -m ct2pet_node start``), Orthanc, and the senders, which
are our own storage SCU (:func:`ct2pet_node.net.scu.send_files`) run from
this process in a thread that entered the namespace: it returns one status
per instance, so the campaigns know exactly which instances the node
acknowledged. Used by ``benchmarks/soak.py``, ``benchmarks/load.py`` and
their short pytest forms.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import NetNamespace, OrthancPeer

from ct2pet_node.config import Destination
from ct2pet_node.domain.jobs import Job
from ct2pet_node.net.scu import ScuTimeouts, send_files
from ct2pet_node.spool.jobstore import JobStore

SCP_PORT = 11112
ADMIN_PORT = 11180
ORTHANC_PORT = 4242
NODE_AE = "CT2PET"
# Our sends to the node: short, so a killed node is noticed at once and the sender retries.
SENDER_TIMEOUTS = ScuTimeouts(
    connect_seconds=2.0, acse_seconds=10.0, dimse_seconds=30.0, network_seconds=30.0
)


class NoDelayOrthanc(OrthancPeer):
    """Orthanc with a way to count what it holds per output series."""

    def series_instances(self) -> dict[str, set[str]]:
        """Output series UID -> the distinct SOP Instance UIDs Orthanc holds for it."""
        held: dict[str, set[str]] = {}
        for series in self.rest("/series?expand"):
            uid = series["MainDicomTags"]["SeriesInstanceUID"]
            instances = self.rest(f"/series/{series['ID']}/instances")
            held.setdefault(uid, set()).update(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)
        return held


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The knobs the campaigns turn; everything else is the embedded default."""

    weights: Path
    steps: int = 3
    kinds: tuple[str, ...] = ("secondary-capture", "pet")
    quiet_seconds: float = 300.0
    min_slices: int = 5
    destination_port: int | None = ORTHANC_PORT
    network_timeout_seconds: float = 4.0
    retry_delays_seconds: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_attempts: int = 1000
    dimse_timeout_seconds: float | None = None
    log_level: str = "info"


def node_toml(settings: NodeSettings, data_dir: Path) -> str:
    """The node's configuration file for ``settings``."""
    delivery = (
        f"[delivery]\nretry_delays_seconds = {json.dumps(list(settings.retry_delays_seconds))}\n"
        f"max_attempts = {settings.max_attempts}\n"
    )
    if settings.dimse_timeout_seconds is not None:
        delivery += f"dimse_timeout_seconds = {settings.dimse_timeout_seconds}\n"
    toml = (
        f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(data_dir))}\n'
        f"min_free_mb = 0\nnetwork_timeout_seconds = {settings.network_timeout_seconds}\n"
        f"[routing]\nseries_quiet_seconds = {settings.quiet_seconds}\nmin_slices = {settings.min_slices}\n"
        f'[engine]\nweights = {json.dumps(str(settings.weights))}\ndevice = "cpu"\nsteps = {settings.steps}\n'
        f'[output]\nseries = {json.dumps(list(settings.kinds))}\ngrid = "model"\n'
        f'[admin]\nlisten = "127.0.0.1:{ADMIN_PORT}"\n' + delivery
    )
    if settings.destination_port is not None:
        toml += (
            '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
            f"port = {settings.destination_port}\n"
        )
    return toml


class NodeRunner:
    """``python -m ct2pet_node start`` in the namespace; its JSON log appended to one file across runs."""

    def __init__(self, namespace: NetNamespace, work: Path, settings: NodeSettings) -> None:
        self.namespace = namespace
        self.settings = settings
        work.mkdir(parents=True, exist_ok=True)
        self.data_dir = work / "data"
        self.log_path = work / "node.log"
        self.config = work / "node.toml"
        self.config.write_text(node_toml(settings, self.data_dir))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> NodeRunner:
        with self.log_path.open("ab") as log:
            self.process = self.namespace.popen(
                [
                    sys.executable,
                    "-m",
                    "ct2pet_node",
                    "--log-json",
                    "--log-level",
                    self.settings.log_level,
                    "start",
                    "--config",
                    self.config,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        self.namespace.wait_for_port(SCP_PORT, timeout, self.process)  # the SCP starts last
        return self

    def alive(self) -> bool:
        """Whether the node runs; an exit nobody asked for is recorded as a crash."""
        if self.process is None:
            return False
        code = self.process.poll()
        if code is None:
            return True
        self.unexpected_exits.append(code)
        self.process = None
        return False

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; the journal must carry the node."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def terminate(self, timeout: float = 120.0) -> int | None:
        if not self.alive():
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def status(self) -> dict[str, Any]:
        with (
            self.namespace.entered(),
            self._opener.open(f"http://127.0.0.1:{ADMIN_PORT}/status", timeout=10) as reply,
        ):
            return dict(json.loads(reply.read()))

    def peak_rss_mib(self) -> float:
        """The node's peak resident set (VmHWM), MiB; 0 when it is not running."""
        if not self.alive():
            return 0.0
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def jobs(self) -> list[Job]:
        with JobStore.open(self.data_dir) as store:
            return store.list_jobs()

    def stored_instances(self) -> dict[str, Path]:
        """SOP Instance UID -> spool path of every instance in the node's job store."""
        with JobStore.open(self.data_dir) as store:
            return {
                record.sop_instance_uid: record.path
                for job in store.list_jobs()
                for record in store.instances_of(job.series_uid)
            }

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.namespace.run(
            [sys.executable, "-m", "ct2pet_node", "--log-json", *args, "--config", str(self.config)],
            timeout=timeout,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every JSON log line (of event ``name``) from every run so far."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def send_to_node(namespace: NetNamespace, paths: Sequence[Path], calling_ae: str = "SCANNER") -> set[str]:
    """Send ``paths`` to the node over one association; the SOP Instance UIDs it acknowledged.

    Call from a thread that may enter the namespace (not one already inside another).
    """
    node = Destination(name="node", ae_title=NODE_AE, host="127.0.0.1", port=SCP_PORT)
    with namespace.entered():
        results = send_files(node, calling_ae, paths, timeouts=SENDER_TIMEOUTS)
    return {r.sop_instance_uid for r in results if r.outcome.acknowledged and r.sop_instance_uid}


def settle(deadline: float, check: Any, interval: float = 0.5) -> bool:
    """Poll ``check()`` until it is true or ``deadline`` (monotonic seconds) passes."""
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


def environment_problem() -> str | None:
    """Why the campaigns cannot run here (for a skip or an exit), or None."""
    from peers import namespaces_unavailable

    if reason := namespaces_unavailable():
        return reason
    if shutil.which("Orthanc") is None:
        return "Orthanc not found (apt install orthanc)"
    return None


def import_tiny_weights(out_root: Path) -> Path:
    """The tiny reference release imported into ``out_root/cpdm-tiny`` (for the scripts; tests use the fixture)."""
    from conftest import REFERENCE_DIR, import_tiny_release

    if not (REFERENCE_DIR / "cpdm-tiny" / "cpdm.pth").is_file():
        sys.exit(f"the CPDM reference is not at {REFERENCE_DIR / 'cpdm-tiny'}; set CT2PET_SHARED_DIR")
    return import_tiny_release(REFERENCE_DIR, out_root)

"""Real DICOM peers (dcmtk's storescp, Orthanc) in private network namespaces.

dcmtk's storescp cannot be told to listen on loopback only and Orthanc's
DICOM port listens on every interface, so each peer runs in a fresh network
namespace that has nothing but its own loopback: nothing outside the test
can reach it, and tests running side by side can all use the same ports.

How the test talks to it: :meth:`NetNamespace.entered` moves the *calling
thread* into the namespace (``setns(2)`` on a network namespace is per
thread); sockets it opens, and threads it starts, live there, so our SCU,
sender thread and REST calls run in the pytest process as they are.
Processes are started inside with ``nsenter``. Needs root (or
CAP_SYS_ADMIN), ``unshare``, ``nsenter`` and ``ip``; :func:`namespaces_unavailable`
says why not, for ``pytest.skip``.

Usage::

    with NetNamespace() as ns, StorescpPeer(ns, tmp_path / "in") as peer:
        with ns.entered():
            send_files(peer.destination, "CT2PET", paths)
        assert len(peer.received()) == len(paths)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ct2pet_node.config import Destination

_CLONE_NEWNET = 0x40000000
# For dcmtk *senders* (storescu): they write each request in pieces and wait on Nagle without it.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
# Peers that receive what the node delivers run as a hospital installs them: nothing added.
STOCK_ENV = {name: value for name, value in os.environ.items() if name != "TCP_NODELAY"}


@cache
def dcmtk_tool(name: str) -> str | None:
    """The dcmtk binary ``name``, or None.

    pynetdicom installs Python scripts called storescp, echoscu... that
    shadow dcmtk's on PATH, so each candidate is asked for its version.
    """
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    for directory in dict.fromkeys(directories):
        candidate = Path(directory) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            probe = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in probe.stdout.lower():
            return str(candidate)
    return None


@cache
def namespaces_unavailable() -> str | None:
    """Why private network namespaces cannot be made here, or None when they can."""
    for tool in ("unshare", "nsenter", "setpriv", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux / iproute2)"
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns(CLONE_NEWNET): {os.strerror(error)}")


def process_environment(process: subprocess.Popen[bytes] | None) -> dict[str, str]:
    """The environment ``process`` runs with (nsenter and setpriv exec it under the same pid)."""
    assert process is not None and process.poll() is None, "the peer is not running"
    raw = Path(f"/proc/{process.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


class NetNamespace:
    """A fresh network namespace with loopback up, alive while the context lasts.

    A holder process keeps it open; it reads its stdin, so it exits (and the
    namespace goes) when this process dies without cleaning up. Processes
    started with :meth:`popen` get SIGKILL when the pytest process dies.
    """

    def __init__(self) -> None:
        self._holder: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> NetNamespace:
        self._holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec cat >/dev/null"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != b"ready":
            self._holder.kill()
            raise RuntimeError("the network namespace holder did not start; run as root")
        return self

    def __exit__(self, *_: object) -> None:
        for child in self._children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if self._holder is not None:
            assert self._holder.stdin is not None and self._holder.stdout is not None
            self._holder.stdin.close()
            self._holder.wait(5)
            self._holder.stdout.close()

    @property
    def path(self) -> str:
        """The namespace's handle, ``/proc/PID/ns/net``."""
        assert self._holder is not None, "use NetNamespace as a context manager"
        return f"/proc/{self._holder.pid}/ns/net"

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block (this thread and threads it starts) inside the namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` wrapped to run inside the namespace, killed if pytest dies."""
        return [
            "nsenter",
            f"--net={self.path}",
            "--",
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            *map(str, argv),
        ]

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside; it is stopped when the namespace closes."""
        process: subprocess.Popen[bytes] = subprocess.Popen(self.command(argv), **kwargs)
        self._children.append(process)
        return process

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside to completion, text output captured."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, check=False, **kwargs)

    def wait_for_port(
        self, port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Block until something accepts TCP connections on 127.0.0.1:``port`` inside."""
        deadline = time.monotonic() + timeout
        with self.entered():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                    return
                except OSError:
                    if process is not None and process.poll() is not None:
                        raise RuntimeError(
                            f"peer exited with {process.returncode} before listening on {port}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"nothing listens on port {port} in the namespace after {timeout} s"
                        ) from None
                    time.sleep(0.05)


class NodeProcess:
    """``python -m ct2pet_node start`` inside a namespace, and its CLI; config, data and log under ``work``.

    A test writes :attr:`config` before :meth:`start`; ``ports`` are what
    :meth:`start` waits to see listening; ``env`` is the environment of the
    node and of each CLI call (None: this process's).
    """

    def __init__(
        self, namespace: NetNamespace, work: Path, ports: Sequence[int], env: dict[str, str] | None = None
    ) -> None:
        self.namespace = namespace
        work.mkdir(parents=True, exist_ok=True)
        self.data_dir = work / "data"
        self.config = work / "node.toml"
        self.log_path = work / "node.log"
        self.ports = tuple(ports)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = self.namespace.popen(
                [sys.executable, "-m", "ct2pet_node", "--log-json", "start", "--config", self.config],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        for port in self.ports:
            self.namespace.wait_for_port(port, 60, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(60) == 0
        self.process = None

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.namespace.run(
            [sys.executable, "-m", "ct2pet_node", *args, "--config", str(self.config)],
            timeout=timeout,
            env=self.env,
        )


class StorescpPeer:
    """dcmtk's storescp in a namespace, writing what it receives to ``output_dir``.

    Parameters
    ----------
    accept_all : bool
        Accept compressed transfer syntaxes too (``+xa``); without it only
        the uncompressed ones, which exercises our decompression fallback.

    tcp_nodelay : bool
        Start it with ``TCP_NODELAY=1``; by default it runs stock, as
        installed, so delivery is tested as a hospital would run it.
    """

    def __init__(
        self,
        namespace: NetNamespace,
        output_dir: Path,
        port: int = 11112,
        ae_title: str = "STORESCP",
        accept_all: bool = False,
        tcp_nodelay: bool = False,
    ) -> None:
        self.namespace = namespace
        self.output_dir = output_dir
        self.tcp_nodelay = tcp_nodelay
        self.port = port
        self.ae_title = ae_title
        self.accept_all = accept_all
        self.log_path = output_dir.parent / f"storescp-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> Destination:
        return Destination(name="storescp", ae_title=self.ae_title, host="127.0.0.1", port=self.port)

    def start(self) -> StorescpPeer:
        binary = dcmtk_tool("storescp")
        if binary is None:
            raise RuntimeError("dcmtk's storescp not found; install dcmtk")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        argv: list[str | os.PathLike[str]] = [
            binary,
            "--verbose",
            "--aetitle",
            self.ae_title,
            "--output-directory",
            self.output_dir,
            "-fe",
            ".dcm",
        ]
        if self.accept_all:
            argv.append("+xa")
        argv.append(str(self.port))
        with self.log_path.open("ab") as log:
            env = DCMTK_ENV if self.tcp_nodelay else STOCK_ENV
            self._process = self.namespace.popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.namespace.wait_for_port(self.port, process=self._process)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(5)
        self._process = None

    def __enter__(self) -> StorescpPeer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """storescp's environment, as it runs."""
        return process_environment(self._process)

    def associations(self) -> int:
        """Associations storescp has accepted so far (from its verbose log; port probes do not count)."""
        return self.log_path.read_text(errors="replace").count("Association Acknowledged")

    def received(self) -> list[Path]:
        """Files stored so far (storescp writes each when its C-STORE completes)."""
        return sorted(self.output_dir.glob("*.dcm")) if self.output_dir.is_dir() else []


class OrthancPeer:
    """Orthanc in a namespace with a temporary storage directory; REST reachable from the test.

    Use :meth:`rest` for requests against its REST API (``/instances``,
    ``/statistics``...), :meth:`upload` to store a file in it and
    :meth:`wait_for_job` for its asynchronous jobs; each enters the
    namespace for the call.

    ``extra_config`` is merged over its configuration (plugins, known modalities).

    Orthanc runs stock, as installed: nothing added to its environment
    (dcmtk reads ``TCP_NODELAY`` from there), unless ``tcp_nodelay`` asks
    for it where Orthanc is the *sender* and the test is not about its speed.
    """

    def __init__(
        self,
        namespace: NetNamespace,
        work_dir: Path,
        dicom_port: int = 4242,
        http_port: int = 8042,
        ae_title: str = "ORTHANC",
        tcp_nodelay: bool = False,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.namespace = namespace
        self.extra_config = extra_config or {}
        self.work_dir = work_dir
        self.tcp_nodelay = tcp_nodelay
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.ae_title = ae_title
        self._process: subprocess.Popen[bytes] | None = None
        # No proxy: the request must stay inside the namespace.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def destination(self) -> Destination:
        return Destination(name="orthanc", ae_title=self.ae_title, host="127.0.0.1", port=self.dicom_port)

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "ct2pet-test",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "StorageCompression": False,
            "Plugins": [],
            "ConcurrentJobs": 1,
            **self.extra_config,
        }

    def start(self, timeout: float = 30.0) -> OrthancPeer:
        binary = shutil.which("Orthanc")
        if binary is None:
            raise RuntimeError("Orthanc not found; install orthanc")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        with (self.work_dir / "orthanc.log").open("ab") as log:
            self._process = self.namespace.popen(
                [binary, config],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV if self.tcp_nodelay else STOCK_ENV,
            )
        self.namespace.wait_for_port(self.http_port, timeout, self._process)
        self.namespace.wait_for_port(self.dicom_port, timeout, self._process)
        return self

    def stop(self, grace_seconds: float = 0.5) -> None:
        """Stop Orthanc, killed after ``grace_seconds``: a clean stop takes ~3.5 s; its store is throwaway."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """Orthanc's environment, as it runs."""
        return process_environment(self._process)

    def rest(self, path: str, method: str = "GET", body: bytes | dict[str, Any] | None = None) -> Any:
        """Call ``path`` on the REST API and decode the JSON answer.

        ``body``: bytes are sent as they are (``POST /instances`` takes a
        DICOM file), a dict as JSON (``PUT /modalities/NAME``, ``POST
        /modalities/NAME/store``).
        """
        url = f"http://127.0.0.1:{self.http_port}{path}"
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(url, data=data, method=method)
        with self.namespace.entered(), self._opener.open(request, timeout=30) as response:
            answer = response.read()
        return json.loads(answer) if answer.strip() else None

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file in Orthanc (``POST /instances``); its answer names the parent study."""
        answer: dict[str, Any] = self.rest("/instances", "POST", path.read_bytes())
        return answer

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``/jobs/ID`` until the job succeeds or fails; its last state."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.rest(f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure") or time.monotonic() > deadline:
                return job
            time.sleep(0.2)

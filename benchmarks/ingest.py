"""Ingest speed: the sample's CT series sent by dcmtk's storescu to our SCP and to dcmtk's storescp.

Both receivers get the same 247 files from the same storescu (environment
``TCP_NODELAY=1``, storescp too) on 127.0.0.1, one association each, in alternating rounds;
the figure is storescu's wall time, from process start to exit. Ours is the
real receiving side: SCP, spool (fsync per file and per directory), SQLite
job store (synchronous FULL) and the router thread parsing headers. dcmtk's
storescp writes plain files without fsync, so it is the floor, not a peer.
Ours is also measured from a stock storescu (nothing in its environment, as
a scanner or PACS runs it), whose requests come in pieces that wait for our
ACK unless we acknowledge at once. Both are also measured with Nagle's algorithm left on (ours with
``tcp_nodelay=False``, storescp with ``TCP_NODELAY=0``) to show what
TCP_NODELAY buys each.

storescp cannot be told to listen on loopback only, so the whole benchmark
re-runs itself inside a private network namespace (``unshare -n``, needs
root or user namespaces) where nothing else can reach it.

Run: ``python benchmarks/ingest.py [--sample-dir DIR] [--rounds 3]``
(the sample folder holds ``CT/``; default: $CT2PET_SAMPLE_DIR or the test
suite's cache, ``~/.cache/ct2pet-node/ctpet-sample``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_INSIDE = "CT2PET_INGEST_BENCH_NETNS"
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _dcmtk(name: str) -> str:
    """The dcmtk program ``name`` (pynetdicom installs a Python ``storescu`` that may shadow it)."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            probe = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=20)
            if "dcmtk" in probe.stdout + probe.stderr:
                return str(candidate)
    sys.exit(f"dcmtk's {name} is not on PATH; install dcmtk")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _send(storescu: str, called: str, port: int, files: list[Path], stock_sender: bool = False) -> float:
    command = [storescu, "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    # A stock sender is a scanner's or PACS's dcmtk as installed: TCP_NODELAY unset.
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if not stock_sender:
        env["TCP_NODELAY"] = "1"
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def dcmtk_round(files: list[Path], storescu: str, storescp: str, tcp_nodelay: bool) -> float:
    """Seconds storescu needs to send ``files`` to dcmtk's storescp.

    dcmtk reads TCP_NODELAY from the environment; without it storescp's
    two-write responses meet storescu's delayed ACK (about 40 ms a file).
    """
    env = {**os.environ, "TCP_NODELAY": "1" if tcp_nodelay else "0"}
    with tempfile.TemporaryDirectory() as out:
        port = _free_port()
        receiver = subprocess.Popen(
            [storescp, "-aet", "STORESCP", "-od", out, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_listening(port)
            elapsed = _send(storescu, "STORESCP", port, files)
        finally:
            receiver.terminate()
            receiver.wait(timeout=10)
        received = len(list(Path(out).iterdir()))
        if received != len(files):
            raise RuntimeError(f"storescp kept {received} of {len(files)} files")
        return elapsed


def ours_round(files: list[Path], storescu: str, tcp_nodelay: bool, stock_sender: bool = False) -> float:
    """Seconds storescu needs to send ``files`` to our SCP (with spool, job store and router)."""
    from ct2pet_node.config import load_config
    from ct2pet_node.net.scp import StorageScp
    from ct2pet_node.service.queue import InProcessQueue
    from ct2pet_node.service.router import Router
    from ct2pet_node.spool.instances import InstanceSpool
    from ct2pet_node.spool.jobstore import JobStore

    config = load_config()
    with tempfile.TemporaryDirectory() as data:
        node = dataclasses.replace(config.node, data_dir=Path(data), host="127.0.0.1", min_free_mb=0)
        store = JobStore.open(node.data_dir)
        router = Router(store, InProcessQueue(), config.routing)
        router.start()
        scp = StorageScp(
            node,
            config.security,
            InstanceSpool(node.data_dir, node.min_free_mb),
            store,
            router.notify,
            address=("127.0.0.1", 0),
            tcp_nodelay=tcp_nodelay,
        )
        scp.start()
        try:
            elapsed = _send(storescu, node.ae_title, scp.port, files, stock_sender)
        finally:
            scp.stop(timeout=10)
            router.stop(timeout=30)
        jobs = store.list_jobs()
        store.close()
        if sum(job.n_instances for job in jobs) != len(files):
            raise RuntimeError(f"job store recorded {sum(j.n_instances for j in jobs)} of {len(files)}")
        return elapsed


def _quiet_logging(log_path: Path) -> None:
    # The node logs one event per instance; keep them (JSON, as under systemd) out of the report.
    from ct2pet_node.logging_setup import configure_logging

    saved, sys.stderr = sys.stderr, log_path.open("a")
    try:
        configure_logging("info", json=True)
    finally:
        sys.stderr = saved


def _sample_ct(explicit: str | None) -> list[Path]:
    root = Path(
        explicit
        or os.environ.get("CT2PET_SAMPLE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ct2pet-node" / "ctpet-sample"
    )
    files = sorted((root / "CT").glob("*.dcm"))
    if not files:
        sys.exit(f"no CT files under {root / 'CT'}; give --sample-dir (run the test suite once to unpack it)")
    return files


def _reexec_in_private_netns() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        sys.exit("needs unshare(1) and ip(8) to run storescp in a private network namespace")
    script = 'ip link set lo up && exec "$@"'
    command = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, *sys.argv]
    result = subprocess.run(command, env={**os.environ, _INSIDE: "1"})
    sys.exit(result.returncode)


def _measure(name: str, run: Callable[[], float], results: dict[str, list[float]]) -> None:
    seconds = run()
    results.setdefault(name, []).append(seconds)
    print(f"  {name:<28} {seconds:7.2f} s", flush=True)


def _rounds(count: int) -> Iterator[int]:
    for index in range(count):
        print(f"round {index + 1}/{count}", flush=True)
        yield index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-dir", help="folder holding CT/ (default: the test suite's cache)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.environ.get(_INSIDE) != "1":
        _reexec_in_private_netns()
    files = _sample_ct(args.sample_dir)
    storescu, storescp = _dcmtk("storescu"), _dcmtk("storescp")
    log_path = Path(tempfile.gettempdir()) / "ct2pet-ingest-bench.log"
    _quiet_logging(log_path)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} CT files, {megabytes:.0f} MB, storescu with TCP_NODELAY=1, private netns, 127.0.0.1")
    results: dict[str, list[float]] = {}
    for _ in _rounds(args.rounds):
        _measure("dcmtk storescp", lambda: dcmtk_round(files, storescu, storescp, True), results)
        _measure("dcmtk storescp, Nagle on", lambda: dcmtk_round(files, storescu, storescp, False), results)
        _measure("ct2pet-node SCP", lambda: ours_round(files, storescu, tcp_nodelay=True), results)
        _measure("ct2pet-node SCP, Nagle on", lambda: ours_round(files, storescu, tcp_nodelay=False), results)
        _measure(
            "ct2pet-node SCP, stock storescu",
            lambda: ours_round(files, storescu, tcp_nodelay=True, stock_sender=True),
            results,
        )
    print("\nmedian of rounds:")
    baseline = statistics.median(results["dcmtk storescp"])
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"  {name:<28} {median:7.2f} s  {len(files) / median:6.1f} files/s  "
            f"{megabytes / median:6.1f} MB/s  x{median / baseline:.2f} of storescp"
        )
    print(f"(node logs: {log_path})")


if __name__ == "__main__":
    main()

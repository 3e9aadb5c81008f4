"""Idle-connection flood: how many legitimate C-ECHOs get through while N connections never ask.

A node (the storage SCP alone, embedded default configuration: network
timeout 60 s) runs in a child process from the source tree given with
``--tree`` (default: this one), listening on 127.0.0.1. This process holds
``--idle`` TCP connections to it from 127.0.0.2 that never send a byte,
re-opening each as soon as the node closes it, and meanwhile tries a C-ECHO
on a fresh association every ``--interval`` seconds from 127.0.0.1 for
``--seconds``. It prints echoes succeeded / tried, their median and worst
time, and the CPU seconds the node used. Nothing leaves loopback.

To measure the code before a change, export it and point ``--tree`` at it::

    git archive COMMIT ct2pet_node config | tar -x -C /tmp/before
    python benchmarks/idle_flood.py --tree /tmp/before
    python benchmarks/idle_flood.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from flood import EchoProbe, IdleConnections  # noqa: E402

_CHILD = """
import dataclasses, sys, threading
from pathlib import Path
from ct2pet_node.config import load_config
from ct2pet_node.logging_setup import configure_logging
from ct2pet_node.net.scp import StorageScp
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

configure_logging("error", json=True)
config = load_config()
node = dataclasses.replace(config.node, data_dir=Path(sys.argv[1]), host="127.0.0.1", min_free_mb=0)
store = JobStore.open(node.data_dir)
scp = StorageScp(node, config.security, InstanceSpool(node.data_dir, 0), store, lambda record: None,
                 address=("127.0.0.1", 0))
scp.start()
print(scp.port, flush=True)
threading.Event().wait()
"""


def _echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CT2PET")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=HERE, help="source tree the node runs from")
    parser.add_argument("--idle", type=int, default=60, help="idle connections held")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between echo attempts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, data_dir],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(args.tree.resolve())},
            cwd=data_dir,  # `python -c` puts the working directory first on sys.path: not this tree
        )
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            cpu_before = _cpu_seconds(child.pid)
            with (
                IdleConnections(port, args.idle) as flood,
                EchoProbe(lambda: _echo(port), args.interval) as probe,
            ):
                time.sleep(args.seconds)
            cpu = _cpu_seconds(child.pid) - cpu_before
        finally:
            child.kill()
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
    times = [seconds for _, ok, seconds in probe.results if ok]
    print(
        f"tree {args.tree}: {args.idle} idle connections for {args.seconds:.0f} s: "
        f"echoes succeeded {probe.succeeded}/{probe.tried}"
        + (
            f", median {statistics.median(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms"
            if times
            else ""
        )
        + f"; idle connections closed by the node {flood.reopened}; node CPU {cpu:.1f} s"
    )


if __name__ == "__main__":
    main()

"""Delivery speed: our storage SCU sending a folder of results to a stock Orthanc and a stock storescp.

A stock dcmtk peer (Orthanc is built on dcmtk; nothing added to its
environment, as a hospital installs it) writes each C-STORE response in two
pieces, and Nagle holds the second until we acknowledge the first. Each
variant sends the same files over one association (``send_files``, what the
sender thread calls) to a fresh peer in a private network namespace, in
alternating rounds; the figure is ``send_files``' wall time, association to
release, and every instance must be acknowledged with status 0x0000.

Variants:

- ``quickack``: the SCU as shipped (``TCP_NODELAY``, ``TCP_QUICKACK`` re-armed after every read);
- ``nodelay-only``: the SCU before ``TCP_QUICKACK`` (pynetdicom's socket, ``TCP_NODELAY`` only);
- ``peer-nodelay``: the SCU as shipped, the peer started with ``TCP_NODELAY=1``: the floor.

Files: ``--files DIR`` (every file under it, e.g. the output of
``ct2pet-node convert``); default the shared sample's 247 CT instances, a
stand-in of the same count and size as the secondary-capture results.

Run: ``python benchmarks/delivery.py [--files DIR] [--rounds 3] [--peers orthanc,storescp]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pynetdicom.transport import AssociationSocket

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import _unpacked_sample  # noqa: E402
from peers import NetNamespace, OrthancPeer, StorescpPeer, dcmtk_tool, namespaces_unavailable  # noqa: E402

from ct2pet_node.config import Destination  # noqa: E402
from ct2pet_node.net import scu  # noqa: E402
from ct2pet_node.net.quick_ack import QuickAckSocket  # noqa: E402

VARIANTS = ("quickack", "nodelay-only", "peer-nodelay")


@contextlib.contextmanager
def _peer(kind: str, namespace: NetNamespace, work: Path, peer_nodelay: bool) -> Iterator[Destination]:
    if kind == "orthanc":
        with OrthancPeer(namespace, work / "orthanc", tcp_nodelay=peer_nodelay) as orthanc:
            yield orthanc.destination
        return
    with StorescpPeer(namespace, work / "in", accept_all=True, tcp_nodelay=peer_nodelay) as storescp:
        yield storescp.destination


@contextlib.contextmanager
def _scu_socket(variant: str) -> Iterator[None]:
    # The "before" is the SCU with pynetdicom's own socket: swapped here, so both run from one tree.
    scu.QuickAckSocket = AssociationSocket if variant == "nodelay-only" else QuickAckSocket  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        scu.QuickAckSocket = QuickAckSocket  # type: ignore[misc]


def send_once(kind: str, variant: str, paths: list[Path]) -> float:
    """Seconds for one association carrying every file to a fresh peer; raises when one is not stored."""
    with (
        tempfile.TemporaryDirectory(prefix="ct2pet-delivery-") as scratch,
        NetNamespace() as namespace,
        _peer(kind, namespace, Path(scratch), variant == "peer-nodelay") as destination,
        namespace.entered(),
        _scu_socket(variant),
    ):
        started = time.monotonic()
        results = scu.send_files(destination, "CT2PET", paths)
        seconds = time.monotonic() - started
    failed = [r for r in results if r.status != 0x0000]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(paths)} not stored at {kind}: {failed[0]}")
    return seconds


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{model}, {os.cpu_count()} cores visible, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=Path, default=None, help="send every file under DIR")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default="orthanc,storescp", help="comma-separated: orthanc, storescp")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {VARIANTS}")
    args = parser.parse_args(argv)
    if reason := namespaces_unavailable():
        print(f"cannot run the delivery benchmark here: {reason}", file=sys.stderr)
        return 2
    kinds = [k for k in args.peers.split(",") if k]
    missing = [
        k for k in kinds if not (shutil.which("Orthanc") if k == "orthanc" else dcmtk_tool("storescp"))
    ]
    if missing:
        print(f"cannot run the delivery benchmark here: {', '.join(missing)} not found", file=sys.stderr)
        return 2
    if args.files is None:
        sample = _unpacked_sample()
        if sample is None:
            print("the shared sample is missing: set CT2PET_SAMPLE_DIR or give --files", file=sys.stderr)
            return 2
        args.files = sample / "CT"
    paths = sorted(p for p in args.files.rglob("*") if p.is_file())
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    variants = [v for v in args.variants.split(",") if v]
    seconds: dict[tuple[str, str], list[float]] = {(k, v): [] for k in kinds for v in variants}
    for round_ in range(args.rounds):
        for kind in kinds:
            for variant in variants if round_ % 2 == 0 else reversed(variants):
                seconds[kind, variant].append(send_once(kind, variant, paths))
                print(
                    f"round {round_ + 1} {kind} {variant}: {seconds[kind, variant][-1]:.2f} s",
                    file=sys.stderr,
                )
    print(
        f"{len(paths)} files, {megabytes:.0f} MB from {args.files}; one association per run; {args.rounds} rounds"
    )
    print(f"machine: {machine()}")
    print(f"{'peer':<9} {'variant':<13} {'median s':>8} {'ms/inst':>8} {'inst/s':>7}  all runs (s)")
    for (kind, variant), runs in seconds.items():
        median = statistics.median(runs)
        print(
            f"{kind:<9} {variant:<13} {median:>8.2f} {1000 * median / len(paths):>8.1f} "
            f"{len(paths) / median:>7.1f}  {' '.join(f'{s:.2f}' for s in runs)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

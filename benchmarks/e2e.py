"""End to end: last CT instance received -> synthetic series stored at the destination, on this machine.

Runs the node as a hospital would on the embedded defaults (``weights =
"demo"`` at the model's own steps, the embedded routing, engine and output
settings): the real ``ct2pet-node start --config FILE`` process, whose file
sets only the data directory (a temporary folder) and one destination, a
real Orthanc; both live in one private network namespace with their
embedded default ports. Orthanc runs stock (nothing added to its
environment), as a hospital's PACS would; dcmtk's ``storescu``, standing in
for the scanner, sends the shared sample's CT series over one association,
in slice-position order, with ``TCP_NODELAY=1`` (without it each of its
requests waits on Nagle: a property of the sender, not of the node). The phases come from
the node's JSON log (``instance_stored``, ``series_complete``,
``generation_started``, ``translation_started``, ``generation_finished``,
``output_series_written``, ``delivery_queued``, ``delivery_done``); the final
moment from polling Orthanc's REST API (``/series?expand``) every 0.2 s, from
the end of the translation on, until every output series the node wrote holds
every instance. The completion wait is part of what a PACS administrator
sees, so the total is printed with and without it: the sample carries no
ImagesInAcquisition, so geometry cannot prove it whole, but it comes in one
association with no gap, so it completes ``[routing]
settle_after_release_seconds`` (3 s embedded) after storescu releases;
``--settle-seconds 0`` measures the quiet rule's wait instead
(``series_quiet_seconds``, 30 s embedded).

Exits 1 when something fails (an instance not acknowledged, the series
refused, a job FAILED, an output missing at Orthanc), 2 when it cannot run
here (no sample, no Orthanc, no storescu, no network namespaces).

Run: ``python benchmarks/e2e.py [--slices N] [--quiet-seconds S] [--settle-seconds S] [--max-seconds 3600]
[--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import _unpacked_sample  # noqa: E402
from peers import DCMTK_ENV, NetNamespace, OrthancPeer, dcmtk_tool  # noqa: E402
from soak.e2e_figures import POLL_SECONDS, Figures, NodeLog, fill_from_log, judge  # noqa: E402
from soak.harness import environment_problem  # noqa: E402

from ct2pet_node.config import Config, load_config  # noqa: E402
from ct2pet_node.domain.jobs import JobState  # noqa: E402

NODE_START_SECONDS = 300.0
# A job ends here whatever Orthanc holds; send_failed is not among them: the sender retries.
FATAL_EVENTS = (
    "instance_refused",
    "series_refused",
    "generation_failed",
    "delivery_dead",
    "engine_worker_crashed",
)


def sample_in_position_order(ct_dir: Path) -> list[Path]:
    """The CT files of ``ct_dir`` sorted along the slice normal (feet to head for an axial series)."""
    keyed = []
    for path in sorted(ct_dir.glob("*")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        keyed.append((float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])), path))
    return [path for _, path in sorted(keyed)]


def write_config(
    path: Path,
    data_dir: Path,
    orthanc: OrthancPeer,
    quiet_seconds: float | None,
    settle_seconds: float | None = None,
) -> Config:
    """The node's file: only what the setup must change; everything else is the embedded default."""
    text = (
        f"[node]\ndata_dir = {json.dumps(str(data_dir))}\n"
        f'[[destinations]]\nname = "pacs"\nae_title = {json.dumps(orthanc.ae_title)}\n'
        f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    routing = {"series_quiet_seconds": quiet_seconds, "settle_after_release_seconds": settle_seconds}
    if any(value is not None for value in routing.values()):
        text += "[routing]\n" + "".join(f"{k} = {v}\n" for k, v in routing.items() if v is not None)
    path.write_text(text)
    return load_config(path)


def node_command(config_path: Path) -> list[str]:
    """``ct2pet-node --log-json start --config FILE``: the installed script, else the module."""
    script = Path(sys.executable).with_name("ct2pet-node")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "ct2pet_node"]
    return [*launcher, "--log-json", "start", "--config", str(config_path)]


def admin_status(namespace: NetNamespace, config: Config) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://{config.admin.listen_host}:{config.admin.listen_port}/status"
    with namespace.entered(), opener.open(url, timeout=10) as reply:
        return dict(json.loads(reply.read()))


def settled_status(namespace: NetNamespace, config: Config, wait_seconds: float) -> dict[str, Any]:
    """``/status`` once no job is left unfinished (the sender settles DONE just after delivery_done)."""
    until = time.monotonic() + wait_seconds
    while True:
        status = admin_status(namespace, config)
        unfinished = sum(n for state, n in status["jobs"].items() if not JobState(state).is_final)
        if not unfinished or time.monotonic() >= until:
            return status
        time.sleep(0.1)


def count_at_orthanc(figures: Figures, orthanc: OrthancPeer) -> None:
    """Update each expected output's ``at_orthanc`` (instances Orthanc holds) and its description there."""
    held = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in orthanc.rest("/series?expand")}
    for output in figures.outputs.values():
        series = held.get(output["series_uid"], {"Instances": [], "MainDicomTags": {}})
        output["at_orthanc"] = len(series["Instances"])
        output["description_at_orthanc"] = series["MainDicomTags"].get("SeriesDescription", "")


def expected_outputs(data_dir: Path, job_id: int, kinds: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per output kind: the series UID and instance count the node wrote (``results/<job>/<kind>/``)."""
    found = {}
    for kind in kinds:
        files = sorted((data_dir / "results" / str(job_id) / kind).glob("*.dcm"))
        if files:
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            found[kind] = {"series_uid": uid, "instances": len(files), "at_orthanc": 0}
    return found


def send_with_storescu(namespace: NetNamespace, config: Config, paths: list[Path], timeout: float) -> float:
    """storescu over one association; its wall seconds. Raises RuntimeError when it fails."""
    storescu = dcmtk_tool("storescu")
    assert storescu is not None
    argv = [storescu, "-aet", "SCANNER", "-aec", config.node.ae_title, "127.0.0.1", str(config.node.port)]
    started = time.monotonic()
    done = namespace.run([*argv, *map(str, paths)], env=DCMTK_ENV, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"storescu exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    return time.monotonic() - started


def wait_until_stored(
    figures: Figures,
    log: NodeLog,
    node: subprocess.Popen[bytes],
    orthanc: OrthancPeer,
    data_dir: Path,
    deadline: float,
) -> None:
    """Follow the log; once translated, poll Orthanc every 0.2 s until it holds every output instance."""
    incomplete_at = 0.0  # the last poll that found something missing: the moment lies after it
    while time.time() < deadline:
        tick = time.monotonic()
        log.read()
        fatal = [e for e in log.events if e.get("event") in FATAL_EVENTS]
        if fatal:
            figures.problems.append(f"{fatal[0]['event']}: {fatal[0].get('reason', fatal[0])}")
            return
        if node.poll() is not None:
            figures.problems.append(f"the node exited {node.returncode}")
            return
        if not figures.outputs and log.named("delivery_queued"):  # every file written by now
            job_id = int(log.named("series_complete")[0]["job_id"])
            figures.outputs = expected_outputs(data_dir, job_id, figures.output_kinds)
        if log.named("generation_finished"):
            count_at_orthanc(figures, orthanc)
            now = time.time()
            if figures.outputs and all(o["at_orthanc"] >= o["instances"] for o in figures.outputs.values()):
                figures.stored_at_destination = now
                figures.stored_poll_window = now - max(incomplete_at, log.moment("delivery_queued"))
                return
            incomplete_at = now
        time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))
    figures.problems.append("--max-seconds passed before every output was stored at Orthanc")


def run(args: argparse.Namespace, paths: list[Path], work: Path) -> Figures:
    deadline = time.time() + args.max_seconds
    with NetNamespace() as namespace, OrthancPeer(namespace, work / "orthanc") as orthanc:
        config = write_config(
            work / "node.toml", work / "data", orthanc, args.quiet_seconds, args.settle_seconds
        )
        figures = Figures(
            slices=len(paths),
            quiet_seconds=config.routing.series_quiet_seconds,
            quiet_overridden=args.quiet_seconds is not None,
            settle_seconds=config.routing.settle_after_release_seconds,
            output_kinds=config.output.series,
        )
        log = NodeLog(work / "node.log")
        with log.path.open("ab") as sink:
            node = namespace.popen(node_command(work / "node.toml"), stdout=sink, stderr=subprocess.STDOUT)
        try:
            namespace.wait_for_port(config.node.port, NODE_START_SECONDS, node)  # the SCP starts last
            figures.model = admin_status(namespace, config)["model"]
            print(f"node up ({figures.model.get('id')}); sending {len(paths)} instances", file=sys.stderr)
            figures.storescu_seconds = send_with_storescu(namespace, config, paths, args.max_seconds)
            print("sent; waiting for the synthetic series at Orthanc", file=sys.stderr, flush=True)
            wait_until_stored(figures, log, node, orthanc, work / "data", deadline)
            status = settled_status(namespace, config, 0.0 if figures.problems else 30.0)
            count_at_orthanc(figures, orthanc)  # again once DONE: exactly the instances written, no more
            log.read()
            fill_from_log(figures, log)
            judge(figures, status)
        finally:
            node.terminate()
            try:
                node.wait(120)
            except subprocess.TimeoutExpired:
                node.kill()
            log.read()
            fill_from_log(figures, log)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=0, help="first N instances in position order; 0: all")
    parser.add_argument(
        "--quiet-seconds", type=float, default=None, help="override [routing] series_quiet_seconds"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="override [routing] settle_after_release_seconds (0: the quiet rule only)",
    )
    parser.add_argument("--max-seconds", type=float, default=3600, help="bound on the whole run")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (node log, stores)")
    args = parser.parse_args(argv)
    if reason := environment_problem():
        print(f"cannot run the end-to-end benchmark here: {reason}", file=sys.stderr)
        return 2
    if dcmtk_tool("storescu") is None:
        print("cannot run the end-to-end benchmark here: dcmtk's storescu not found", file=sys.stderr)
        return 2
    sample = _unpacked_sample()
    if sample is None:
        print("the shared sample is missing: set CT2PET_SAMPLE_DIR", file=sys.stderr)
        return 2
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        # A used folder holds an earlier run's job store and log: its figures would mix into these.
        print(f"--keep {args.keep} is not empty; give a new or empty folder", file=sys.stderr)
        return 2
    paths = sample_in_position_order(sample / "CT")
    paths = paths[: args.slices] if args.slices else paths
    with tempfile.TemporaryDirectory(prefix="ct2pet-e2e-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        try:
            figures = run(args, paths, work)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            print(f"FAIL: {error}\n{_tail(work / 'node.log')}", file=sys.stderr)
            return 1
    print(figures.table())
    for problem in figures.problems:
        print(f"PROBLEM: {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures.as_json(), indent=2) + "\n")
    return 1 if figures.problems else 0


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())

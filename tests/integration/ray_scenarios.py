"""Run inside a private network namespace (``unshare -n``): a real two-node Ray cluster on loopback.

Started by tests/integration/test_ray_cluster.py as
``unshare -n python3 ray_scenarios.py WEIGHTS_DIR WORK_DIR``; prints one JSON
object on its last line. Token authentication is on (one token file for
both nodes and the driver), the dashboard off; nothing leaves the namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ADDRESS = "127.0.0.1:6379"
CHUNK = 4


class Cluster:
    """A head and one worker node, each a ``ray start --block`` process in its own process group."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.groups: list[subprocess.Popen[bytes]] = []
        self.temps: list[str] = []

    def start(self) -> None:
        # A temp dir of its own: session files of other Ray users of this machine are not ours to read.
        temp = tempfile.mkdtemp(prefix="ct2ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.temps.append(temp)
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
        head = ["ray", "start", "--head", "--port", "6379", "--include-dashboard=false", f"--temp-dir={temp}"]
        for _ in range(3):
            self._spawn([*head, *common], "head")
            time.sleep(3)
            if self.groups[-1].poll() is None:
                break
            self.groups.pop()  # exited at once (a port still held by the killed head's processes): again
        self._spawn(["ray", "start", "--address", ADDRESS, *common], "worker")

    def _spawn(self, command: list[str], name: str) -> None:
        with (self.work / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(process)

    def kill(self) -> None:
        """SIGKILL every process of the cluster (by the process groups this script started)."""
        # Taken first, so processes a start() adds meanwhile are not forgotten with these.
        groups, self.groups = self.groups, []
        temps, self.temps = self.temps, []
        for process in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def wait_ready(translator: Any, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if translator.ready() and translator.state == "ready":
            return
        if translator.state == "refused":
            return
        time.sleep(0.5)
    raise TimeoutError(f"cluster not ready: {translator.cluster_status(0)}")


def main(weights_dir: Path, work: Path) -> dict[str, Any]:
    from ct2pet_node.cluster.translator import RayTranslator
    from ct2pet_node.config import RayConfig, load_config
    from ct2pet_node.engine import load_pipeline
    from ct2pet_node.engine.options import EngineOptions

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    token = work / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    config = load_config()
    engine = dataclasses.replace(
        config.engine,
        weights=str(weights_dir),
        device="cpu",
        steps=3,
        threads=1,
        backend="ray",
        ray=RayConfig(ADDRESS, 2, 0.0, 1.0, "ct2pet-test", "wait"),
    )
    config = dataclasses.replace(
        config, engine=engine, node=dataclasses.replace(config.node, data_dir=work / "data")
    )
    result: dict[str, Any] = {}
    cluster = Cluster(work)
    cluster.start()
    translator = RayTranslator(config)
    try:
        wait_ready(translator)
        result["actors"] = translator.actors
        region = np.random.default_rng(7).uniform(-1000, 1500, size=(6 * CHUNK, 48, 48)).astype(np.float32)
        chunks = [range(start, start + CHUNK) for start in range(0, region.shape[0], CHUNK)]
        args = {"kvp": 120.0, "steps": 3, "eta": None, "seed": 0}
        local = load_pipeline(weights_dir, device="cpu", options=EngineOptions.from_config(engine))
        expected = np.concatenate(
            [
                local.translate_region(region[c.start : c.stop], first_slice_index=c.start, **args)
                for c in chunks
            ]
        )

        def spread(kill_after_first: bool) -> tuple[np.ndarray, list[int]]:
            out = np.full_like(expected, np.nan)
            starts: list[int] = []
            for chunk, values in translator.translate_chunks(region, chunks, **args):
                starts.append(chunk.start)
                out[chunk.start : chunk.stop] = values
                if kill_after_first and len(starts) == 1:
                    os.kill(int(translator.actors[0]["pid"]), signal.SIGKILL)
            return out, starts

        got, starts = spread(kill_after_first=False)
        result["identical"] = bool(np.array_equal(got, expected))
        result["chunks_once"] = sorted(starts) == [c.start for c in chunks]
        # Two jobs in flight: two engine threads' requests at once, each gets its own chunks back.
        both: list[tuple[np.ndarray, list[int]]] = []
        threads = [threading.Thread(target=lambda: both.append(spread(False))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        result["concurrent_identical"] = len(both) == 2 and all(
            np.array_equal(got, expected) and sorted(starts) == [c.start for c in chunks]
            for got, starts in both
        )
        got, starts = spread(kill_after_first=True)
        result["killed_identical"] = bool(np.array_equal(got, expected))
        result["killed_chunks_once"] = sorted(starts) == [c.start for c in chunks]
        result["retries"] = translator.retries
        result.update(head_lost(translator, cluster, config, work))
    finally:
        translator.close()
        cluster.kill()
    result["refusal"] = refusal(config, weights_dir, work)
    return result


def head_lost(translator: Any, cluster: Cluster, config: Any, work: Path) -> dict[str, Any]:
    """A job whose head is killed mid-study waits in WAITING, and completes once the head is back."""
    import pydicom
    from ctfactory import make_ct_series

    from ct2pet_node.domain.jobs import JobState
    from ct2pet_node.domain.records import InstanceRecord
    from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
    from ct2pet_node.service.metrics import NodeMetrics
    from ct2pet_node.service.queue import InProcessQueue
    from ct2pet_node.service.recent_errors import RecentErrors
    from ct2pet_node.service.status import StatusSources, build_status
    from ct2pet_node.service.worker import EngineWorker
    from ct2pet_node.spool.jobstore import JobStore
    from ct2pet_node.spool.outbox import Outbox

    paths = make_ct_series(work / "ct", n=10 * CHUNK, rows=32, cols=32)
    found: dict[str, Any] = {}
    with JobStore.open(config.node.data_dir) as store:
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            store.record_instance(
                InstanceRecord(
                    SopInstanceUid(ds.SOPInstanceUID),
                    Uid(ds.SOPClassUID),
                    SeriesUid(ds.SeriesInstanceUID),
                    StudyUid(ds.StudyInstanceUID),
                    "CT",
                    Uid(ds.file_meta.TransferSyntaxUID),
                    AeTitle("TEST"),
                    path,
                    time.time(),
                )
            )
        job = store.job_for_series(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID))
        assert job is not None
        store.transition(job.id, JobState.RECEIVED, JobState.WAITING)
        worker = EngineWorker(
            config, store, InProcessQueue(), translator, lambda *_: False, NodeMetrics(), chunk_slices=CHUNK
        )
        work_dir = config.node.data_dir / "work" / str(job.id)

        def kill_after_a_checkpoint() -> None:
            while not list(work_dir.glob("*.npy")):
                time.sleep(0.05)
            cluster.kill()

        killer = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
        killer.start()
        found["state_after_loss"] = worker.process(job.id)
        # The worker may see the head gone before kill() has reaped every process and forgotten them;
        # starting the cluster again meanwhile would have the new processes forgotten with the old.
        killer.join(timeout=120)
        waiting = store.get_job(job.id)
        found["reason_after_loss"] = waiting.reason if waiting else None
        found["status_line"] = translator.cluster_status(1)
        found["checkpoints_kept"] = len(list(work_dir.glob("*.npy")))
        found["ready_while_down"] = translator.ready()
        cluster.start()
        wait_ready(translator)
        found["state_after_return"] = worker.process(job.id)
        found["translated_after_return"] = worker.metrics.sample("ct2pet_engine_slices_total")
        found["outputs"] = len(list((config.node.data_dir / "results" / str(job.id)).rglob("*.dcm")))
        # What /status serves and the dashboard reads, right after the job.
        outbox = Outbox.open(config.node.data_dir)
        try:
            sources = StatusSources(config, store, outbox, worker, RecentErrors(), time.time(), os.getpid())
            found["status_cluster"] = build_status(sources, time.time()).to_json()["cluster"]
        finally:
            outbox.close()
    return {key: (value.value if isinstance(value, JobState) else value) for key, value in found.items()}


def refusal(config: Any, weights_dir: Path, work: Path) -> str | None:
    """An actor whose weights are another model refuses, and says which."""
    from ct2pet_node.cluster.translator import RayTranslator

    other = work / "other-model"
    shutil.copytree(weights_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_id"] = "other-model-1"
    (other / "manifest.json").write_text(json.dumps(manifest))
    cluster = Cluster(work)
    cluster.start()
    translator = RayTranslator(config, actor_weights_dir=other)
    try:
        wait_ready(translator)
        return translator.reason if translator.state == "refused" else f"not refused: {translator.state}"
    finally:
        translator.close()
        cluster.kill()


if __name__ == "__main__":
    outcome = main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(outcome, default=str))

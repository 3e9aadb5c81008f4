"""The node as a process against a destination that is down, slow, or answers failure statuses,
and against an engine that fails (corrupt weights at start, NaN output mid-job).

The destination is a pynetdicom storage SCP in this test process whose
behaviour the test switches (``FakePacs.mode``); it, the node and our
sending SCU share one private network namespace (tests/peers.py). The node
gets a short ``[delivery]`` schedule (0.5 s, then 1 s between attempts) and a
1 s DIMSE timeout, so "down for minutes" and "slow" take seconds here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctfactory import make_ct_series
from peers import NetNamespace
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from soak.harness import ORTHANC_PORT, NodeRunner, NodeSettings, environment_problem, send_to_node, settle

from ct2pet_node.domain.jobs import Job, JobState

pytestmark = pytest.mark.integration

SLICES = 8
DIMSE_TIMEOUT = 1.0


class FakePacs:
    """A storage SCP on ``ORTHANC_PORT`` whose answers the test chooses.

    Modes: ``ok`` (0x0000); ``slow`` (the next ``slow_left`` C-STOREs sleep
    past the node's DIMSE timeout, then answer 0x0000); ``busy`` (the next
    ``busy_left`` answer 0xA700, out of resources); ``refuse`` (0xC000,
    cannot understand, every time).
    """

    def __init__(self, namespace: NetNamespace) -> None:
        self.namespace = namespace
        self.mode = "ok"
        self.slow_left = 0
        self.busy_left = 0
        self.answers: list[int] = []
        self.stored: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> None:
        if self._server is not None:
            return
        ae = AE(ae_title="ORTHANC")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.dimse_timeout = ae.network_timeout = 30
        with self.namespace.entered():
            self._server = ae.start_server(
                ("127.0.0.1", ORTHANC_PORT), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            mode = self.mode
            if mode == "slow" and self.slow_left > 0:
                self.slow_left -= 1
                delay = DIMSE_TIMEOUT * 3
            else:
                delay = 0.0
            if mode == "busy" and self.busy_left > 0:
                self.busy_left -= 1
                status = 0xA700
            else:
                status = 0xC000 if mode == "refuse" else 0x0000
        time.sleep(delay)
        if status == 0x0000:
            ds = event.dataset
            with self._lock:
                self.stored.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
        self.answers.append(status)
        return status


@pytest.fixture(scope="module")
def namespace() -> Iterator[NetNamespace]:
    if reason := environment_problem():
        pytest.skip(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def pacs(namespace: NetNamespace) -> Iterator[FakePacs]:
    peer = FakePacs(namespace)  # not started: the first test wants the destination down
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def node(
    namespace: NetNamespace, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeRunner]:
    settings = NodeSettings(
        weights=tiny_weights,
        steps=3,
        kinds=("secondary-capture",),
        retry_delays_seconds=(0.5, 1.0),
        max_attempts=1000,
        dimse_timeout_seconds=DIMSE_TIMEOUT,
    )
    runner = NodeRunner(namespace, tmp_path_factory.mktemp("faults"), settings).start()
    yield runner
    assert runner.terminate() == 0
    assert not [e for e in runner.events() if "exception" in e], "a node thread logged an exception"


def _send_series(namespace: NetNamespace, tmp_path: Path, name: str) -> str:
    paths = make_ct_series(tmp_path / name, n=SLICES, name=name, images_in_acquisition=SLICES)
    assert len(send_to_node(namespace, paths)) == SLICES
    from ctfactory import series_uid_for

    return series_uid_for(name)


def _job(node: NodeRunner, series_uid: str, states: set[JobState], timeout: float = 90) -> Job:
    found: list[Job] = []

    def reached() -> bool:
        found[:] = [j for j in node.jobs() if j.series_uid == series_uid and j.state in states]
        return bool(found)

    assert settle(time.monotonic() + timeout, reached, 0.1), (
        f"series {series_uid} reached none of {states}: {[j for j in node.jobs() if j.series_uid == series_uid]}"
    )
    assert node.alive(), node.log_text()[-3000:]
    return found[-1]


def _delivery(node: NodeRunner, job_id: int) -> dict[str, Any]:
    shown = node.cli("jobs", "show", "--json", str(job_id))
    assert shown.returncode == 0, shown.stderr
    [delivery] = json.loads(shown.stdout)["deliveries"]
    return dict(delivery)


def _failures_of(node: NodeRunner, job_id: int) -> list[dict[str, Any]]:
    return [e for e in node.events("send_failed") if e.get("job_id") == job_id]


def _assert_delivered_once(pacs: FakePacs, job: Job) -> None:
    [output] = job.output_series_uids
    assert len(pacs.stored.get(output, set())) == SLICES


def test_a_destination_down_for_a_while_gets_the_results_once_it_is_back(
    namespace: NetNamespace, node: NodeRunner, pacs: FakePacs, tmp_path: Path
) -> None:
    series = _send_series(namespace, tmp_path, "down")
    job = _job(node, series, {JobState.SENDING})
    assert settle(time.monotonic() + 30, lambda: len(_failures_of(node, job.id)) >= 3, 0.1)
    assert "cannot connect" in _failures_of(node, job.id)[0]["error"]
    assert _delivery(node, job.id)["state"] == "pending"
    pacs.start()
    job = _job(node, series, {JobState.DONE, JobState.FAILED})
    assert job.state is JobState.DONE, job.reason
    _assert_delivered_once(pacs, job)
    delivery = _delivery(node, job.id)
    assert delivery["state"] == "delivered" and delivery["attempts"] >= 4


def test_a_destination_too_slow_to_answer_times_out_and_gets_the_results_later(
    namespace: NetNamespace, node: NodeRunner, pacs: FakePacs, tmp_path: Path
) -> None:
    pacs.start()
    pacs.mode, pacs.slow_left = "slow", 2
    series = _send_series(namespace, tmp_path, "slow")
    job = _job(node, series, {JobState.DONE, JobState.FAILED})
    assert job.state is JobState.DONE, job.reason
    failures = _failures_of(node, job.id)
    assert failures and all("timeout" in f["error"] for f in failures), failures
    assert pacs.slow_left == 0
    _assert_delivered_once(pacs, job)


def test_out_of_resources_is_retried_until_stored(
    namespace: NetNamespace, node: NodeRunner, pacs: FakePacs, tmp_path: Path
) -> None:
    pacs.start()
    pacs.mode, pacs.busy_left = "busy", 3
    series = _send_series(namespace, tmp_path, "busy")
    job = _job(node, series, {JobState.DONE, JobState.FAILED})
    assert job.state is JobState.DONE, job.reason
    failures = _failures_of(node, job.id)
    assert failures and "0xA700" in failures[0]["error"]
    assert 0xA700 in pacs.answers and pacs.busy_left == 0
    assert _delivery(node, job.id)["attempts"] >= 2
    _assert_delivered_once(pacs, job)


def test_a_permanent_refusal_is_dead_lettered_shown_in_status_and_replayed_by_jobs_retry(
    namespace: NetNamespace, node: NodeRunner, pacs: FakePacs, tmp_path: Path
) -> None:
    pacs.start()
    pacs.mode = "refuse"
    series = _send_series(namespace, tmp_path, "refused")
    job = _job(node, series, {JobState.FAILED, JobState.DONE})
    assert job.state is JobState.FAILED
    assert job.reason is not None and "0xC000" in job.reason and "will not retry" in job.reason
    delivery = _delivery(node, job.id)
    assert delivery["state"] == "dead" and delivery["attempts"] == 1 and delivery["delivered"] == 0

    status = node.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    [dead] = [d for d in json.loads(status.stdout)["dead_letters"] if d["job_id"] == job.id]
    assert dead["destination"] == "pacs" and "0xC000" in dead["last_error"]
    text = node.cli("status")
    assert text.returncode == 0 and str(job.id) in text.stdout

    pacs.mode = "ok"
    retried = node.cli("jobs", "retry", str(job.id))
    assert retried.returncode == 0 and "queued again" in retried.stdout, retried.stderr
    job = _job(node, series, {JobState.DONE}, timeout=60)  # the sender polls the outbox every 5 s
    _assert_delivered_once(pacs, job)
    assert _delivery(node, job.id)["state"] == "delivered"
    assert not [
        d for d in json.loads(node.cli("status", "--json").stdout)["dead_letters"] if d["job_id"] == job.id
    ]


def test_the_node_refuses_to_start_on_corrupt_weights_naming_the_file(
    namespace: NetNamespace, tiny_weights: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    target = weights / "unet.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the tensors
    target.write_bytes(bytes(data))
    runner = NodeRunner(namespace, tmp_path / "node", NodeSettings(weights=weights, destination_port=None))
    done = subprocess.run(
        namespace.command([sys.executable, "-m", "ct2pet_node", "start", "--config", str(runner.config)]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(target) in done.stderr and "sha256" in done.stderr
    assert "Traceback" not in done.stderr


def _nan_weights(tiny_weights: Path, out_dir: Path, network: str, prefix: str) -> Path:
    """The tiny model with every floating-point weight of ``network`` (under ``prefix``) set to NaN."""
    import torch

    from ct2pet_node.engine.weights import load_manifest, load_state_dicts, save_weights

    manifest = load_manifest(tiny_weights)
    state_dicts = load_state_dicts(tiny_weights)
    state_dicts[network] = {
        key: torch.full_like(value, float("nan"))
        if value.is_floating_point() and key.startswith(prefix)
        else value
        for key, value in state_dicts[network].items()
    }
    save_weights(
        out_dir,
        architecture=manifest.architecture,
        state_dicts=state_dicts,
        normalisation=manifest.normalisation,
        output_units=manifest.output_units,
        calibration=manifest.calibration,
        model_id_prefix="cpdm-nan",
    )
    return out_dir


def test_an_engine_producing_nan_fails_the_job_sends_nothing_and_keeps_serving(
    tiny_weights: Path, tmp_path: Path
) -> None:
    if reason := environment_problem():
        pytest.skip(reason)
    weights = _nan_weights(tiny_weights, tmp_path / "nan-weights", "vqgan", "decoder.")
    with NetNamespace() as namespace:
        pacs = FakePacs(namespace)
        pacs.start()
        settings = NodeSettings(weights=weights, kinds=("secondary-capture",), retry_delays_seconds=(0.5,))
        runner = NodeRunner(namespace, tmp_path / "node", settings).start()
        try:
            series = _send_series(namespace, tmp_path, "nan")
            job = _job(runner, series, {JobState.FAILED, JobState.DONE, JobState.SENDING})
            assert job.state is JobState.FAILED, f"{job.state}: {job.reason}"
            # The pipeline's check ("non-finite values") or the worker's ("NaN or infinite values").
            assert job.reason is not None and re.search("non-finite|NaN or infinite", job.reason), job.reason
            results = runner.data_dir / "results" / str(job.id)
            assert not list(results.rglob("*.dcm")), "files of a failed job were written"
            assert pacs.answers == [] and _delivery_entries(runner, job.id) == []
            # Still serving: the next series is acknowledged and gets its own job, failed the same way.
            other = _send_series(namespace, tmp_path, "after-nan")
            assert _job(runner, other, {JobState.FAILED}).reason == job.reason
            assert runner.alive()
        finally:
            assert runner.terminate() == 0
            pacs.stop()


def _delivery_entries(node: NodeRunner, job_id: int) -> list[Any]:
    shown = node.cli("jobs", "show", "--json", str(job_id))
    assert shown.returncode == 0, shown.stderr
    return list(json.loads(shown.stdout)["deliveries"])


def test_nan_latents_from_the_bridge_network_are_an_engine_error(tiny_weights: Path, tmp_path: Path) -> None:
    # The VQGAN decode quantises a NaN latent to a codebook entry: without the pipeline's own
    # check the output would be a finite, flat image and the job would be DONE.
    import numpy as np

    from ct2pet_node.engine import load_pipeline
    from ct2pet_node.errors import EngineError

    pipeline = load_pipeline(_nan_weights(tiny_weights, tmp_path / "nan-unet", "unet", ""), device="cpu")
    hu = np.full((2, 64, 64), 40.0, dtype=np.float32)
    try:
        values = pipeline(hu, steps=3, seed=0)
    except EngineError as error:
        assert "non-finite" in str(error)
        return
    raise AssertionError(f"NaN weights gave finite values in [{values.min()}, {values.max()}] and no error")

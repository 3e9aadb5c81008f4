"""A node whose ``[dicomweb] listen`` is set takes a STOW-RS push from dicomweb-client, as it would from a PACS.

The node runs in-process (``app.build_server``) on free loopback ports with
the configuration read from TOML, so the ``[dicomweb]`` keys, the wiring and
the lifecycle are the ones ``ct2pet-node start`` uses. The synthetic series
and the shared sample's 247 slices go all the way through the demo model
(few steps: the plumbing, not the images).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from ctfactory import make_ct_series, series_uid_for
from dicomweb_client.api import DICOMwebClient

from ct2pet_node import app
from ct2pet_node.config import Config, load_config
from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.service.server import Server

pytestmark = pytest.mark.integration

TOKEN = "stow-integration-secret-0123456789"
STEPS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_config(work: Path) -> Config:
    token_file = work / "stow.token"
    token_file.write_text(TOKEN + "\n")
    path = work / "node.toml"
    path.write_text(
        f'[node]\nhost = "127.0.0.1"\ndata_dir = {json.dumps(str(work / "data"))}\nmin_free_mb = 0\n'
        "[routing]\nseries_quiet_seconds = 60\nsettle_after_release_seconds = 1\nmin_slices = 5\n"
        f'[engine]\nweights = "demo"\ndevice = "cpu"\nsteps = {STEPS}\n'
        '[output]\nseries = ["pet"]\ngrid = "model"\n'
        f'[dicomweb]\nlisten = "127.0.0.1:{free_port()}"\ntoken_file = {json.dumps(str(token_file))}\n'
    )
    config = load_config(path)
    # Port 0 for the DICOM and admin listeners: any free one; STOW-RS needs a real port in its TOML.
    return dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, port=0),
        admin=dataclasses.replace(config.admin, listen_host="127.0.0.1", listen_port=0),
    )


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(**kwargs: object) -> Server:
        server = app.build_server(node_config(tmp_path), **kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


def client(server: Server, token: str) -> DICOMwebClient:
    stow = server.components.stow
    assert stow is not None
    host, port = stow.address
    return DICOMwebClient(
        url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=600
    )


def wait_for_job(server: Server, done: Callable[[Job], bool], timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    jobs: list[Job] = []
    while time.monotonic() < deadline:
        jobs = server.components.store.list_jobs()
        if jobs and done(jobs[-1]):
            return jobs[-1]
        time.sleep(0.2)
    raise AssertionError(f"no job as expected within {timeout} s: {jobs}")


def spooled(server: Server) -> list[Path]:
    return sorted((server.config.node.data_dir / "spool").rglob("*.dcm"))


@pytest.mark.slow
def test_a_stow_push_is_spooled_and_translated_and_a_wrong_token_is_refused(
    make_node: Callable[..., Server], tmp_path: Path
) -> None:
    paths = make_ct_series(tmp_path / "ct", n=8, rows=64, cols=64, name="stow-push")
    datasets = [pydicom.dcmread(path) for path in paths]
    server = make_node()

    with pytest.raises(requests.HTTPError) as refused:
        client(server, "not-the-token").store_instances(datasets)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert spooled(server) == [] and server.components.store.list_jobs() == []

    answer = client(server, TOKEN).store_instances(datasets)
    assert "FailedSOPSequence" not in answer
    assert sorted(item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence) == sorted(
        ds.SOPInstanceUID for ds in datasets
    )
    assert len(spooled(server)) == 8  # on disk before the answer came back
    job = wait_for_job(server, lambda job: job.state.is_final, timeout=300)
    assert (job.series_uid, job.n_instances, job.state) == (series_uid_for("stow-push"), 8, JobState.DONE)
    metrics = server.components.metrics
    assert metrics.sample("ct2pet_stow_requests_total", code="200") == 1
    assert metrics.sample("ct2pet_stow_requests_total", code="401") == 1
    assert metrics.sample("ct2pet_instances_received_total") == 8


@pytest.mark.slow
def test_a_stow_push_of_the_sample_is_spooled_settled_and_translated(
    make_node: Callable[..., Server], sample_dir: Path
) -> None:
    datasets = [pydicom.dcmread(path) for path in sorted((sample_dir / "CT").iterdir()) if path.is_file()]
    assert len(datasets) == 247
    server = make_node()
    answer = client(server, TOKEN).store_instances(datasets)
    assert "FailedSOPSequence" not in answer and len(answer.ReferencedSOPSequence) == 247
    assert len(spooled(server)) == 247
    job = wait_for_job(server, lambda job: job.state.is_final, timeout=900)
    assert (job.n_instances, job.state) == (247, JobState.DONE), job
    # One request brought the whole series: it settled after the request, not after quiet.
    assert job.details.completed_because is not None and job.details.completed_because.startswith("settled")
    written = sorted((server.config.node.data_dir / "results").rglob("*.dcm"))
    assert len(written) == 247 and {pydicom.dcmread(p).Modality for p in written} == {"PT"}

"""``jobs resend`` and ``jobs rerun`` on the real stores, with the real sender and engine worker.

The network is a scripted send function that records what each destination
received; the engine is a fake translator (tests/fakes.py).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Unpack

import numpy as np
import pydicom
import pytest
from ctfactory import make_ct_series
from fakes import FakeModel
from jobpaths import receive_files

from ct2pet_node.config import Config, Destination, load_config
from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.output_uids import PET, output_series_uid
from ct2pet_node.domain.request import TranslationRequest
from ct2pet_node.errors import InputError
from ct2pet_node.routing.delivery import EntryState, InstanceResult
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.queue import InProcessQueue
from ct2pet_node.service.recovery import recover_jobs, settle_delivery
from ct2pet_node.service.redo import rerun_job, resend_job
from ct2pet_node.service.sender import Sender
from ct2pet_node.service.worker import EngineWorker
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)
ARCHIVE = Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=4243)
SLICES = 6


class Translator(FakeModel):
    """HU mapped linearly to [0, 1]."""

    def translate_region(self, hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


class NewWeights(Translator):
    model_id = "fake-model-v2"


class Peers:
    """Every destination stores everything; ``received[name]`` is what it was sent, in order."""

    def __init__(self) -> None:
        self.received: dict[str, list[Path]] = {}

    def __call__(
        self, destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        self.received.setdefault(destination.name, []).extend(paths)
        return [InstanceResult(p, p.stem, 0x0000, None) for p in paths]


def _config(data_dir: Path, *destinations: Destination) -> Config:
    config = load_config()
    return dataclasses.replace(
        config,
        node=dataclasses.replace(config.node, data_dir=data_dir, min_free_mb=0),
        routing=dataclasses.replace(config.routing, min_slices=5),
        output=dataclasses.replace(config.output, series=(PET,)),
        engine=dataclasses.replace(config.engine, steps=3, device="cpu"),
        destinations=destinations,
    )


class Node:
    """The parts of a node that resend and rerun reach: store, outbox, sender, engine worker."""

    def __init__(self, config: Config, peers: Peers, translator: FakeModel) -> None:
        self.config = config
        self.store = JobStore.open(config.node.data_dir)
        self.outbox = Outbox.open(config.node.data_dir)
        self.sender = Sender(
            self.outbox,
            config.destinations,
            "CT2PET",
            send=peers,
            on_job_delivered=lambda job_id: settle_delivery(self.store, job_id, None),
            on_job_dead=lambda job_id, why: settle_delivery(self.store, job_id, why),
        )
        self.worker = EngineWorker(
            config, self.store, InProcessQueue(), translator, self.sender.submit, NodeMetrics()
        )

    def start(self) -> None:
        """As Server.start does it: settle what the last run left, then serve."""
        recover_jobs(self.store, self.outbox, self.sender.submit, bool(self.config.destinations))

    def close(self) -> None:
        self.outbox.close()
        self.store.close()


@pytest.fixture
def ct_paths(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "ct", n=SLICES, rows=32, cols=32)


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
def open_node(tmp_path: Path, peers: Peers) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(*destinations: Destination, translator: FakeModel | None = None) -> Node:
        node = Node(_config(tmp_path / "data", *destinations), peers, translator or Translator())
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def _run_to_the_end(node: Node, job_id: int) -> JobState:
    """Engine, then sender, until the job settles."""
    node.worker.process(job_id)
    node.sender.run_once()
    job = node.store.get_job(job_id)
    assert job is not None
    return job.state


def test_resend_to_a_destination_added_after_the_job_was_done(
    open_node: Callable[..., Node], peers: Peers, ct_paths: list[Path]
) -> None:
    before = open_node(PACS)
    job_id = receive_files(before.store, ct_paths)
    assert _run_to_the_end(before, job_id) is JobState.DONE
    first = list(peers.received["pacs"])
    assert len(first) == SLICES
    before.close()

    # The archive joins the configuration; the node is stopped while the operator resends.
    config = _config(before.config.node.data_dir, PACS, ARCHIVE)
    message = resend_job(config, job_id, "archive")
    assert f"{SLICES} result file(s) queued for archive" in message
    after = open_node(PACS, ARCHIVE)
    after.start()
    after.sender.run_once()

    job = after.store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE
    assert sorted(peers.received["archive"]) == sorted(first)
    assert peers.received["pacs"] == first  # nothing doubled where the results already were
    assert {e.destination: e.state for e in after.outbox.entries(job_id)} == {
        "pacs": EntryState.DELIVERED,
        "archive": EntryState.DELIVERED,
    }


def test_resend_without_to_sends_to_every_destination_again_while_the_node_runs(
    open_node: Callable[..., Node], peers: Peers, ct_paths: list[Path]
) -> None:
    node = open_node(PACS, ARCHIVE)
    job_id = receive_files(node.store, ct_paths)
    assert _run_to_the_end(node, job_id) is JobState.DONE

    resend_job(node.config, job_id)
    node.sender.run_once()  # the running sender's next poll of the outbox

    job = node.store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE
    assert len(peers.received["pacs"]) == len(peers.received["archive"]) == 2 * SLICES


def test_resend_refuses_unknown_destinations_unfinished_jobs_and_missing_results(
    open_node: Callable[..., Node], ct_paths: list[Path]
) -> None:
    node = open_node(PACS)
    job_id = receive_files(node.store, ct_paths)
    with pytest.raises(InputError, match="job 1 is waiting: it has no results yet"):
        resend_job(node.config, job_id)
    assert _run_to_the_end(node, job_id) is JobState.DONE
    with pytest.raises(InputError, match=r"unknown destination 'archive'.*are pacs"):
        resend_job(node.config, job_id, "archive")
    with pytest.raises(InputError, match="no destination is configured"):
        resend_job(_config(node.config.node.data_dir), job_id)
    with pytest.raises(InputError, match="no job with id 9"):
        resend_job(node.config, 9)

    job = node.store.get_job(job_id)
    assert job is not None and job.details.results_dir is not None
    for path in job.details.results_dir.glob("*/*.dcm"):
        path.unlink()
    node.store.add_details(job_id, JobDetails(purged="results removed by retention"))
    with pytest.raises(InputError, match=r"removed by retention.*jobs rerun 1"):
        resend_job(node.config, job_id)
    job = node.store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE


def test_rerun_with_the_same_model_makes_the_same_series_and_delivers_it_again(
    open_node: Callable[..., Node], peers: Peers, ct_paths: list[Path]
) -> None:
    node = open_node(PACS)
    job_id = receive_files(node.store, ct_paths)
    assert _run_to_the_end(node, job_id) is JobState.DONE
    done = node.store.get_job(job_id)
    assert done is not None

    rerun_job(node.config, job_id)
    assert node.outbox.entries(job_id) == []
    assert _run_to_the_end(node, job_id) is JobState.DONE

    again = node.store.get_job(job_id)
    assert again is not None and again.attempts == 2
    assert again.output_series_uids == done.output_series_uids
    assert again.output_series_uids == (output_series_uid(done.series_uid, "fake-model", PET),)
    assert len(peers.received["pacs"]) == 2 * SLICES
    assert sorted(peers.received["pacs"][:SLICES]) == sorted(peers.received["pacs"][SLICES:])


def test_rerun_with_another_model_makes_a_new_series_and_leaves_no_stale_files(
    open_node: Callable[..., Node], peers: Peers, ct_paths: list[Path]
) -> None:
    old = open_node(PACS)
    job_id = receive_files(old.store, ct_paths)
    assert _run_to_the_end(old, job_id) is JobState.DONE
    done = old.store.get_job(job_id)
    assert done is not None and done.details.results_dir is not None
    old.close()

    new = open_node(PACS, translator=NewWeights())
    rerun_job(new.config, job_id)
    new.start()
    assert _run_to_the_end(new, job_id) is JobState.DONE

    again = new.store.get_job(job_id)
    assert again is not None
    assert again.output_series_uids == (output_series_uid(done.series_uid, "fake-model-v2", PET),)
    assert set(again.output_series_uids).isdisjoint(done.output_series_uids)
    written = list(done.details.results_dir.glob("*/*.dcm"))
    assert len(written) == SLICES
    assert {str(pydicom.dcmread(p).SeriesInstanceUID) for p in written} == set(again.output_series_uids)
    assert sorted(peers.received["pacs"][SLICES:]) == sorted(written)


def test_rerun_refuses_jobs_in_progress_refused_older_generations_and_a_purged_spool(
    open_node: Callable[..., Node], ct_paths: list[Path], tmp_path: Path
) -> None:
    node = open_node()
    job_id = receive_files(node.store, ct_paths)
    with pytest.raises(InputError, match="job 1 is waiting: it is still on its way"):
        rerun_job(node.config, job_id)
    assert _run_to_the_end(node, job_id) is JobState.DONE

    ct_paths[0].unlink()
    with pytest.raises(InputError, match=r"received CT of job 1 is gone.*send the series again"):
        rerun_job(node.config, job_id)

    late = pydicom.dcmread(ct_paths[1])
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    late.save_as(tmp_path / "late.dcm")
    receive_files(node.store, [tmp_path / "late.dcm"])  # a late instance starts the series' next job
    with pytest.raises(InputError, match=r"job 1 is not its series' latest job .*rerun job 2"):
        rerun_job(node.config, job_id)

"""The node's metrics: prometheus-client series in a registry of the node's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobpaths import move_to

from ct2pet_node.domain.cluster import ActorActivity, ClusterSnapshot
from ct2pet_node.domain.fetch import FetchRecord
from ct2pet_node.domain.jobs import JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.service.metrics import NodeMetrics, ReadAtScrape
from ct2pet_node.spool.jobstore import JobStore

SERIES = "ct2pet_series_completed_total", "ct2pet_series_refused_total"


def test_series_render_in_prometheus_text_format_with_labels() -> None:
    metrics = NodeMetrics()
    metrics.instance_stored()
    metrics.instances_received.inc(2)
    metrics.attempt_finished('pa"cs', acknowledged=0, failed=True)
    metrics.instance_rejected(0xA700)
    metrics.jobs.read_from(lambda: {"done": 3})
    text = metrics.render().decode()
    assert "# TYPE ct2pet_instances_received_total counter" in text
    assert "ct2pet_instances_received_total 3.0\n" in text
    assert 'ct2pet_send_failures_total{destination="pa\\"cs"} 1.0' in text
    assert 'ct2pet_instances_rejected_total{status="0xA700"} 1.0' in text
    assert "# TYPE ct2pet_jobs gauge" in text and 'ct2pet_jobs{state="done"} 3.0' in text
    # A labelled counter nobody has fed yet is still announced.
    assert "# TYPE ct2pet_instances_sent_total counter" in text


def test_each_node_has_its_own_registry() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.instance_stored()
    assert (
        first.sample("ct2pet_instances_received_total"),
        second.sample("ct2pet_instances_received_total"),
    ) == (
        1,
        0,
    )


def test_counters_never_go_down() -> None:
    with pytest.raises(ValueError):
        NodeMetrics().series_refused.inc(-1)


def test_a_counter_read_at_scrape_time_keeps_its_kind() -> None:
    metrics = NodeMetrics()
    ignored = ReadAtScrape(
        "ct2pet_example_ignored", "An example kept elsewhere.", "sop_class", kind="counter"
    )
    ignored.read_from(lambda: {"PET": 2})
    metrics.registry.register(ignored)
    text = metrics.render().decode()
    assert "# TYPE ct2pet_example_ignored_total counter" in text
    assert 'ct2pet_example_ignored_total{sop_class="PET"} 2.0' in text


def _record(data_dir: Path, sop: str) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=SopInstanceUid(sop),
        sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
        series_uid=SeriesUid("1.2.3.4"),
        study_uid=StudyUid("1.2.3"),
        modality="CT",
        transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
        calling_ae_title=AeTitle("SCANNER"),
        path=data_dir / f"{sop}.dcm",
        received_at=1.0,
    )


def test_series_counters_count_job_moves_and_never_go_down(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    with JobStore.open(tmp_path, on_transition=metrics.job_moved) as store:
        store.record_instance(_record(tmp_path, "1.2.3.4.1"))
        assert [metrics.sample(name) for name in SERIES] == [0, 0]
        move_to(store, 1, JobState.WAITING)
        assert [metrics.sample(name) for name in SERIES] == [1, 0]
        # A late instance reopens the job: the completion already counted stays counted.
        store.record_instance(_record(tmp_path, "1.2.3.4.2"))
        assert store.get_job(1).state is JobState.RECEIVED  # type: ignore[union-attr]
        assert [metrics.sample(name) for name in SERIES] == [1, 0]
        move_to(store, 1, JobState.WAITING)
        move_to(store, 1, JobState.REFUSED, "the spooled files changed")  # refused at the engine's re-check
        assert [metrics.sample(name) for name in SERIES] == [2, 1]


def test_a_cluster_engine_exposes_actors_chunks_speed_and_retries_at_each_scrape() -> None:
    metrics = NodeMetrics()
    snapshots = [
        ClusterSnapshot(
            "head:6379",
            "ready",
            (
                ActorActivity("actor-0", "gpu-a", "cuda:0", chunks_in_flight=2, slices_per_second=3.0),
                ActorActivity("actor-1", "gpu-b", "cuda:0", chunks_in_flight=1, slices_per_second=1.5),
            ),
            chunk_retries=1,
        )
    ]
    metrics.read_cluster(lambda: snapshots[-1])
    assert metrics.sample("ct2pet_cluster_actors") == 2
    assert metrics.sample("ct2pet_cluster_chunks_in_flight") == 3
    assert metrics.sample("ct2pet_cluster_chunk_retries_total") == 1
    labels = {"actor": "actor-1", "host": "gpu-b", "device": "cuda:0"}
    assert metrics.sample("ct2pet_cluster_slices_per_second", **labels) == 1.5
    snapshots.append(ClusterSnapshot("head:6379", "down", (), chunk_retries=1))
    assert metrics.sample("ct2pet_cluster_actors") == 0
    assert metrics.sample("ct2pet_cluster_slices_per_second", **labels) == 0
    text = metrics.render().decode()
    assert "# TYPE ct2pet_cluster_chunk_retries_total counter" in text


def test_a_local_engine_has_no_cluster_series() -> None:
    assert "ct2pet_cluster" not in NodeMetrics().render().decode()


def test_fetches_are_counted_by_result_and_their_instances_by_source() -> None:
    metrics = NodeMetrics()
    metrics.fetch_recorded(FetchRecord(1.0, "pacs", "1.2.3", "C-GET", series=1, instances=247, jobs=(4,)))
    metrics.fetch_recorded(FetchRecord(2.0, "pacs", "1.2.3", "C-GET", dry_run=True, series=1))
    metrics.fetch_recorded(FetchRecord(3.0, "pacs", "1.2.4", "C-GET", error="cannot connect"))
    for result in ("ok", "dry_run", "failed"):
        assert metrics.sample("ct2pet_fetches_total", source="pacs", method="C-GET", result=result) == 1
    assert metrics.sample("ct2pet_fetched_instances_total", source="pacs") == 247

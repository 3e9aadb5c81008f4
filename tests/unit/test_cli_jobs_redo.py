"""``jobs list`` order, ``jobs force`` where it cannot apply, ``jobs resend|rerun`` from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from jobpaths import move_to

from ct2pet_node.cli import main
from ct2pet_node.domain.jobs import JobDetails, JobState
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle, SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.delivery import EntryState
from ct2pet_node.spool.jobstore import JobStore
from ct2pet_node.spool.outbox import Outbox

pytestmark = pytest.mark.usefixtures("restore_logging")

DESTINATIONS = (
    '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
    '[[destinations]]\nname = "archive"\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = 4243\n'
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f"[node]\ndata_dir = {json.dumps(str(data_dir))}\nport = 11112\n{DESTINATIONS}")
    return path


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["--log-json", *args])


def _record(store: JobStore, series: str, sop: str) -> None:
    path = store.data_dir / "spool" / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ct")
    store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid(series),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=path,
            received_at=time.time(),
        )
    )


def _done_job(data_dir: Path) -> Path:
    """Job 1, DONE, with two result files delivered to "pacs"; its results folder."""
    results = data_dir / "results" / "1"
    (results / "pet").mkdir(parents=True)
    for name in ("a.dcm", "b.dcm"):
        (results / "pet" / name).write_bytes(b"pet")
    with JobStore.open(data_dir) as store:
        _record(store, "1.2.3.4", "1.2.3.4.1")
        move_to(store, 1, JobState.DONE, details=JobDetails(results_dir=results))
    return results


def test_jobs_list_is_newest_first_as_its_help_says(config_file: Path, data_dir: Path) -> None:
    with JobStore.open(data_dir) as store:
        for series in ("1.2.3.4", "1.2.3.5", "1.2.3.6"):
            _record(store, series, f"{series}.1")

    assert "newest first" in _run("jobs", "list", "--help").output
    listed = json.loads(_run("jobs", "list", "--json", "--config", str(config_file)).stdout)
    assert [job["id"] for job in listed] == [3, 2, 1]
    rows = _run("jobs", "list", "--config", str(config_file)).stdout.splitlines()[1:]
    assert [int(row.split()[0]) for row in rows] == [3, 2, 1]


def test_jobs_force_on_a_done_job_fails_with_one_line_saying_why(config_file: Path, data_dir: Path) -> None:
    _done_job(data_dir)

    result = _run("jobs", "force", "1.2.3.4", "--config", str(config_file))

    assert result.exit_code == 2
    assert "completion requested" not in result.output
    [line] = result.output.strip().splitlines()
    assert "job 1 is done, force does not apply" in line and "jobs resend 1" in line


def test_jobs_resend_to_an_unknown_destination_is_a_clear_error(config_file: Path, data_dir: Path) -> None:
    _done_job(data_dir)

    result = _run("jobs", "resend", "1", "--to", "elsewhere", "--config", str(config_file))

    assert result.exit_code == 2
    assert "unknown destination 'elsewhere'" in result.output and "archive, pacs" in result.output
    with JobStore.open(data_dir) as store:
        job = store.get_job(1)
        assert job is not None and job.state is JobState.DONE


def test_jobs_resend_to_one_destination_queues_only_that_one(config_file: Path, data_dir: Path) -> None:
    results = _done_job(data_dir)

    result = _run("jobs", "resend", "1", "--to", "archive", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    assert "2 result file(s) queued for archive" in result.output
    outbox = Outbox.open(data_dir)
    try:
        [entry] = outbox.entries(1)
    finally:
        outbox.close()
    assert entry.destination == "archive" and entry.state is EntryState.PENDING
    assert sorted(entry.undelivered_paths) == sorted((results / "pet").glob("*.dcm"))
    with JobStore.open(data_dir) as store:
        job = store.get_job(1)
        assert job is not None and job.state is JobState.SENDING


def test_jobs_rerun_queues_a_done_job_for_the_engine(config_file: Path, data_dir: Path) -> None:
    _done_job(data_dir)

    result = _run("jobs", "rerun", "1", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    assert "job 1: queued for the engine again" in result.output
    with JobStore.open(data_dir) as store:
        job = store.get_job(1)
        assert job is not None and job.state is JobState.WAITING
    assert _run("jobs", "rerun", "1", "--config", str(config_file)).exit_code == 2

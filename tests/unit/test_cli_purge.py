"""``ct2pet-node purge [--dry-run]``: the retention pass from the command line, answers on stdout."""

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
from ct2pet_node.spool.jobstore import JobStore

pytestmark = pytest.mark.usefixtures("restore_logging")

DAY = 86_400.0


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["--log-json", *args])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "[retention]\nspool_days = 7\nresults_days = 30\nrefused_days = 7\n"
    )
    return path


def _job(data_dir: Path, series: str, state: JobState, days_ago: float) -> Path:
    """A job finished ``days_ago`` with one spooled instance (and results when DONE); its spool file."""
    spool = data_dir / "spool" / "1.2" / series / f"{series}.1.dcm"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"\0" * 2000)
    with JobStore.open(data_dir, clock=lambda: time.time() - days_ago * DAY) as store:
        store.record_instance(
            InstanceRecord(
                sop_instance_uid=SopInstanceUid(f"{series}.1"),
                sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
                series_uid=SeriesUid(series),
                study_uid=StudyUid("1.2"),
                modality="CT",
                transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
                calling_ae_title=AeTitle("SCANNER"),
                path=spool,
                received_at=time.time(),
            )
        )
        job = store.job_for_series(series)
        assert job is not None
        results = data_dir / "results" / str(job.id)
        details = None
        if state is JobState.DONE:
            (results / "pet").mkdir(parents=True)
            (results / "pet" / "1.dcm").write_bytes(b"\0" * 1000)
            details = JobDetails(results_dir=results)
        move_to(store, job.id, state, details=details)
    return spool


def test_dry_run_lists_and_deletes_nothing_then_purge_deletes_and_notes(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    old = _job(data, "1.2.3", JobState.DONE, days_ago=40)
    recent = _job(data, "1.2.4", JobState.DONE, days_ago=1)
    failed = _job(data, "1.2.5", JobState.FAILED, days_ago=400)

    dry = _run("purge", "--dry-run", "--config", str(config_file))
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert (
        lines[0].startswith("would remove job 1: spool (1 files) and results ")
        and "done 40.0 days ago" in lines[0]
    )
    assert lines[-1] == "would remove the files of 1 jobs, 0.0 MB (dry run)"
    assert old.is_file() and (data / "results" / "1").is_dir()
    assert '"event"' not in dry.output  # an admin command: no JSON log on stdout

    done = _run("purge", "--config", str(config_file))
    assert done.exit_code == 0, done.output
    assert done.output.startswith("removed job 1: spool (1 files) and results ")
    assert not old.exists() and not (data / "results" / "1").exists()
    assert recent.is_file() and failed.is_file()
    shown = json.loads(_run("jobs", "show", "1", "--json", "--config", str(config_file)).output)
    assert shown["state"] == "done" and "purged" in shown["details"]["purged"]

    again = _run("purge", "--config", str(config_file))
    assert again.output.strip() == "nothing to remove: no finished job's files are past [retention]"

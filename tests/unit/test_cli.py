"""The command line: exit codes, output contracts and clear errors (no node running, no torch)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
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

JOB_FIELDS = {"id", "study_uid", "series_uid", "state", "reason", "n_instances", "output_series_uids"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\nport = 11112\n"
        f'[admin]\nlisten = "127.0.0.1:{_free_port()}"\n'
    )
    return path


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["--log-json", *args])


def _record(store: JobStore, series: str, sop: str) -> None:
    store.record_instance(
        InstanceRecord(
            sop_instance_uid=SopInstanceUid(sop),
            sop_class_uid=Uid("1.2.840.10008.5.1.4.1.1.2"),
            series_uid=SeriesUid(series),
            study_uid=StudyUid("1.2.3"),
            modality="CT",
            transfer_syntax_uid=Uid("1.2.840.10008.1.2.1"),
            calling_ae_title=AeTitle("SCANNER"),
            path=store.data_dir / "spool" / f"{sop}.dcm",
            received_at=time.time(),
        )
    )


def test_config_check_ok_prints_the_essentials(config_file: Path, tmp_path: Path) -> None:
    result = _run("config", "check", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output
    assert str(tmp_path / "data") in result.output
    assert "none: results stay in data_dir" in result.output


def test_config_check_says_what_the_engine_leaves_open_and_what_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text("[engine]\nsteps = 20\neta = 1\nbatch_size = 4\nchannels_last = false\n")
    result = _run("config", "check", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "steps 20, eta 1, seed 0, precision float32" in result.output
    assert "fast paths: channels_last False, batch_size 4" in result.output
    embedded = _run("config", "check")
    assert "steps the model's, eta the model's" in embedded.output
    assert "fast paths: the device's defaults" in embedded.output


def test_config_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nport = 70000\ncolour = "blue"\n[engine]\nsteps = 1\n')
    result = _run("config", "check", "--config", str(bad))
    assert result.exit_code == 1
    assert "3 problem(s) found" in result.output
    for key in ("[node] port", "[node] colour", "[engine] steps"):
        assert key in result.output


def test_config_check_of_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = _run("config", "check", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 1
    assert "file not found" in result.output


def test_jobs_list_json_has_the_contract_fields(config_file: Path, tmp_path: Path) -> None:
    with JobStore.open(tmp_path / "data") as store:
        _record(store, "1.2.3.4", "1.2.3.4.1")
        _record(store, "1.2.3.4", "1.2.3.4.2")
        _record(store, "1.2.3.5", "1.2.3.5.1")
        store.transition(1, JobState.RECEIVED, JobState.REFUSED, "series has 2 slice(s)")

    result = _run("jobs", "list", "--json", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [job["id"] for job in listed] == [2, 1]  # newest first, as --help says
    for job in listed:
        assert set(job) >= JOB_FIELDS
    assert listed[1]["state"] == "refused" and listed[1]["reason"] == "series has 2 slice(s)"
    assert listed[1]["n_instances"] == 2 and listed[1]["output_series_uids"] == []
    only_received = json.loads(
        _run("jobs", "list", "--json", "--state", "received", "--config", str(config_file)).stdout
    )
    assert [job["id"] for job in only_received] == [2]


def test_jobs_list_text_and_unknown_state(config_file: Path) -> None:
    assert _run("jobs", "list", "--config", str(config_file)).stdout.strip() == "no jobs"
    result = _run("jobs", "list", "--state", "lost", "--config", str(config_file))
    assert result.exit_code == 2 and "unknown job state 'lost'" in result.output


def test_jobs_show_says_where_results_stay_without_destination(config_file: Path, tmp_path: Path) -> None:
    results = tmp_path / "data" / "results" / "1"
    with JobStore.open(tmp_path / "data") as store:
        _record(store, "1.2.3.4", "1.2.3.4.1")
        move_to(store, 1, JobState.DONE, details=JobDetails(results_dir=results))

    result = _run("jobs", "show", "1", "--json", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert set(shown) >= JOB_FIELDS
    assert shown["details"]["results_dir"] == str(results)
    assert "results stay" in shown["where"]
    assert shown["deliveries"] == [] and shown["instance_problems"] == {}


def test_jobs_show_of_an_unknown_job_exits_2(config_file: Path) -> None:
    result = _run("jobs", "show", "42", "--config", str(config_file))
    assert result.exit_code == 2
    assert "no job with id 42" in result.output


def test_jobs_force_of_an_unknown_series_exits_2(config_file: Path) -> None:
    result = _run("jobs", "force", "9.9.9", "--config", str(config_file))
    assert result.exit_code == 2
    assert "no job for series '9.9.9'" in result.output


def test_jobs_force_of_a_receiving_series_is_acknowledged(config_file: Path, tmp_path: Path) -> None:
    with JobStore.open(tmp_path / "data") as store:
        _record(store, "1.2.3.4", "1.2.3.4.1")
    result = _run("jobs", "force", "1.2.3.4", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert "job 1 (received): completion requested" in result.output
    with JobStore.open(tmp_path / "data") as store:
        job = store.get_job(1)
        assert job is not None and job.forced


def test_status_without_a_running_node_is_a_clear_error(config_file: Path) -> None:
    result = _run("status", "--config", str(config_file))
    assert result.exit_code == 2
    assert "no node answers at http://127.0.0.1:" in result.output
    assert "ct2pet-node start" in result.output


def test_echo_to_an_unknown_destination_names_the_known_ones(config_file: Path) -> None:
    result = _run("echo", "pacs", "--config", str(config_file))
    assert result.exit_code == 2
    assert "no destination named 'pacs' (known: none configured)" in result.output


def test_importing_the_cli_loads_neither_torch_nor_pynetdicom() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ct2pet_node.cli; print(sorted(m for m in ('torch', 'pynetdicom') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip() == "[]"

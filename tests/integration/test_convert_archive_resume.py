"""``convert --recursive`` as a process: killed with SIGKILL after its first series, run again, it resumes.

The issue's test: over a folder of several series (some refusable) each good
series is converted once, each refusal is listed with its reason, and a
rerun after a SIGKILL converts no finished series again and ends with the
UIDs an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from ctfactory import PATIENT_NAME, make_ct_series, series_uid_for
from studyfactory import make_pet_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Studies sort by UID, so the small series is translated first and the kill lands in the second.
_UID_ROOT = "1.2.826.0.1.3680043.8.498.9000."
GOOD = {"first": (_UID_ROOT + "1", 6), "second": (_UID_ROOT + "2", 16), "third": (_UID_ROOT + "3", 16)}


def _archive(root: Path) -> None:
    for name, (study_uid, slices) in GOOD.items():
        make_ct_series(root / PATIENT_NAME / name, n=slices, name=name, rows=32, cols=32, study_uid=study_uid)
    make_ct_series(
        root / "refusable" / "short", n=3, name="short", rows=32, cols=32, study_uid=_UID_ROOT + "2"
    )
    make_ct_series(
        root / "refusable" / "tilted",
        n=8,
        name="tilted",
        rows=32,
        cols=32,
        study_uid=_UID_ROOT + "3",
        tilt_degrees=15,
    )
    make_pet_series(root / "refusable" / "pet", n=4)


def _config(tmp_path: Path, weights: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        "[routing]\nmin_slices = 5\n"
        f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = 3\n'
        '[output]\nseries = ["secondary-capture", "pet"]\n'
    )
    return path


def _start(config: Path, in_dir: Path, out_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    # The worktree's package, not an installed one: the same code the unit tests import.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "ct2pet_node", "--log-json", "convert", "--recursive"]
    with log.open("wb") as output:
        return subprocess.Popen(
            [*command, "--config", str(config), str(in_dir), str(out_dir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )


def _run(config: Path, in_dir: Path, out_dir: Path, log: Path) -> str:
    process = _start(config, in_dir, out_dir, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def _series_dir(out_dir: Path, name: str) -> Path:
    return out_dir / GOOD[name][0] / series_uid_for(name)


def _states(out_dir: Path) -> dict[str, tuple[str, str | None]]:
    rows = json.loads((out_dir / "summary.json").read_text())["series"]
    return {row["series_uid"]: (row["state"], row["reason"]) for row in rows}


def _uids(out_dir: Path, name: str) -> dict[str, object]:
    """What identifies a finished series' outputs: its marker's output series, and its files' names (SOP UIDs)."""
    series_dir = _series_dir(out_dir, name)
    marker = json.loads((series_dir / "converted.json").read_text())
    return {
        "outputs": marker["outputs"],
        "files": sorted(str(p.relative_to(series_dir)) for p in series_dir.rglob("*.dcm")),
    }


def test_a_killed_archive_conversion_resumes_without_converting_a_finished_series_again(
    tmp_path: Path, tiny_weights: Path
) -> None:
    in_dir, config = tmp_path / "in", _config(tmp_path, tiny_weights)
    _archive(in_dir)
    fresh = tmp_path / "fresh"
    started = time.monotonic()
    _run(config, in_dir, fresh, tmp_path / "fresh.log")
    fresh_seconds = time.monotonic() - started

    out_dir = tmp_path / "out"
    process = _start(config, in_dir, out_dir, tmp_path / "killed.log")
    first_marker = _series_dir(out_dir, "first") / "converted.json"
    deadline = time.monotonic() + 240
    while not first_marker.is_file():
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first series was never finished"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (_series_dir(out_dir, "third") / "converted.json").exists(), "killed too late to test resuming"
    # Almost always killed midway through the second series; should it have finished, it is kept too.
    second_finished = (_series_dir(out_dir, "second") / "converted.json").is_file()
    first_files = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _series_dir(out_dir, "first").rglob("*")
    }

    output = _run(config, in_dir, out_dir, tmp_path / "rerun.log")

    states = _states(out_dir)
    assert states[series_uid_for("first")] == ("already converted", None)
    assert states[series_uid_for("third")] == ("converted", None)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first_files} == first_files
    assert not list(out_dir.rglob("*.partial"))
    assert states[series_uid_for("second")][0] == ("already converted" if second_finished else "converted")
    # The rerun translated only what was not finished: the first series' slices are not on its bar.
    assert f"translating {16 if second_finished else 32} slices" in output
    for name in GOOD:
        assert _uids(out_dir, name) == _uids(fresh, name), name
    short, tilted, pet = (states[series_uid_for(n)] for n in ("short", "tilted", "pet"))
    assert short[0] == "refused" and "series has 3 slice(s), at least 5 are needed" in str(short[1])
    assert tilted[0] == "refused" and "gantry tilt 15.0°" in str(tilted[1])
    assert pet[0] == "skipped" and "not CT" in str(pet[1])
    for text in (output, (out_dir / "summary.txt").read_text(), (out_dir / "summary.json").read_text()):
        assert PATIENT_NAME not in text
    print(f"fresh run {fresh_seconds:.1f} s")

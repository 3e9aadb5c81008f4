"""A full disk: the watermark refuses with 0xA700, nothing accepted is lost, service resumes.

Each test mounts its own small tmpfs (root or CAP_SYS_ADMIN needed; skipped
with the reason otherwise) and unmounts it in teardown.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctfactory import make_ct_series
from fuzz.harness import RunningScp, node_config
from peers import DCMTK_ENV, dcmtk_tool

from ct2pet_node.net.scp import OUT_OF_RESOURCES, SUCCESS, StorageScp
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs at ``tmp_path/disk``."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(directory: Path, leave_mib: float) -> Path:
    """Write a filler file until about ``leave_mib`` MiB stay free."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    filler = directory / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\x00" * max(0, int(free - leave_mib * MIB)))
    return filler


def _fill_completely(directory: Path) -> Path:
    filler = directory / "filler-all"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\x00" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def _hashes(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_watermark_refuses_keeps_what_was_accepted_and_resumes(small_disk: Path, tmp_path: Path) -> None:
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk's storescu not found; install dcmtk")
    node = RunningScp(node_config(small_disk / "data", min_free_mb=2))
    try:
        first = make_ct_series(tmp_path / "first", n=4, rows=64, cols=64, name="disk")
        assert node.send(first) == [SUCCESS] * 4  # type: ignore[arg-type]
        accepted = _hashes(node.spooled())
        filler = _fill(small_disk, leave_mib=1.0)  # below the 2 MiB watermark
        more = make_ct_series(tmp_path / "more", n=3, rows=64, cols=64, name="disk")
        result = subprocess.run(
            [
                storescu,
                "-v",
                "--no-halt",
                "-aet",
                "SCANNER",
                "-aec",
                "CT2PET",
                "127.0.0.1",
                str(node.port),
                *map(str, more),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=DCMTK_ENV,
        )
        output = result.stdout + result.stderr
        assert output.count("Received Store Response (Refused: OutOfResources)") == 3, output
        assert _hashes(node.spooled()) == accepted  # nothing accepted lost or changed
        (job,) = node.store.list_jobs()
        assert job.n_instances == 4
        filler.unlink()  # space returns
        assert node.send(more) == [SUCCESS] * 3  # type: ignore[arg-type]
        assert len(node.spooled()) == 7
        assert {k: v for k, v in _hashes(node.spooled()).items() if k in accepted} == accepted
    finally:
        node.stop()


def test_a_full_disk_under_the_job_store_answers_a700(small_disk: Path, tmp_path: Path) -> None:
    """Spool on a roomy disk, job store on a full one: SQLite cannot commit -> 0xA700, no crash."""
    config = node_config(tmp_path / "spool-data")
    spool = InstanceSpool(config.node.data_dir, 0)
    store = JobStore.open(small_disk / "jobs")
    scp = StorageScp(config.node, config.security, spool, store, lambda _: None, address=("127.0.0.1", 0))
    scp.start()
    node = RunningScp.__new__(RunningScp)  # reuse its SCU helpers around this hand-built SCP
    node.config, node.scp, node.data_dir = config, scp, config.node.data_dir
    try:
        paths = make_ct_series(tmp_path / "ct", n=3, rows=64, cols=64, name="sqlite")
        assert node.send(paths[:1]) == [SUCCESS]  # type: ignore[arg-type]
        filler = _fill_completely(small_disk)
        assert node.send(paths[1:]) == [OUT_OF_RESOURCES] * 2  # type: ignore[arg-type]
        assert node.echo()
        assert len(store.instances_of(store.list_jobs()[0].series_uid)) == 1
        filler.unlink()
        assert node.send(paths[1:]) == [SUCCESS] * 2  # type: ignore[arg-type]  # a retry succeeds
        assert len(store.instances_of(store.list_jobs()[0].series_uid)) == 3
    finally:
        scp.stop(timeout=1)
        store.close()

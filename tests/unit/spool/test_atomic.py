"""Atomic, durable, private writes and the free-space watermark."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ct2pet_node.errors import OutOfSpace, StorageError
from ct2pet_node.spool.atomic import (
    TEMP_SUFFIX,
    UMASK_FILE_MODE,
    atomic_file,
    atomic_write,
    atomic_write_json,
    check_free_space,
    ensure_private_dir,
    free_megabytes,
    remove_partial_files,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_writes_all_chunks_private(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    written = atomic_write(target, [b"abc", memoryview(b"def"), b""])
    assert written == 6
    assert target.read_bytes() == b"abcdef"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_atomic_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"


def test_failed_write_leaves_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    target.write_bytes(b"old")

    def chunks():
        yield b"partial"
        raise OSError(5, "Input/output error")

    with pytest.raises(StorageError, match="cannot write"):
        atomic_write(target, chunks())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_ensure_private_dir_creates_parents_0700(tmp_path: Path) -> None:
    deep = tmp_path / "x" / "y" / "z"
    assert ensure_private_dir(deep) == deep
    for path in (tmp_path / "x", tmp_path / "x" / "y", deep):
        assert _mode(path) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ensure_private_dir(loose)
    assert _mode(loose) == 0o700


def test_ensure_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match="not a directory"):
        ensure_private_dir(tmp_path / "f")


def test_free_space_watermark(tmp_path: Path) -> None:
    free = free_megabytes(tmp_path)
    assert free > 0
    check_free_space(tmp_path, 0)
    with pytest.raises(OutOfSpace, match="min_free_mb"):
        check_free_space(tmp_path, int(free) + 10)
    # The incoming write itself counts against the watermark.
    with pytest.raises(OutOfSpace):
        check_free_space(tmp_path, max(0, int(free) - 10), incoming_bytes=20 * 1024 * 1024)


def test_remove_partial_files(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / f".x.dcm.abc{TEMP_SUFFIX}").write_bytes(b"")
    (tmp_path / "s" / "x.dcm").write_bytes(b"")
    assert remove_partial_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.dcm"]
    assert remove_partial_files(tmp_path / "missing") == 0


def test_a_block_that_raises_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="serialiser broke"), atomic_file(target) as handle:
        handle.write(b"half a new checkpoint")
        raise ValueError("serialiser broke")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_json_is_written_whole_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"mae": 0.5}, UMASK_FILE_MODE, indent=1)
    assert json.loads(target.read_text(encoding="utf-8")) == {"mae": 0.5}
    assert target.stat().st_mode & 0o777 == UMASK_FILE_MODE & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

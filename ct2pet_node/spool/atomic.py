"""Durable file writes: a file is either wholly there or not there at all.

A write goes to a temporary file in the destination's own directory (same
filesystem, so the rename is atomic), is fsynced, renamed over the
destination with :func:`os.replace`, and then the directory is fsynced so the
rename itself survives a power cut. Everything the node keeps is for the
service user's eyes only: directories 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ct2pet_node.errors import OutOfSpace, StorageError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# As open() creates a file: the umask decides (weights and training outputs, meant to be shared).
UMASK_FILE_MODE = 0o666
TEMP_SUFFIX = ".partial"
_MIB = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (creations, renames) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def ensure_private_dir(directory: Path) -> Path:
    """Create ``directory`` and any missing parents as 0700, durably.

    Each directory created is fsynced into its parent, so a file later
    renamed into it cannot be lost with its directory entry after a crash.
    Existing directories keep their mode except ``directory`` itself, which
    is tightened to 0700.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            # Another association created it between our check and mkdir.
            continue
        fsync_dir(path.parent)
    if not directory.is_dir():
        raise StorageError(
            f"{directory} exists but is not a directory; move it away or choose another data_dir"
        )
    if directory.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        directory.chmod(PRIVATE_DIR_MODE)
    return directory


def free_megabytes(directory: Path) -> float:
    """Free space available to this (unprivileged) user on ``directory``'s filesystem, MiB."""
    return free_bytes(directory) / _MIB


def free_bytes(directory: Path) -> int:
    """Free space available to this (unprivileged) user on ``directory``'s filesystem, bytes."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def check_free_space(directory: Path, min_free_mb: int, incoming_bytes: int = 0) -> None:
    """Raise :class:`OutOfSpace` when writing ``incoming_bytes`` would go below the watermark.

    Parameters
    ----------
    directory : Path
        Any existing directory on the filesystem to check.
    min_free_mb : int
        The watermark, MiB, as ``[node] min_free_mb`` states it.
    incoming_bytes : int
        Size of the write about to happen, bytes.
    """
    free = free_megabytes(directory)
    if free - incoming_bytes / _MIB < min_free_mb:
        raise OutOfSpace(
            f"{directory}: {free:.0f} MiB free, at or below the {min_free_mb} MiB watermark "
            "([node] min_free_mb); free disk space or lower the watermark"
        )


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = PRIVATE_FILE_MODE) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` atomically and durably when the block ends.

    The one implementation of the node's atomic writes (:func:`atomic_write`
    is built on it). The parent directory must exist. If the block raises, or
    a write fails, the temporary file is removed and ``path`` is left as it
    was; an ``OSError`` comes out as a :class:`StorageError` (``OutOfSpace``
    on a full disk).
    """
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)
    except OSError as error:
        temp.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:  # the watermark check raced another writer
            raise OutOfSpace(
                f"{path.parent}: disk full while writing {path.name}; free disk space"
            ) from error
        raise StorageError(
            f"cannot write {path}: {error.strerror or error}; check the directory (data_dir for the spool)"
        ) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: Path,
    chunks: bytes | bytearray | memoryview | Iterable[bytes],
    mode: int = PRIVATE_FILE_MODE,
) -> int:
    """Write ``chunks`` to ``path`` atomically and durably (:func:`atomic_file`); return the bytes written."""
    parts = (chunks,) if isinstance(chunks, bytes | bytearray | memoryview) else chunks
    written = 0
    with atomic_file(path, mode) as handle:
        for part in parts:
            written += handle.write(part)
    return written


def atomic_write_json(
    path: Path, data: Any, mode: int = PRIVATE_FILE_MODE, indent: int | None = None
) -> None:
    """``data`` as UTF-8 JSON (newline-terminated) to ``path``, atomically and durably."""
    atomic_write(path, (json.dumps(data, indent=indent) + "\n").encode("utf-8"), mode)


def atomic_write_npy(path: Path, array: np.ndarray, mode: int = PRIVATE_FILE_MODE) -> None:
    """``array`` as a ``.npy`` file (C order, no pickles) to ``path``, atomically and durably."""
    with atomic_file(path, mode) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def remove_partial_files(root: Path) -> int:
    """Delete temporary files a crash left under ``root``; return how many.

    They were never acknowledged to a sender, so nothing is lost.
    """
    removed = 0
    if not root.is_dir():
        return 0
    for temp in root.rglob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed

"""The instance spool: every acknowledged instance, as the sender encoded it.

Layout: ``data_dir/spool/<study_uid>/<series_uid>/<sop_instance_uid>.dcm``,
each a DICOM Part 10 file in the sender's transfer syntax. The three path
components are validated UIDs (digits and dots only), so a hostile UID can
never name a path outside the spool.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import structlog

from ct2pet_node.domain.uids import require_uid
from ct2pet_node.spool.atomic import (
    atomic_write,
    check_free_space,
    ensure_private_dir,
    remove_partial_files,
)

log = structlog.get_logger(__name__)

SPOOL_DIR_NAME = "spool"


class InstanceSpool:
    """Atomic, durable storage of received instances under ``data_dir/spool``.

    Parameters
    ----------
    data_dir : Path
        The node's data directory (``[node] data_dir``); created 0700 if missing.
    min_free_mb : int
        Free-space watermark, MiB: a write that would go below it raises
        :class:`~ct2pet_node.errors.OutOfSpace`.
    """

    def __init__(self, data_dir: Path, min_free_mb: int) -> None:
        self.data_dir = ensure_private_dir(data_dir)
        self.root = ensure_private_dir(self.data_dir / SPOOL_DIR_NAME)
        self.min_free_mb = min_free_mb

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; raises InputError when a UID is not a valid UID."""
        study = require_uid(study_uid, "StudyInstanceUID")
        series = require_uid(series_uid, "SeriesInstanceUID")
        sop = require_uid(sop_instance_uid, "SOPInstanceUID")
        return self.root / study / series / f"{sop}.dcm"

    def check_space(self, incoming_bytes: int) -> None:
        """Raise OutOfSpace when ``incoming_bytes`` more would cross the watermark."""
        check_free_space(self.root, self.min_free_mb, incoming_bytes)

    def store(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        chunks: Iterable[bytes],
        size: int,
    ) -> Path:
        """Write one instance atomically and durably; return its path.

        Parameters
        ----------
        chunks : iterable of bytes
            The Part 10 file, in pieces (preamble and meta, then the data set),
            so a large instance is not copied into one buffer first.
        size : int
            Total bytes of ``chunks``, for the free-space check.

        Raises
        ------
        InputError
            A UID is not a valid DICOM UID.
        OutOfSpace
            The data directory is at its watermark.
        StorageError
            The file could not be written.
        """
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        self.check_space(size)
        ensure_private_dir(path.parent)
        atomic_write(path, chunks)
        return path

    def sweep_partial_files(self) -> int:
        """Remove temporary files left by a crash mid-write (never acknowledged); return how many."""
        removed = remove_partial_files(self.root)
        if removed:
            log.info("spool_partial_files_removed", count=removed)
        return removed

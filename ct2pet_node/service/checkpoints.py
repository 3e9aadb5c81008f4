"""The engine's checkpoints: each finished chunk of a job's translation, one file under work/<job>/.

A stop or a crash loses at most the chunk in flight: the next attempt, local
or on a cluster, reads back the chunks that are there and translates the
rest. A file is named ``<key>-<START>-<STOP>.npy`` (slices START..STOP-1 of
the model grid); the key makes a checkpoint count only for the same model,
sampling, series and model grid, so a `jobs rerun` with other settings starts
afresh instead of mixing two translations.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import structlog

from ct2pet_node.domain.model_grid import GridMapping
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import EngineError
from ct2pet_node.service.synthesis import Sampling
from ct2pet_node.spool.atomic import atomic_write_npy, ensure_private_dir

log = structlog.get_logger(__name__)


def chunk_ranges(count: int, chunk_slices: int) -> list[range]:
    """Slices 0..count-1 in chunks of ``chunk_slices`` (the last one shorter)."""
    return [range(start, min(start + chunk_slices, count)) for start in range(0, count, chunk_slices)]


def checkpoint_key(
    model_id: str, sampling: Sampling, ct: CtVolume, mapping: GridMapping, chunk_slices: int
) -> str:
    """What a checkpoint must have been made with to be reused, as 16 hex digits."""
    # The text is what nodes already on disk hashed: changing it would orphan their checkpoints.
    text = (
        f"{model_id}|{sampling}|{ct.hu.shape}|{ct.series_uid}|{chunk_slices}"
        f"|{mapping.op}|{mapping.rows}|{mapping.columns}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JobCheckpoints:
    """The finished chunks of one job's translation, in ``work_dir`` (created, private)."""

    def __init__(self, job_id: int, work_dir: Path, key: str) -> None:
        self.job_id = job_id
        self.work_dir = ensure_private_dir(work_dir)
        self.key = key

    def path(self, chunk: range) -> Path:
        return self.work_dir / f"{self.key}-{chunk.start:05d}-{chunk.stop:05d}.npy"

    def load(self, chunk: range) -> np.ndarray | None:
        """The chunk's values when it was checkpointed, else None."""
        path = self.path(chunk)
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def save(self, chunk: range, values: np.ndarray) -> None:
        """Checkpoint a translated chunk; refuses values that are not all finite."""
        if not np.all(np.isfinite(values)):
            raise EngineError(
                f"the engine produced NaN or infinite values for slices {chunk.start}..{chunk.stop - 1}"
            )
        atomic_write_npy(self.path(chunk), values)
        log.info("chunk_checkpointed", job_id=self.job_id, first_slice=chunk.start, slices=len(chunk))


def checkpointed_slices(work_root: Path, job_id: int) -> int:
    """Slices the engine has checkpointed for ``job_id`` under ``work_root`` (names end ``-START-STOP.npy``)."""
    done = 0
    for checkpoint in (work_root / str(job_id)).glob("*-*-*.npy"):
        start, stop = checkpoint.stem.rsplit("-", 2)[1:]
        if start.isdigit() and stop.isdigit():
            done += int(stop) - int(start)
    return done

"""``convert --recursive``: every qualified series of an archive translated once, resumably.

Layout: ``OUT_DIR/<study UID>/<series UID>/<kind>/`` (the node's writer),
``OUT_DIR/summary.json`` and ``OUT_DIR/summary.txt``. A series is written
into ``<series UID>.partial/``, its completion marker
(:data:`MARKER_NAME`) goes in last, and the folder is then renamed into
place: a ``<series UID>/`` folder with a marker is a finished series,
anything else is redone from scratch. A series is finished only for the
model, sampling and output settings its marker names; other settings redo
it. Output UIDs derive from the CT series and the model, so a redone series
gets the UIDs the interrupted run would have given.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import structlog

from ct2pet_node.config import Config
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import build_ct_volume
from ct2pet_node.domain.uids import SeriesUid
from ct2pet_node.errors import Ct2PetError, EngineUnavailable, InputError, SeriesRefused
from ct2pet_node.service.archive import (
    ArchiveScan,
    ArchiveSummary,
    PlannedSeries,
    SeriesOutcome,
    SeriesState,
    plan_series,
    scan_archive,
    without_paths,
)
from ct2pet_node.service.convert import convert_volume
from ct2pet_node.service.synthesis import Sampling, WrittenSeries
from ct2pet_node.service.translator import Translator
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_write, atomic_write_json, fsync_dir

log = structlog.get_logger(__name__)

MARKER_NAME = "converted.json"
PARTIAL_SUFFIX = ".partial"
SUMMARY_JSON = "summary.json"
SUMMARY_TEXT = "summary.txt"
# How long to wait for a Ray cluster to connect before giving up: its driver's own start limit, and a little.
ENGINE_WAIT_SECONDS = 330.0
ENGINE_POLL_SECONDS = 0.5


class ArchiveProgress(Protocol):
    """Where the run reports its slices: ``begin`` once with the total, then ``update`` with slices done."""

    def begin(self, total_slices: int) -> None: ...

    def update(self, done_slices: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ArchiveTarget:
    """Where the results go, and what makes a written series count as finished."""

    out_dir: Path
    settings: dict[str, object]

    def series_dir(self, planned: PlannedSeries) -> Path:
        return self.out_dir / planned.found.study_uid / planned.found.series_uid

    def relative(self, planned: PlannedSeries) -> str:
        return f"{planned.found.study_uid}/{planned.found.series_uid}"

    def is_finished(self, series_dir: Path) -> bool:
        """Whether ``series_dir`` holds a complete series written with these settings."""
        try:
            marker = json.loads((series_dir / MARKER_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("settings") == self.settings


def output_settings(config: Config, translator: Translator, sampling: Sampling) -> dict[str, object]:
    """What a finished series' marker must match for it to be kept: model, sampling, output kinds and grid."""
    return {
        "model_id": translator.model_id,
        "steps": sampling.steps,
        "eta": sampling.eta,
        "seed": sampling.seed,
        "series": list(config.output.series),
        "grid": config.output.grid,
    }


def engine_label(config: Config) -> str:
    engine = config.engine
    return f"ray {engine.ray.address}" if engine.backend == "ray" else f"local {engine.device}"


def convert_archive(
    config: Config,
    in_dir: Path,
    out_dir: Path,
    translator: Translator,
    progress: ArchiveProgress | None = None,
) -> ArchiveSummary:
    """Convert every qualified CT series under ``in_dir`` once; see the module docstring.

    Refusals and failures are in the summary, not raised; the summary files
    are rewritten after every series, so they show how far a run got.

    Raises
    ------
    InputError
        No DICOM image under ``in_dir``.
    EngineUnavailable
        The Ray cluster cannot be reached (``fallback = "wait"``); finished
        series stay finished and a rerun resumes.
    """
    scan = scan_archive(in_dir, read_slice_header, exclude=out_dir)
    if not scan.series:
        raise InputError(
            f"no DICOM image found under {in_dir} ({scan.not_dicom} files not DICOM, {scan.not_image} "
            "DICOM but not images); give the folder that holds the studies"
        )
    sampling = Sampling.for_model(config.engine, translator.default_steps, translator.default_eta)
    target = ArchiveTarget(out_dir, output_settings(config, translator, sampling))
    planned = plan_series(scan.series, config.routing)
    outcomes = {p.found.series_uid: _first_outcome(p, target) for p in planned}
    to_convert = [p for p in planned if outcomes[p.found.series_uid].state is SeriesState.PENDING]
    summary = _summary(config, translator, scan, outcomes)
    write_summary(out_dir, summary)
    if progress is not None:
        progress.begin(sum(p.slices for p in to_convert))
    if to_convert:
        wait_for_engine(translator)
    done = 0
    for series in to_convert:
        outcome = _convert_one(config, series, translator, sampling, target, progress, done)
        done += series.slices
        if progress is not None:
            progress.update(done)
        outcomes[series.found.series_uid] = outcome
        summary = _summary(config, translator, scan, outcomes)
        write_summary(out_dir, summary)
    return summary


def _first_outcome(planned: PlannedSeries, target: ArchiveTarget) -> SeriesOutcome:
    found = planned.found
    outcome = SeriesOutcome(
        found.series_uid, found.study_uid, found.files, planned.slices, planned.state, planned.reason
    )
    if planned.state is not SeriesState.PENDING:
        log.info("series_not_converted", series_uid=found.series_uid, state=planned.state.value)
        return outcome
    if target.is_finished(target.series_dir(planned)):
        log.info("series_already_converted", series_uid=found.series_uid)
        return replace(outcome, state=SeriesState.ALREADY_CONVERTED, output_dir=target.relative(planned))
    return outcome


def _convert_one(
    config: Config,
    series: PlannedSeries,
    translator: Translator,
    sampling: Sampling,
    target: ArchiveTarget,
    progress: ArchiveProgress | None,
    done_before: int,
) -> SeriesOutcome:
    found = series.found
    outcome = SeriesOutcome(found.series_uid, found.study_uid, found.files, series.slices, SeriesState.FAILED)

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress.update(done_before + series.slices * done / max(total, 1))

    try:
        written = _write_series(config, series, translator, sampling, target, report)
    except EngineUnavailable:
        raise
    except SeriesRefused as refusal:
        # The pixels refused what the headers accepted (a truncated or undecodable slice).
        reason = without_paths(str(refusal), found.headers)
        log.warning("series_refused", series_uid=found.series_uid, reason=reason)
        return replace(outcome, state=SeriesState.REFUSED, reason=reason)
    except Ct2PetError as error:
        reason = without_paths(str(error), found.headers)
        log.warning("series_failed", series_uid=found.series_uid, reason=reason)
        return replace(outcome, reason=reason)
    except MemoryError:
        reason = "out of memory while translating; lower the batch size or free memory, then rerun"
        log.error("series_failed", series_uid=found.series_uid, reason=reason)
        return replace(outcome, reason=reason)
    except Exception as error:
        log.exception("series_failed", series_uid=found.series_uid)
        reason = without_paths(f"internal error: {type(error).__name__}: {error}", found.headers)
        return replace(outcome, reason=reason)
    files = sum(len(w.paths) for w in written)
    log.info("series_converted", series_uid=found.series_uid, slices=series.slices, files=files)
    return replace(outcome, state=SeriesState.CONVERTED, output_dir=target.relative(series))


def _write_series(
    config: Config,
    series: PlannedSeries,
    translator: Translator,
    sampling: Sampling,
    target: ArchiveTarget,
    progress: Callable[[int, int], None],
) -> Sequence[WrittenSeries]:
    """Translate and write into ``<series>.partial/``, mark it finished, and rename it into place."""
    final = target.series_dir(series)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    # What an interrupted run left is incomplete by definition: start from nothing.
    shutil.rmtree(partial, ignore_errors=True)
    try:
        written = _write_partial(config, series, translator, sampling, target, progress, partial)
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)  # finished with other settings, or without a marker: replaced whole
    os.replace(partial, final)
    fsync_dir(final.parent)
    return [replace(w, paths=tuple(final / p.relative_to(partial) for p in w.paths)) for w in written]


def _write_partial(
    config: Config,
    series: PlannedSeries,
    translator: Translator,
    sampling: Sampling,
    target: ArchiveTarget,
    progress: Callable[[int, int], None],
    partial: Path,
) -> list[WrittenSeries]:
    assert series.qualified is not None
    ct = build_ct_volume(series.qualified)
    first = ct.sources[0].sop_instance_uid
    reference = next(h.path for h in series.found.headers if h.sop_instance_uid == first)
    written = convert_volume(config, ct, reference, translator, sampling, partial, progress=progress)
    marker = {
        "series_uid": series.found.series_uid,
        "study_uid": series.found.study_uid,
        "slices": series.slices,
        "settings": target.settings,
        "outputs": [{"kind": w.kind, "series_uid": w.series_uid, "files": len(w.paths)} for w in written],
        "written_at": time.time(),
    }
    # The marker goes in last: a folder holding it holds every file of the series.
    atomic_write_json(partial / MARKER_NAME, marker, mode=UMASK_FILE_MODE, indent=2)
    fsync_dir(partial)
    return written


def wait_for_engine(translator: Translator, timeout: float = ENGINE_WAIT_SECONDS) -> None:
    """Block until a translator that may be away (a Ray cluster) can take work, or raise EngineUnavailable."""
    ready = getattr(translator, "ready", None)
    if ready is None:
        return
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            status = getattr(translator, "cluster_status", None)
            why = status(0) if status is not None else "the engine is not ready"
            raise EngineUnavailable(
                f"{why}; gave up after {timeout:.0f} s: start the cluster or check [engine.ray] address, "
                "then run the same command again (finished series are kept)"
            )
        time.sleep(ENGINE_POLL_SECONDS)


def _summary(
    config: Config, translator: Translator, scan: ArchiveScan, outcomes: Mapping[SeriesUid, SeriesOutcome]
) -> ArchiveSummary:
    ordered = tuple(outcomes[s.series_uid] for s in scan.series)
    return ArchiveSummary(translator.model_id, engine_label(config), scan.not_dicom, scan.not_image, ordered)


def write_summary(out_dir: Path, summary: ArchiveSummary) -> None:
    """``summary.json`` and ``summary.txt`` under ``out_dir``, each replaced atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / SUMMARY_JSON, summary.as_json(), mode=UMASK_FILE_MODE, indent=2)
    atomic_write(out_dir / SUMMARY_TEXT, summary.as_text().encode("utf-8"), mode=UMASK_FILE_MODE)

"""The engine worker: the thread(s) that take WAITING jobs and turn them into result files.

For each job: re-read the series' headers, qualify and build the HU volume,
translate it in chunks of slices (each finished chunk checkpointed to
``work/<job>/`` under data_dir, so a stop or a crash loses at most one chunk),
write every configured output kind into ``data_dir/results/<job>/<kind>/``
and hand the files to the sender. Nothing is sent before every file of the
job is written, so nothing half-written ever leaves the node.

The worker never imports torch: it is given a :class:`Translator`, built by
the composition root from :func:`ct2pet_node.engine.load_pipeline`.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import structlog

from ct2pet_node.config import Config
from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.dicom.volume import build_ct_volume
from ct2pet_node.domain.jobs import Job, JobDetails, JobState
from ct2pet_node.domain.model_grid import GridMapping
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import Ct2PetError, EngineUnavailable, SeriesRefused
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.service.checkpoints import JobCheckpoints, checkpoint_key, chunk_ranges
from ct2pet_node.service.engine_threads import EngineThreads, RunningJobs
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.progress import ProgressBoard
from ct2pet_node.service.queue import EngineQueue
from ct2pet_node.service.synthesis import Sampling, WrittenSeries, map_to_model, write_outputs
from ct2pet_node.service.translator import SpreadsChunks, Translator
from ct2pet_node.spool.jobstore import JobStore

log = structlog.get_logger(__name__)

# Slices per checkpoint: small enough that a stop loses little work on a CPU,
# large enough that a GPU batch is not starved.
CHUNK_SLICES = 16
# How long the engine idles before it looks in the job store for WAITING jobs nobody queued, seconds.
IDLE_POLL_SECONDS = 5.0


class StopRequested(Exception):
    """Raised inside a translation when the node is stopping; the job goes back to WAITING."""


class EngineWorker:
    """Owns the engine thread; see the module docstring."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        queue: EngineQueue,
        translator: Translator,
        submit: Callable[[int, Sequence[Path]], bool],
        metrics: NodeMetrics,
        *,
        chunk_slices: int = CHUNK_SLICES,
        idle_poll_seconds: float = IDLE_POLL_SECONDS,
        progress: ProgressBoard | None = None,
        jobs_in_flight: int = 1,
    ) -> None:
        if chunk_slices < 1:
            raise ValueError(f"chunk_slices must be at least 1, got {chunk_slices}")
        self.config = config
        self.chunk_slices = chunk_slices
        self.idle_poll_seconds = idle_poll_seconds
        self.store = store
        self.queue = queue
        self.translator = translator
        self._submit = submit
        self.metrics = metrics
        self.progress = progress or ProgressBoard()
        self._stop = threading.Event()
        # One thread per job in flight (service.engine_threads): 1 for a local engine's one device.
        self._threads = EngineThreads(self._run, jobs_in_flight)
        self.running = RunningJobs()
        self.sampling = Sampling.for_model(config.engine, translator.default_steps, translator.default_eta)

    @property
    def current_job(self) -> int | None:
        """The lowest-numbered job being translated, or None; :attr:`running` has them all."""
        ids = self.running.ids()
        return ids[0] if ids else None

    @property
    def results_root(self) -> Path:
        return self.config.node.data_dir / "results"

    @property
    def work_root(self) -> Path:
        return self.config.node.data_dir / "work"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._threads.start()

    def request_stop(self) -> None:
        """Ask the current translation to checkpoint at its next chunk boundary; returns at once."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask every translation to checkpoint and stop; True when every engine thread ended."""
        self.request_stop()
        return self._threads.join(timeout)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if not self._engine_ready():
                # A cluster engine that is down: jobs stay WAITING, their queue hints stay queued.
                self._stop.wait(1.0)
                continue
            job_id = self.queue.get(timeout=0.5)
            if job_id is None and time.monotonic() - idle_since >= self.idle_poll_seconds:
                # The queue holds hints only: a job made WAITING by another process (`jobs retry`)
                # or whose hint was lost is found here, in the store, the source of truth.
                idle_since = time.monotonic()
                job_id = self._oldest_waiting()
            if job_id is None:
                continue
            try:
                self.process(job_id)
            except Exception:
                # process() files every expected failure under the job; reaching here is a bug,
                # and the thread must live on to serve the next job.
                log.exception("engine_worker_crashed", job_id=job_id)
            idle_since = time.monotonic()

    def _engine_ready(self) -> bool:
        # Only a cluster translator (ct2pet_node.cluster) can be unready; the local pipeline always is.
        ready = getattr(self.translator, "ready", None)
        return True if ready is None else bool(ready())

    def _oldest_waiting(self) -> int | None:
        try:
            waiting = self.store.list_jobs([JobState.WAITING])
        except Ct2PetError as error:
            log.warning("waiting_jobs_unreadable", reason=str(error))
            return None
        return waiting[0].id if waiting else None

    # -- one job -----------------------------------------------------------------------------

    def process(self, job_id: int) -> JobState | None:
        """Run one job to SENDING/DONE, REFUSED or FAILED; None when it was not WAITING."""
        job = self.store.claim(job_id)
        if job is None:
            return None
        self.running.add(job.id)
        log.info("generation_started", job_id=job.id, series_uid=job.series_uid, attempt=job.attempts)
        try:
            return self._process(job)
        except StopRequested:
            self._settle(job, JobState.WAITING, "node stopped; resumes")
            log.info("generation_checkpointed", job_id=job.id)
            return JobState.WAITING
        except EngineUnavailable as error:
            # Its engine cluster went away: finished chunks are checkpointed, the job waits for it.
            log.warning("generation_waiting", job_id=job.id, reason=str(error))
            return self._settle(job, JobState.WAITING, str(error))
        except SeriesRefused as error:
            # Re-qualification on the spooled files refused what the router accepted (files gone
            # or changed since): same outcome as a refusal at the router.
            log.warning("series_refused", job_id=job.id, series_uid=job.series_uid, reason=str(error))
            return self._settle(job, JobState.REFUSED, str(error))
        except Ct2PetError as error:
            log.warning("generation_failed", job_id=job.id, reason=str(error))
            return self._settle(job, JobState.FAILED, str(error))
        except MemoryError:
            reason = "out of memory while translating; lower the batch size or free memory, then retry"
            log.error("generation_failed", job_id=job.id, reason=reason)
            return self._settle(job, JobState.FAILED, reason)
        except Exception as error:
            log.exception("generation_failed", job_id=job.id)
            return self._settle(job, JobState.FAILED, f"internal error: {type(error).__name__}: {error}")
        finally:
            self.progress.translation_ended(job.id)
            self.running.discard(job.id)

    def _settle(
        self, job: Job, state: JobState, reason: str | None, details: JobDetails | None = None
    ) -> JobState:
        """Move the claimed job out of PROCESSING; the state it is in afterwards."""
        moved = self.store.transition(job.id, JobState.PROCESSING, state, reason, details=details)
        if moved is None:
            # Nothing else moves a PROCESSING job while its engine lives; should it happen, the
            # store's state stands and the worker must not claim an outcome it did not write.
            current = self.store.get_job(job.id)
            log.error("generation_outcome_not_written", job_id=job.id, outcome=state.value)
            return state if current is None else current.state
        return state

    def _process(self, job: Job) -> JobState:
        # The claim stamped updated_at: from the last instance to here the job waited.
        phases = [("waiting", max(0.0, job.updated_at - job.last_instance_at))]
        loading = time.monotonic()
        ct = self._load_volume(job)
        phases.append(("load", time.monotonic() - loading))
        mapping = map_to_model(ct, self.translator.frame)
        log.info(
            "model_grid_mapped", job_id=job.id, geometry=mapping.describe(), scale=round(mapping.scale, 4)
        )
        started = time.monotonic()
        values, reused = self._translate(job.id, ct, mapping)
        elapsed = time.monotonic() - started
        translated = ct.hu.shape[0] - reused
        self.metrics.translated(elapsed, translated)
        log.info(
            "generation_finished",
            job_id=job.id,
            slices=ct.hu.shape[0],
            reused_slices=reused,
            seconds=round(elapsed, 2),
        )
        phases.append(("translate", elapsed))
        writing = time.monotonic()
        written = self._write(job, ct, values, mapping)
        phases.append(("write", time.monotonic() - writing))
        self.store.set_output_series_uids(job.id, [series.series_uid for series in written])
        paths = [path for series in written for path in series.paths]
        results_dir = self.results_root / str(job.id)
        shutil.rmtree(self.work_root / str(job.id), ignore_errors=True)
        found = JobDetails(
            results_dir=results_dir,
            geometry=mapping.describe(),
            sampling=f"steps {self.sampling.steps}, eta {self.sampling.eta:g}, seed {self.sampling.seed}",
            phase_seconds=tuple((name, round(seconds, 3)) for name, seconds in phases),
            written_at=time.time(),
        )
        if not self.config.destinations:
            delivery = "no destination configured: results stay in results_dir"
            return self._settle(job, JobState.DONE, None, dataclasses.replace(found, delivery=delivery))
        # SENDING is persisted before the files reach the outbox: the sender may deliver them and
        # move the job to DONE before submit() even returns. A crash in between is settled at the
        # next start by service.recovery.
        state = self._settle(job, JobState.SENDING, None, found)
        if state is JobState.SENDING and not self._submit(job.id, paths):
            self.store.transition(
                job.id,
                JobState.SENDING,
                JobState.DONE,
                details=JobDetails(delivery="no destination took the files: results stay in results_dir"),
            )
            return JobState.DONE
        return state

    def _load_volume(self, job: Job) -> CtVolume:
        headers = [read_slice_header(record.path) for record in self.store.instances_of(job.series_uid)]
        return build_ct_volume(qualify_series(headers, self.config.routing))

    def _translate(self, job_id: int, ct: CtVolume, mapping: GridMapping) -> tuple[np.ndarray, int]:
        """The PET values (z, S, S) on the model grid, and how many slices came from checkpoints."""
        if isinstance(self.translator, SpreadsChunks):
            return self._translate_spread(self.translator, job_id, ct, mapping)
        region = mapping.to_region(ct.hu)
        count, size = region.shape[0], mapping.matrix
        checkpoints = self._checkpoints(job_id, ct, mapping)
        out = np.empty((count, size, size), dtype=np.float32)
        reused = 0
        self.progress.translation_started(job_id, count)
        for chunk in chunk_ranges(count, self.chunk_slices):
            start, stop = chunk.start, chunk.stop
            saved = checkpoints.load(chunk)
            if saved is not None:
                out[start:stop] = saved
                reused += stop - start
                self.progress.slices_done(job_id, stop, translated=False)
                continue
            if self._stop.is_set():
                raise StopRequested
            out[start:stop] = self.translator.translate_region(
                region[start:stop],
                kvp=ct.kvp,
                steps=self.sampling.steps,
                eta=self.sampling.eta,
                seed=self.sampling.seed,
                first_slice_index=start,
                progress=self._chunk_progress(job_id, start, stop),
            )
            checkpoints.save(chunk, out[start:stop])
        return out, reused

    def _chunk_progress(self, job_id: int, start: int, stop: int) -> Callable[[int, int], None]:
        """The translator's ``progress(units done, units)`` for slices start..stop, as slices of the job."""

        def report(done: int, total: int) -> None:
            self.progress.slices_done(job_id, start + (stop - start) * done / max(total, 1))

        return report

    def _translate_spread(
        self, translator: SpreadsChunks, job_id: int, ct: CtVolume, mapping: GridMapping
    ) -> tuple[np.ndarray, int]:
        """:meth:`_translate` on a translator that runs many chunks at once (a Ray cluster's actors).

        Same checkpoints and chunk boundaries as the local path, so either may
        resume the other's job; chunks arrive in the order they finish.
        """
        region = mapping.to_region(ct.hu)
        count, size = region.shape[0], mapping.matrix
        checkpoints = self._checkpoints(job_id, ct, mapping)
        out = np.empty((count, size, size), dtype=np.float32)
        missing: list[range] = []
        for chunk in chunk_ranges(count, self.chunk_slices):
            saved = checkpoints.load(chunk)
            if saved is not None:
                out[chunk.start : chunk.stop] = saved
            else:
                missing.append(chunk)
        reused = count - sum(len(chunk) for chunk in missing)
        self.progress.translation_started(job_id, count)
        self.progress.slices_done(job_id, reused, translated=False)
        if missing and self._stop.is_set():
            raise StopRequested
        finished = translator.translate_chunks(
            region,
            missing,
            kvp=ct.kvp,
            steps=self.sampling.steps,
            eta=self.sampling.eta,
            seed=self.sampling.seed,
        )
        finished_slices = 0
        try:
            for done, (chunk, values) in enumerate(finished, start=1):
                checkpoints.save(chunk, values)
                out[chunk.start : chunk.stop] = values
                finished_slices += len(chunk)
                self.progress.slices_done(job_id, reused + finished_slices)
                if self._stop.is_set() and done < len(missing):
                    raise StopRequested
        finally:
            finished.close()
        return out, reused

    def _checkpoints(self, job_id: int, ct: CtVolume, mapping: GridMapping) -> JobCheckpoints:
        key = checkpoint_key(self.translator.model_id, self.sampling, ct, mapping, self.chunk_slices)
        return JobCheckpoints(job_id, self.work_root / str(job_id), key)

    def _write(self, job: Job, ct: CtVolume, values: np.ndarray, mapping: GridMapping) -> list[WrittenSeries]:
        first_source = ct.sources[0].sop_instance_uid
        records = self.store.instances_of(job.series_uid)
        reference = next(r.path for r in records if r.sop_instance_uid == first_source)
        # Files are named by their SOP Instance UID: after `jobs rerun` with another model, what the
        # last run wrote would otherwise stay beside the new series and be resent with it.
        shutil.rmtree(self.results_root / str(job.id), ignore_errors=True)
        return write_outputs(
            ct,
            values,
            mapping,
            model_id=self.translator.model_id,
            output_units=self.translator.output_units,
            sampling=self.sampling,
            output=self.config.output,
            reference_header=reference,
            out_root=self.results_root / str(job.id),
            preview_title=f"job {job.id} · model {self.translator.model_id}",
        )

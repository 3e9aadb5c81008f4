"""The sender thread: drains the outbox to the destinations, with retries.

It sleeps until the earliest due entry, a wake-up (new work enqueued in this
process) or the poll interval (work enqueued by another process, such as
``ct2pet-node jobs retry``), whichever comes first. For each due entry it
sends the files not yet acknowledged over one association, lets
:func:`~ct2pet_node.routing.delivery.decide_attempt` judge the results,
records them, and tells the job's owner when a job is fully delivered or
dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from ct2pet_node.config import Destination
from ct2pet_node.errors import Ct2PetError, DeliveryError
from ct2pet_node.net import scu, stow
from ct2pet_node.routing.delivery import (
    DEFAULT_SCHEDULE,
    AttemptDecision,
    DeliveryOutcome,
    EntryState,
    InstanceResult,
    RetrySchedule,
    TransferProblem,
    decide_attempt,
)
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.progress import ProgressBoard
from ct2pet_node.spool.outbox import Outbox, OutboxEntry

log = structlog.get_logger(__name__)


class SendFunction(Protocol):
    """Sends files to one destination: over one association (:func:`ct2pet_node.net.scu.send_files`) or
    in STOW-RS batches (:func:`ct2pet_node.net.stow.send_files`)."""

    def __call__(
        self, destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]: ...


def _count_sent(progress: ProgressBoard | None) -> Callable[[InstanceResult], None]:
    """Each acknowledged instance, told to ``progress`` as it is acknowledged (not at the end of a batch)."""

    def sent(result: InstanceResult) -> None:
        if progress is not None and result.outcome.acknowledged:
            progress.instance_sent()

    return sent


def scu_sender(timeouts: scu.ScuTimeouts, progress: ProgressBoard | None = None) -> SendFunction:
    """The real send function with the given timeouts; each acknowledged instance goes to ``progress``."""
    sent = _count_sent(progress)

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        return scu.send_files(
            destination, calling_ae, paths, timeouts=timeouts, cancel=cancel, on_result=sent
        )

    return send


def stow_sender(limits: stow.StowLimits, progress: ProgressBoard | None = None) -> SendFunction:
    """STOW-RS to a DICOMweb destination in batches within ``limits``; acknowledged instances go to ``progress``."""
    sent = _count_sent(progress)

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        # An HTTP request names no calling AE title: the endpoint's credentials say who we are.
        return stow.send_files(destination, paths, limits, cancel=cancel, on_result=sent)

    return send


def peer_sender(by_type: Mapping[str, SendFunction]) -> SendFunction:
    """The one place a destination's ``type`` ("dimse", "dicomweb") picks how it is sent to."""

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        chosen = by_type.get(destination.type)
        if chosen is None:
            raise DeliveryError(f"destination {destination.name}: no sender for type {destination.type!r}")
        return chosen(destination, calling_ae, paths, cancel)

    return send


def default_sender(progress: ProgressBoard | None = None) -> SendFunction:
    """DIMSE and DICOMweb destinations, with default timeouts and batches."""
    return peer_sender(
        {
            "dimse": scu_sender(scu.ScuTimeouts(), progress),
            "dicomweb": stow_sender(stow.StowLimits(), progress),
        }
    )


def counting_sender(send: SendFunction, metrics: NodeMetrics) -> SendFunction:
    """``send`` that also counts instances delivered and failed attempts, by destination.

    A batch cut short by the node stopping (every result CANCELLED) is not a failure.
    """

    def counted(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        results = send(destination, calling_ae, paths, cancel)
        acknowledged = sum(1 for result in results if result.outcome.acknowledged)
        failed = any(
            r.outcome is not DeliveryOutcome.CANCELLED and not r.outcome.acknowledged for r in results
        )
        metrics.attempt_finished(destination.name, acknowledged, failed)
        return results

    return counted


class Sender:
    """Owns the sender thread.

    Parameters
    ----------
    outbox : Outbox
    destinations : sequence of Destination
        Where every job's results go.
    calling_ae : str
        Our AE title.
    send : SendFunction, optional
        Defaults to :func:`default_sender`: the storage SCU or STOW-RS, as each destination's type says.
    schedule : RetrySchedule
    on_job_delivered : callable(job_id), optional
        Called once every destination of a job has acknowledged every file.
    on_job_dead : callable(job_id, reason), optional
        Called when an entry of the job is dead-lettered.
    poll_seconds : float
        Longest sleep between looks at the outbox, seconds.
    clock : callable returning seconds since the epoch
    progress : ProgressBoard, optional
        Where each attempt's instances sent of total are shown while it runs.
    """

    def __init__(
        self,
        outbox: Outbox,
        destinations: Sequence[Destination],
        calling_ae: str,
        *,
        send: SendFunction | None = None,
        schedule: RetrySchedule = DEFAULT_SCHEDULE,
        on_job_delivered: Callable[[int], None] | None = None,
        on_job_dead: Callable[[int, str], None] | None = None,
        poll_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        progress: ProgressBoard | None = None,
    ) -> None:
        self.outbox = outbox
        self.progress = progress or ProgressBoard()
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self._send = send or default_sender(self.progress)
        self.schedule = schedule
        self._on_delivered = on_job_delivered
        self._on_dead = on_job_dead
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()  # also the cancel flag handed to the send function
        self._thread: threading.Thread | None = None

    # -- feeding ---------------------------------------------------------------

    def submit(self, job_id: int, paths: Sequence[Path]) -> bool:
        """Queue a job's result files for every destination and wake the thread.

        Returns
        -------
        bool
            False when no destination is configured: nothing was queued and
            the results stay where they are (the caller says so in the job).
        """
        if not self.destinations:
            return False
        now = self._clock()
        for name in self.destinations:
            self.outbox.enqueue(job_id, name, paths, now)
        log.info("delivery_queued", job_id=job_id, files=len(paths), destinations=sorted(self.destinations))
        self.wake()
        return True

    def wake(self) -> None:
        """Look at the outbox now (after enqueue or a retry in this process)."""
        self._wake.set()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the sender is already started")
        self.outbox.recover(self._clock())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the instance in flight; the association is released, not dropped.

        Returns
        -------
        bool
            Whether the thread ended within ``timeout`` seconds.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if ended:
            self._thread = None
        return ended

    def _run(self) -> None:
        log.info("sender_started", destinations=sorted(self.destinations))
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:
                # A broken disk or a bug must not kill delivery for good: log, back off, go on.
                log.exception("sender_loop_failed")
            self._wake.wait(self._sleep_seconds())
        log.info("sender_stopped")

    def _sleep_seconds(self) -> float:
        try:
            due = self.outbox.next_due_at()
        except Ct2PetError:
            return self.poll_seconds
        if due is None:
            return self.poll_seconds
        return min(max(due - self._clock(), 0.0), self.poll_seconds)

    # -- one pass --------------------------------------------------------------

    def run_once(self) -> int:
        """Attempt every due entry once; returns how many were attempted."""
        attempted = 0
        for entry in self.outbox.due(self._clock()):
            if self._stop.is_set():
                break
            self._attempt(entry)
            attempted += 1
        return attempted

    def _attempt(self, entry: OutboxEntry) -> None:
        destination = self.destinations.get(entry.destination)
        paths = entry.undelivered_paths
        now = self._clock()
        if destination is None:
            decision = AttemptDecision(
                EntryState.DEAD,
                entry.attempts,
                None,
                f"destination {entry.destination!r} is no longer configured; "
                "add it back to [[destinations]] and run `ct2pet-node jobs retry`",
            )
            results: list[InstanceResult] = []
        elif not paths:  # all acknowledged before a crash cut the bookkeeping short
            decision = AttemptDecision(EntryState.DELIVERED, entry.attempts, None, None)
            results = []
        else:
            self.outbox.mark_sending(entry.job_id, entry.destination, now)
            self._show_delivery(entry.job_id)
            try:
                results = self._send_guarded(destination, paths)
            finally:
                self.progress.delivery_ended(entry.job_id)
            now = self._clock()
            decision = decide_attempt(results, entry.attempts, now, self.schedule)
            self._log_results(entry, results, decision)
        self.outbox.mark_results(entry.job_id, entry.destination, results, decision, now)
        self._notify(entry.job_id, entry.destination, decision)

    def _show_delivery(self, job_id: int) -> None:
        """Put the job's instances sent so far, over every destination, on the progress board."""
        entries = self.outbox.entries(job_id)
        sent = sum(sum(1 for f in e.files if f.delivered) for e in entries)
        self.progress.delivery_started(job_id, sent, sum(len(e.files) for e in entries))

    def _send_guarded(self, destination: Destination, paths: Sequence[Path]) -> list[InstanceResult]:
        try:
            return self._send(destination, self.calling_ae, paths, self._stop)
        except Exception as error:
            # A bug in sending must not leave the entry "sending" forever: count it as a failed attempt.
            log.exception("send_crashed", destination=destination.name)
            detail = f"internal error while sending: {error!r}"
            return [InstanceResult(p, None, None, TransferProblem.ABORTED, detail) for p in paths]

    def _log_results(
        self, entry: OutboxEntry, results: Sequence[InstanceResult], decision: AttemptDecision
    ) -> None:
        bound = log.bind(job_id=entry.job_id, destination=entry.destination)
        for result in results:
            if result.outcome is DeliveryOutcome.WARNING:
                bound.warning(
                    "instance_stored_with_warning",
                    sop_instance_uid=result.sop_instance_uid,
                    status=f"0x{result.status or 0:04X}",
                )
        acknowledged = sum(1 for r in results if r.outcome.acknowledged)
        fields = {"sent": len(results), "acknowledged": acknowledged, "attempts": decision.attempts}
        if decision.state is EntryState.DELIVERED:
            bound.info("delivery_done", **fields)
        elif decision.state is EntryState.DEAD:
            bound.error("delivery_dead", error=decision.error, **fields)
        else:
            bound.warning(
                "send_failed", error=decision.error, next_attempt_at=decision.next_attempt_at, **fields
            )

    def _notify(self, job_id: int, destination: str, decision: AttemptDecision) -> None:
        try:
            if decision.state is EntryState.DEAD and self._on_dead is not None:
                self._on_dead(job_id, f"delivery to {destination} failed: {decision.error}")
            elif (
                decision.state is EntryState.DELIVERED
                and self._on_delivered is not None
                and self.outbox.job_state(job_id) is EntryState.DELIVERED
            ):
                self._on_delivered(job_id)
        except Exception:
            # The owner's bookkeeping failing must not stop delivery of other jobs.
            log.exception("delivery_callback_failed", job_id=job_id, destination=destination)

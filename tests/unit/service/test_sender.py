"""The sender: retries, partial re-sends, dead letters, callbacks, wake-up and stop.

The network is replaced by a scripted send function (a test double for the
SCU); the outbox is the real one in tmp_path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ct2pet_node.config import Destination
from ct2pet_node.routing.delivery import EntryState, InstanceResult, RetrySchedule, TransferProblem
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.service.sender import Sender, counting_sender, peer_sender
from ct2pet_node.spool.outbox import Outbox

PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)
ARCHIVE = Destination(name="archive", ae_title="ARCH", host="127.0.0.1", port=4243)
FAST = RetrySchedule((10.0,), max_attempts=3)

Verdict = Callable[[Destination, Path], InstanceResult]


class ScriptedSend:
    """Answers each call with the next verdict function and records what was sent."""

    def __init__(self, *verdicts: Verdict) -> None:
        self.verdicts = list(verdicts)
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(
        self, destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        self.calls.append((destination.name, [p.name for p in paths]))
        verdict = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
        return [verdict(destination, p) for p in paths]


def stored(_: Destination, path: Path) -> InstanceResult:
    return InstanceResult(path, path.stem, 0x0000, None)


def unreachable(_: Destination, path: Path) -> InstanceResult:
    return InstanceResult(path, path.stem, None, TransferProblem.UNREACHABLE, "connection refused")


def odd_ones_full(_: Destination, path: Path) -> InstanceResult:
    status = 0xA700 if int(path.stem[-1]) % 2 else 0x0000
    return InstanceResult(path, path.stem, status, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.dead: list[tuple[int, str]] = []
        self.event = threading.Event()

    def on_delivered(self, job_id: int) -> None:
        self.delivered.append(job_id)
        self.event.set()

    def on_dead(self, job_id: int, reason: str) -> None:
        self.dead.append((job_id, reason))
        self.event.set()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path)
    yield box
    box.close()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [tmp_path / f"pet-{i}.dcm" for i in range(4)]


def make_sender(
    outbox: Outbox, send: ScriptedSend, recorder: Recorder, clock: Clock, *destinations: Destination
) -> Sender:
    return Sender(
        outbox,
        destinations or (PACS,),
        "CT2PET",
        send=send,
        schedule=FAST,
        on_job_delivered=recorder.on_delivered,
        on_job_dead=recorder.on_dead,
        clock=clock,
    )


def test_no_destination_queues_nothing(outbox: Outbox, files: list[Path]) -> None:
    sender = Sender(outbox, (), "CT2PET", send=ScriptedSend(stored))
    assert sender.submit(1, files) is False
    assert outbox.entries(1) == []


def test_retry_resends_only_unacknowledged_then_delivers(outbox: Outbox, files: list[Path]) -> None:
    send, recorder, clock = ScriptedSend(odd_ones_full, stored), Recorder(), Clock()
    sender = make_sender(outbox, send, recorder, clock)
    sender.submit(1, files)

    assert sender.run_once() == 1
    (entry,) = outbox.entries(1)
    assert (entry.state, entry.attempts, entry.next_attempt_at) == (EntryState.PENDING, 1, 1010.0)
    assert recorder.delivered == []
    assert sender.run_once() == 0  # not due yet

    clock.now = 1010.0
    assert sender.run_once() == 1
    assert send.calls == [("pacs", [p.name for p in files]), ("pacs", ["pet-1.dcm", "pet-3.dcm"])]
    assert outbox.job_state(1) is EntryState.DELIVERED
    assert recorder.delivered == [1]


def test_job_is_delivered_only_when_every_destination_is(outbox: Outbox, files: list[Path]) -> None:
    def pacs_only(destination: Destination, path: Path) -> InstanceResult:
        return (stored if destination is PACS else unreachable)(destination, path)

    recorder, clock = Recorder(), Clock()
    sender = make_sender(outbox, ScriptedSend(pacs_only, stored), recorder, clock, PACS, ARCHIVE)
    sender.submit(2, files)
    sender.run_once()
    assert recorder.delivered == []
    clock.now += 10
    sender.run_once()
    assert recorder.delivered == [2]


def test_dead_after_last_retry_then_retry_replays(outbox: Outbox, files: list[Path]) -> None:
    send, recorder, clock = ScriptedSend(unreachable), Recorder(), Clock()
    sender = make_sender(outbox, send, recorder, clock)
    sender.submit(3, files)
    for _ in range(FAST.max_attempts):
        sender.run_once()
        clock.now += 10
    assert len(send.calls) == FAST.max_attempts
    ((job_id, reason),) = recorder.dead
    assert job_id == 3
    assert reason == (
        "delivery to pacs failed: gave up after 3 attempts: "
        "pet-0: unreachable (connection refused) (and 3 more)"
    )
    assert sender.run_once() == 0  # dead letters are not retried on their own

    send.verdicts = [stored]
    assert outbox.retry(3, now=clock.now) == 1
    assert sender.run_once() == 1
    assert recorder.delivered == [3]


def test_permanent_refusal_is_dead_without_retrying(outbox: Outbox, files: list[Path]) -> None:
    def refused(_: Destination, path: Path) -> InstanceResult:
        return InstanceResult(path, path.stem, 0xA900, None)

    send, recorder = ScriptedSend(refused), Recorder()
    sender = make_sender(outbox, send, recorder, Clock())
    sender.submit(4, files)
    sender.run_once()
    assert len(send.calls) == 1
    assert recorder.dead and "0xA900" in recorder.dead[0][1]


def test_removed_destination_is_dead_with_a_fix(outbox: Outbox, files: list[Path]) -> None:
    outbox.enqueue(5, "gone", files, now=0.0)
    recorder = Recorder()
    sender = make_sender(outbox, ScriptedSend(stored), recorder, Clock())
    sender.run_once()
    assert recorder.dead == [
        (
            5,
            "delivery to gone failed: destination 'gone' is no longer configured; "
            "add it back to [[destinations]] and run `ct2pet-node jobs retry`",
        )
    ]


def test_thread_wakes_on_submit_not_on_the_poll(outbox: Outbox, files: list[Path]) -> None:
    recorder = Recorder()
    sender = Sender(
        outbox,
        (PACS,),
        "CT2PET",
        send=ScriptedSend(stored),
        on_job_delivered=recorder.on_delivered,
        poll_seconds=60.0,
    )
    sender.start()
    try:
        time.sleep(0.05)  # let it fall asleep on an empty outbox
        started = time.monotonic()
        sender.submit(6, files)
        assert recorder.event.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert recorder.delivered == [6]
    finally:
        assert sender.stop(timeout=5.0)


def test_stop_cancels_the_batch_without_counting_an_attempt(outbox: Outbox, files: list[Path]) -> None:
    in_flight = threading.Event()

    def blocking_send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        in_flight.set()
        assert cancel.wait(5.0)
        first = stored(destination, paths[0])
        rest = [InstanceResult(p, p.stem, None, TransferProblem.CANCELLED) for p in paths[1:]]
        return [first, *rest]

    sender = Sender(outbox, (PACS,), "CT2PET", send=blocking_send, poll_seconds=60.0)
    sender.start()
    sender.submit(7, files)
    assert in_flight.wait(5.0)
    assert sender.stop(timeout=5.0)
    (entry,) = outbox.entries(7)
    assert (entry.state, entry.attempts) == (EntryState.PENDING, 0)
    assert entry.undelivered_paths == tuple(files[1:])


def test_a_failing_callback_does_not_stop_delivery(outbox: Outbox, files: list[Path]) -> None:
    def broken(job_id: int) -> None:
        raise RuntimeError(f"job store down for {job_id}")

    sender = Sender(
        outbox, (PACS,), "CT2PET", send=ScriptedSend(stored), on_job_delivered=broken, clock=Clock()
    )
    sender.submit(8, files[:1])
    sender.submit(9, files[1:])
    assert sender.run_once() == 2
    assert outbox.job_state(8) is outbox.job_state(9) is EntryState.DELIVERED


def test_a_crashing_send_counts_as_a_failed_attempt(outbox: Outbox, files: list[Path]) -> None:
    def crash(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        raise KeyError("bug")

    sender = Sender(outbox, (PACS,), "CT2PET", send=crash, schedule=FAST, clock=Clock())
    sender.submit(10, files)
    assert sender.run_once() == 1
    (entry,) = outbox.entries(10)
    assert (entry.state, entry.attempts) == (EntryState.PENDING, 1)
    assert (
        entry.last_error is not None and "internal error while sending: KeyError('bug')" in entry.last_error
    )


def test_the_counting_sender_counts_delivered_instances_and_failed_attempts(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    answers: list[list[InstanceResult]] = [
        [
            InstanceResult(tmp_path / "a", "1.1", 0x0000, None),
            InstanceResult(tmp_path / "b", "1.2", 0x0000, None),
        ],
        [
            InstanceResult(tmp_path / "a", "1.1", 0x0000, None),
            InstanceResult(tmp_path / "b", None, None, TransferProblem.ABORTED, "gone"),
        ],
        [InstanceResult(tmp_path / "b", None, None, TransferProblem.CANCELLED, "stopping")],
    ]

    def send(
        destination: Destination, calling_ae: str, paths: Sequence[Path], cancel: threading.Event
    ) -> list[InstanceResult]:
        return answers.pop(0)

    counted = counting_sender(send, metrics)
    for _ in range(3):
        counted(PACS, "CT2PET", [], threading.Event())
    assert metrics.sample("ct2pet_instances_sent_total", destination="pacs") == 3
    # A cancelled batch is not a failure.
    assert metrics.sample("ct2pet_send_failures_total", destination="pacs") == 1


def test_the_destination_type_picks_the_send_function(files: list[Path]) -> None:
    from ct2pet_node.config import DicomwebEndpoint
    from ct2pet_node.errors import DeliveryError

    dimse, dicomweb = ScriptedSend(stored), ScriptedSend(stored)
    send = peer_sender({"dimse": dimse, "dicomweb": dicomweb})
    cloud = Destination(name="cloud", type="dicomweb", dicomweb=DicomwebEndpoint(url="http://127.0.0.1:1/dw"))
    send(PACS, "CT2PET", files[:1], threading.Event())
    send(cloud, "CT2PET", files, threading.Event())
    assert dimse.calls == [("pacs", [files[0].name])]
    assert dicomweb.calls == [("cloud", [f.name for f in files])]
    with pytest.raises(DeliveryError, match="no sender for type 'dicomweb'"):
        peer_sender({"dimse": dimse})(cloud, "CT2PET", files, threading.Event())

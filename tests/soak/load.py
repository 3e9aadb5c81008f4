"""The load campaign: eight senders push a whole series each, at once, while the engine is busy.

A first series (made by code) is sent and the campaign waits until the
engine is translating it; then ``senders`` threads, each with its own
association, push their own copy of the CT series (the shared sample's, or
one made by code), every copy with fresh Study, Series and SOP Instance
UIDs. Meanwhile ``/status`` is sampled for the queue depths. At the end
every instance must be acknowledged, every series one DONE job holding all
its instances, and each output series at Orthanc whole and once. Reported:
instances per second (ingest: first send to last acknowledgement; end to
end: to the last job DONE), the node's peak RSS (VmHWM) and the deepest
queues seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from ctfactory import make_ct_series
from peers import NetNamespace
from pydicom.uid import generate_uid

from ct2pet_node.domain.jobs import JobState

from .harness import NoDelayOrthanc, NodeRunner, NodeSettings, send_to_node, settle


@dataclass(slots=True)
class LoadReport:
    """What one load run measured; :meth:`violations` is empty when it passed."""

    senders: int
    slices: int
    acknowledged: int = 0
    ingest_seconds: float = 0.0
    end_to_end_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    max_engine_queue: int = 0
    max_outbox_due: int = 0
    max_waiting_jobs: int = 0
    status_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return self.senders * self.slices

    def violations(self) -> list[str]:
        found = list(self.problems)
        if self.acknowledged != self.instances:
            found.append(f"{self.instances - self.acknowledged} instance(s) not acknowledged")
        return found

    def summary(self) -> str:
        ingest = self.instances / self.ingest_seconds if self.ingest_seconds else 0.0
        overall = self.instances / self.end_to_end_seconds if self.end_to_end_seconds else 0.0
        return "\n".join(
            [
                f"senders x slices       {self.senders} x {self.slices} = {self.instances} instances",
                f"acknowledged           {self.acknowledged}",
                f"ingest                 {self.ingest_seconds:.1f} s, {ingest:.1f} instances/s "
                f"({self.senders} associations at once)",
                f"end to end             {self.end_to_end_seconds:.1f} s, {overall:.1f} instances/s "
                "(received, translated, sent)",
                f"peak node RSS          {self.peak_rss_mib:.0f} MiB (VmHWM)",
                f"deepest queues         engine {self.max_engine_queue}, outbox due {self.max_outbox_due}, "
                f"waiting jobs {self.max_waiting_jobs} ({self.status_samples} /status samples)",
                "result                 " + ("PASS" if not self.violations() else "FAIL"),
            ]
        )


def copy_with_new_uids(sources: Sequence[Path], out_dir: Path, tag: str) -> list[Path]:
    """``sources`` (one series) rewritten with fresh Study, Series and SOP Instance UIDs into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=["ct2pet-load", tag, "study"])
    series = generate_uid(entropy_srcs=["ct2pet-load", tag, "series"])
    written = []
    for index, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ct2pet-load", tag, str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out_dir / f"{index:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def run_load(
    *,
    weights: Path,
    work: Path,
    senders: int,
    series_maker: Callable[[Path, str], list[Path]],
    max_seconds: float,
    steps: int = 3,
    quiet_seconds: float = 5.0,
    say: Callable[[str], None] = print,
) -> LoadReport:
    """Run the load campaign under ``work``; ``series_maker(directory, tag)`` writes one sender's series."""
    copies = [series_maker(work / "copies" / f"sender-{i}", f"sender-{i}") for i in range(senders)]
    report = LoadReport(senders=senders, slices=len(copies[0]))
    if any(len(paths) != report.slices for paths in copies):
        raise ValueError("every sender's series must have the same number of slices")
    busy = make_ct_series(work / "busy", n=48, name="load-busy", images_in_acquisition=48)
    settings = NodeSettings(
        weights=weights, steps=steps, kinds=("secondary-capture",), quiet_seconds=quiet_seconds, min_slices=5
    )
    deadline = time.monotonic() + max_seconds
    with NetNamespace() as namespace, NoDelayOrthanc(namespace, work / "orthanc") as orthanc:
        node = NodeRunner(namespace, work / "node", settings).start()
        try:
            send_to_node(namespace, busy)
            settle(deadline, lambda: any(j.state is JobState.PROCESSING for j in node.jobs()), 0.05)
            say("engine busy; starting the senders")
            sampler = _StatusSampler(node, report)
            sampler.start()
            acknowledged = _send_all(namespace, copies, report)
            report.acknowledged = len(acknowledged)
            say(f"all sent in {report.ingest_seconds:.1f} s; waiting for the jobs")
            started = time.monotonic() - report.ingest_seconds
            settle(deadline, lambda: _all_done(node, senders + 1), 0.5)
            report.end_to_end_seconds = time.monotonic() - started
            sampler.stop.set()
            sampler.join(10)
            report.peak_rss_mib = node.peak_rss_mib()
            _judge(report, node, orthanc)
        finally:
            code = node.terminate()
            if code not in (0, None):
                report.problems.append(f"the node's SIGTERM stop exited {code}")
    return report


def _send_all(namespace: NetNamespace, copies: list[list[Path]], report: LoadReport) -> set[str]:
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def push(paths: list[Path], number: int) -> None:
        got = send_to_node(namespace, paths, calling_ae=f"SENDER{number}")
        with lock:
            acknowledged.update(got)

    threads = [
        threading.Thread(target=push, args=(paths, i), name=f"sender-{i}") for i, paths in enumerate(copies)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.ingest_seconds = time.monotonic() - started
    return acknowledged


class _StatusSampler(threading.Thread):
    """Samples ``/status`` every half second: queue depths and waiting jobs."""

    def __init__(self, node: NodeRunner, report: LoadReport) -> None:
        super().__init__(name="status-sampler", daemon=True)
        self.node = node
        self.report = report
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                status = self.node.status()
            except OSError:
                continue
            self.report.status_samples += 1
            queues = status["queues"]
            self.report.max_engine_queue = max(self.report.max_engine_queue, int(queues["engine"]))
            self.report.max_outbox_due = max(self.report.max_outbox_due, int(queues["outbox_due"]))
            self.report.max_waiting_jobs = max(self.report.max_waiting_jobs, int(status["jobs"]["waiting"]))


def _all_done(node: NodeRunner, jobs: int) -> bool:
    try:
        found = node.jobs()
    except Exception:  # the store mid-write by the node: look again
        return False
    return len(found) >= jobs and all(job.state.is_final for job in found)


def _judge(report: LoadReport, node: NodeRunner, orthanc: NoDelayOrthanc) -> None:
    held = orthanc.series_instances()
    jobs = [job for job in node.jobs() if job.n_instances == report.slices]
    if len(jobs) != report.senders:
        report.problems.append(f"{len(jobs)} jobs of {report.slices} instances, expected {report.senders}")
    for job in node.jobs():
        if job.state is not JobState.DONE:
            report.problems.append(f"job {job.id} {job.state.value}: {job.reason}")
    for job in jobs:
        for output in job.output_series_uids:
            if len(held.get(output, set())) != report.slices:
                report.problems.append(f"output series {output}: {len(held.get(output, set()))} instances")

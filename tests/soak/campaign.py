"""The kill soak: SIGKILL the node at random moments while series arrive, translate and leave.

One sender thread pushes ``series`` CT series (made by code, with
ImagesInAcquisition so the node completes each only once every slice is in)
to the node in batches, re-sending whatever was not acknowledged until all
of it is; the main thread waits for the node to be in a phase (receiving:
an association is open; translating: a job is PROCESSING; sending: a job
is SENDING), in rotation, sleeps a random fraction of a second and kills the
node with SIGKILL, then restarts it at once. After the kills the node runs
undisturbed until every job is final, and the campaign checks:

* every instance the node acknowledged is in its job store and its spool,
  and its series' job is DONE (processed) or not yet final (still queued);
* every finished series is at the destination exactly once: each output
  series holds one distinct SOP Instance UID per CT slice, no CT series got
  two jobs, and Orthanc holds no series no job made;
* no job is stuck (every job final when the drain ends) or failed;
* no crash: the node never exited unless killed, and no log line carries an
  exception.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from ctfactory import make_ct_series, series_uid_for
from peers import NetNamespace

from ct2pet_node.domain.jobs import Job, JobState

from .harness import NoDelayOrthanc, NodeRunner, NodeSettings, send_to_node, settle

PHASES = ("receiving", "translating", "sending")


@dataclass(slots=True)
class SoakReport:
    """What one soak run did and found; :meth:`violations` is empty when it passed."""

    series: int
    slices: int
    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    instances_sent: int = 0
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    unacknowledged_at_end: int = 0
    series_done: int = 0
    duplicate_series: list[str] = field(default_factory=list)
    missing_series: list[str] = field(default_factory=list)
    stuck_jobs: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    node_starts: int = 0
    peak_rss_mib: float = 0.0
    seconds: float = 0.0

    def violations(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged instance(s) lost: {self.lost[:3]}")
        if self.unacknowledged_at_end:
            found.append(f"{self.unacknowledged_at_end} instance(s) never acknowledged")
        if self.duplicate_series:
            found.append(f"duplicate or wrong-sized series at the destination: {self.duplicate_series}")
        if self.missing_series:
            found.append(f"finished series missing at the destination: {self.missing_series}")
        if self.stuck_jobs:
            found.append(f"stuck jobs: {self.stuck_jobs}")
        if self.failed_jobs:
            found.append(f"failed jobs: {self.failed_jobs}")
        if self.crashes:
            found.append(f"crashes: {self.crashes}")
        return found

    def summary(self) -> str:
        phases = ", ".join(f"{phase} {self.kills_by_phase[phase]}" for phase in (*PHASES, "idle"))
        return "\n".join(
            [
                f"trials (series)        {self.series} x {self.slices} slices, {self.series_done} done",
                f"kills (SIGKILL)        {self.kills} ({phases}); node started {self.node_starts} times",
                f"instances              {self.instances_sent} sent, {self.acknowledged} acknowledged, "
                f"{len(self.lost)} lost, {self.unacknowledged_at_end} never acknowledged",
                f"duplicate series       {len(self.duplicate_series)}",
                f"missing series         {len(self.missing_series)}",
                f"stuck jobs             {len(self.stuck_jobs)}",
                f"failed jobs            {len(self.failed_jobs)}",
                f"crashes                {len(self.crashes)}",
                f"peak node RSS          {self.peak_rss_mib:.0f} MiB",
                f"wall time              {self.seconds:.0f} s",
                "result                 " + ("PASS" if not self.violations() else "FAIL"),
            ]
        )


class _Feeder(threading.Thread):
    """Sends every series to the node in random batches until all is acknowledged or ``stop``."""

    def __init__(self, namespace: NetNamespace, series: list[list[Path]], rng: random.Random) -> None:
        super().__init__(name="soak-feeder", daemon=True)
        self.namespace = namespace
        self.series = series
        self.rng = rng
        self.acknowledged: set[str] = set()
        self.sop_of: dict[Path, str] = {}
        self.in_association = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for paths in self.series:
                pending = list(paths)
                while pending and not self.stop.is_set():
                    batch = pending[: self.rng.randint(3, max(3, len(pending)))]
                    self.in_association.set()
                    try:
                        got = send_to_node(self.namespace, batch)
                    finally:
                        self.in_association.clear()
                    self.acknowledged |= got
                    pending = [p for p in pending if self.sop_of[p] not in got]
                    if pending:
                        time.sleep(self.rng.uniform(0.05, 0.4))
                time.sleep(self.rng.uniform(0.0, 1.5))
        except BaseException as error:  # reported as a crash of the campaign, not swallowed
            self.error = error


# How long after a phase is seen the kill may come, seconds: within its typical length.
_JITTER_SECONDS = {"receiving": 0.05, "translating": 0.5, "sending": 0.1}


def _active_phases(node: NodeRunner, feeder: _Feeder) -> list[str]:
    """The phases the node is in now (several at once is common)."""
    active = ["receiving"] if feeder.in_association.is_set() else []
    try:
        states = {job.state for job in node.jobs()}
    except Exception:  # the store mid-write by the node: count only what the feeder knows
        return active
    if JobState.PROCESSING in states:
        active.append("translating")
    if JobState.SENDING in states:
        active.append("sending")
    return active


def _wait_for_phase(node: NodeRunner, feeder: _Feeder, phase: str, deadline: float) -> None:
    settle(deadline, lambda: phase in _active_phases(node, feeder), 0.02)


def run_soak(
    *,
    weights: Path,
    work: Path,
    kills: int,
    seed: int,
    series: int,
    slices: int,
    max_seconds: float,
    steps: int = 3,
    say: Callable[[str], None] = print,
) -> SoakReport:
    """Run the kill soak in a fresh namespace under ``work``; see the module docstring."""
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + max_seconds
    kill_until = started + 0.7 * max_seconds  # the rest is for the undisturbed drain
    report = SoakReport(series=series, slices=slices)
    names = [f"soak-{seed}-{i}" for i in range(series)]
    all_series = [
        make_ct_series(work / "ct" / name, n=slices, name=name, images_in_acquisition=slices)
        for name in names
    ]
    report.instances_sent = series * slices
    with NetNamespace() as namespace, NoDelayOrthanc(namespace, work / "orthanc") as orthanc:
        node = NodeRunner(namespace, work / "node", NodeSettings(weights=weights, steps=steps)).start()
        feeder = _Feeder(namespace, all_series, rng)
        for paths in all_series:
            for path in paths:
                feeder.sop_of[path] = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        feeder.start()
        try:
            while report.kills < kills and time.monotonic() < kill_until:
                # Once everything is sent, nothing can be caught receiving any more.
                possible = PHASES if feeder.is_alive() else PHASES[1:]
                target = possible[report.kills % len(possible)]
                _wait_for_phase(node, feeder, target, min(time.monotonic() + 10, kill_until))
                time.sleep(rng.uniform(0.0, _JITTER_SECONDS[target]))
                active = _active_phases(node, feeder)
                report.peak_rss_mib = max(report.peak_rss_mib, node.peak_rss_mib())
                if not node.alive():  # recorded as a crash by alive(); carry on with a fresh node
                    node.start()
                    continue
                node.kill()
                report.kills += 1
                report.kills_by_phase.update(active or ["idle"])
                elapsed = time.monotonic() - started
                say(f"kill {report.kills}/{kills} while {'+'.join(active) or 'idle'} ({elapsed:.0f} s)")
                node.start()
            say("kills done; draining")
            feeder.join(max(deadline - time.monotonic(), 1.0))
            settle(deadline, lambda: _all_final(node, series), 1.0)
            report.peak_rss_mib = max(report.peak_rss_mib, node.peak_rss_mib())
            _judge(report, node, orthanc, feeder, [series_uid_for(n) for n in names])
        finally:
            feeder.stop.set()
            code = node.terminate()
            if code not in (0, None):
                report.crashes.append(f"the final SIGTERM stop exited {code}")
            report.node_starts = node.starts
    report.seconds = time.monotonic() - started
    return report


def _all_final(node: NodeRunner, series: int) -> bool:
    try:
        jobs = node.jobs()
    except Exception:  # the store mid-write by the node: look again
        return False
    return len({job.series_uid for job in jobs}) >= series and all(job.state.is_final for job in jobs)


def _judge(
    report: SoakReport, node: NodeRunner, orthanc: NoDelayOrthanc, feeder: _Feeder, ct_uids: list[str]
) -> None:
    if feeder.error is not None:
        report.crashes.append(f"the feeder failed: {feeder.error!r}")
    report.acknowledged = len(feeder.acknowledged)
    report.unacknowledged_at_end = report.instances_sent - report.acknowledged
    stored = node.stored_instances()
    report.lost = [uid for uid in sorted(feeder.acknowledged) if not _on_disk(stored.get(uid))]
    jobs = node.jobs()
    for job in jobs:
        if not job.state.is_final:
            report.stuck_jobs.append(f"job {job.id} {job.state.value}")
        elif job.state is not JobState.DONE:
            report.failed_jobs.append(f"job {job.id} {job.state.value}: {job.reason}")
    _judge_destination(report, jobs, orthanc.series_instances(), ct_uids)
    for event in node.events():
        if "exception" in event:
            report.crashes.append(f"{event.get('event')}: {str(event['exception']).splitlines()[-1]}")
    report.crashes.extend(f"the node exited by itself with {code}" for code in node.unexpected_exits)


def _on_disk(path: Path | None) -> bool:
    return path is not None and path.is_file()


def _judge_destination(
    report: SoakReport, jobs: list[Job], held: dict[str, set[str]], ct_uids: list[str]
) -> None:
    """One job per CT series; each finished one's output series at the destination, whole and once."""
    expected_outputs: set[str] = set()
    for ct_uid in ct_uids:
        generations = [job for job in jobs if job.series_uid == ct_uid]
        if len(generations) > 1:
            report.duplicate_series.append(f"CT series {ct_uid} made {len(generations)} jobs")
        done = [job for job in generations if job.state is JobState.DONE]
        if not done:
            continue
        report.series_done += 1
        for output_uid in done[-1].output_series_uids:
            expected_outputs.add(output_uid)
            count = len(held.get(output_uid, set()))
            if count == 0:
                report.missing_series.append(output_uid)
            elif count != report.slices:
                report.duplicate_series.append(f"{output_uid}: {count} instances, expected {report.slices}")
    for extra in sorted(set(held) - expected_outputs):
        report.duplicate_series.append(f"{extra}: at the destination but made by no finished job")

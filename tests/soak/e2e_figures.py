"""The end-to-end benchmark's figures: the node's JSON log read on, phases, table and JSON.

Moments are wall-clock seconds since the epoch: the node stamps its log
lines with ``time.time()`` (ISO 8601, UTC) and the benchmark polls Orthanc
with the same clock, so both sides compare directly. Used by ``benchmarks/e2e.py``.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.2


@dataclass(slots=True)
class Figures:
    """Wall-clock moments (seconds since the epoch) and what the run found; filled as it goes."""

    slices: int
    quiet_seconds: float
    quiet_overridden: bool
    settle_seconds: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)
    output_kinds: tuple[str, ...] = ()
    storescu_seconds: float = 0.0
    acknowledged: int = 0
    first_received: float = 0.0
    last_received: float = 0.0
    series_complete: float = 0.0
    completed_because: str = ""
    generation_started: float = 0.0
    translation_started: float = 0.0
    translation_seconds: float = 0.0
    generation_finished: float = 0.0
    outputs_written: float = 0.0
    delivery_queued: float = 0.0
    delivery_done: float = 0.0
    stored_at_destination: float = 0.0
    stored_poll_window: float = 0.0
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def phases(self) -> list[tuple[str, float | None, str]]:
        """(phase, seconds or None when not reached, where its end comes from), from the last CT instance."""
        window = f"REST poll, moment within the last {self.stored_poll_window:.2f} s"
        steps = [
            ("completion wait (settle/quiet rule + tick)", self.series_complete, "log series_complete"),
            ("engine picks up the job", self.generation_started, "log generation_started"),
            ("load volume (headers, HU)", self.translation_started, "log translation_started (1st chunk)"),
            ("translation (engine)", self.generation_finished, "log generation_finished"),
            ("write the output series", self.outputs_written, "log output_series_written (last)"),
            ("record SENDING, queue the delivery", self.delivery_queued, "log delivery_queued"),
            ("send until all stored at Orthanc", self.stored_at_destination, window),
        ]
        rows: list[tuple[str, float | None, str]] = []
        previous: float | None = self.last_received or None
        for name, moment, source in steps:
            seconds = moment - previous if previous is not None and moment > 0 else None
            rows.append((name, seconds, source))
            previous = moment if seconds is not None else None
        return rows

    @property
    def total_seconds(self) -> float | None:
        if not (self.stored_at_destination and self.last_received):
            return None
        return self.stored_at_destination - self.last_received

    @property
    def total_without_quiet_seconds(self) -> float | None:
        total = self.total_seconds
        return None if total is None else total - (self.series_complete - self.last_received)

    def table(self) -> str:
        model = self.model
        quiet = f"{self.quiet_seconds:g} s" + (
            " (--quiet-seconds)" if self.quiet_overridden else " (embedded)"
        )
        lines = [
            f"series             {self.slices} CT instances of the shared sample, one storescu association",
            f"model              {model.get('id')} on {model.get('device')}, {model.get('steps')} steps",
            f"outputs            {', '.join(self.output_kinds)}",
            f"quiet period       {quiet}; settle after release {self.settle_seconds:g} s",
            f"completed because  {self.completed_because}",
            f"ingest             {self.first_to_last():.2f} s first -> last instance acknowledged "
            f"({self.acknowledged} acknowledged; storescu ran {self.storescu_seconds:.2f} s)",
            "",
            f"{'phase (from the last CT instance acknowledged)':<48} {'seconds':>9} {'at':>9}  end taken from",
        ]
        at = 0.0
        for name, seconds, source in self.phases():
            at += seconds or 0.0
            shown = f"{seconds:>9.2f} {at:>9.2f}" if seconds is not None else f"{'-':>9} {'-':>9}"
            lines.append(f"{name:<48} {shown}  {source}")
        done = _since(self.delivery_done, self.last_received)
        lines += [f"{'(node logs delivery_done)':<48} {'':>9} {done:>9}  log delivery_done", ""]
        lines += [
            f"at Orthanc         {kind}: {o['at_orthanc']} of {o['instances']} instances, "
            f"{o.get('description_at_orthanc', '')!r}, series {o['series_uid']}"
            for kind, o in self.outputs.items()
        ]
        lines += [
            f"{'last CT instance received -> synthetic series stored':<54} {_fmt(self.total_seconds):>9} s",
            f"{'  the same without the completion wait':<54} {_fmt(self.total_without_quiet_seconds):>9} s",
            "result             " + ("PASS" if not self.problems else "FAIL"),
        ]
        return "\n".join(lines)

    def first_to_last(self) -> float:
        return self.last_received - self.first_received

    def as_json(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["ingest_seconds"] = self.first_to_last()
        figures["phases_seconds"] = {name: seconds for name, seconds, _ in self.phases()}
        figures["total_seconds"] = self.total_seconds
        figures["total_without_quiet_seconds"] = self.total_without_quiet_seconds
        figures["poll_seconds"] = POLL_SECONDS
        figures["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
        return figures


class NodeLog:
    """The node's JSON log, read on as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.events: list[dict[str, Any]] = []

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    def moment(self, name: str) -> float:
        """Wall-clock seconds of the first ``name`` event; 0.0 when there is none."""
        found = self.named(name)
        return _seconds(found[0]) if found else 0.0


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _since(moment: float, origin: float) -> str:
    return _fmt(moment - origin if moment and origin else None)


def _seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def fill_from_log(figures: Figures, log: NodeLog) -> None:
    """The node-side moments, from its JSON log."""
    received = sorted(_seconds(e) for e in log.named("instance_stored"))
    figures.acknowledged = len(received)
    if received:
        figures.first_received, figures.last_received = received[0], received[-1]
    figures.series_complete = log.moment("series_complete")
    if log.named("series_complete"):
        figures.completed_because = str(log.named("series_complete")[0].get("because", ""))
    figures.generation_started = log.moment("generation_started")
    figures.generation_finished = log.moment("generation_finished")
    if log.named("generation_finished"):
        figures.translation_seconds = float(log.named("generation_finished")[0]["seconds"])
    # The pipeline's own event is closer to the first network call; the worker's figure is the fallback.
    figures.translation_started = log.moment("translation_started") or (
        figures.generation_finished - figures.translation_seconds if figures.generation_finished else 0.0
    )
    written = [_seconds(e) for e in log.named("output_series_written")]
    figures.outputs_written = max(written, default=0.0)
    figures.delivery_queued = log.moment("delivery_queued")
    figures.delivery_done = log.moment("delivery_done")


def judge(figures: Figures, status: dict[str, Any]) -> None:
    """Everything acknowledged, the one job DONE, every output whole at Orthanc."""
    if figures.acknowledged != figures.slices:
        figures.problems.append(f"{figures.acknowledged} of {figures.slices} instances acknowledged")
    if set(figures.outputs) != set(figures.output_kinds):
        figures.problems.append(
            f"outputs written: {sorted(figures.outputs)}, expected {figures.output_kinds}"
        )
    for kind, output in figures.outputs.items():
        if output["at_orthanc"] != output["instances"]:
            figures.problems.append(f"{kind}: {output['at_orthanc']} of {output['instances']} at Orthanc")
        if not str(output.get("description_at_orthanc", "")).startswith("SYNTHETIC PET"):
            figures.problems.append(
                f"{kind}: SeriesDescription at Orthanc {output.get('description_at_orthanc')!r}"
            )
    jobs = status.get("jobs", {})
    if jobs.get("done") != 1 or any(n for state, n in jobs.items() if state != "done"):
        figures.problems.append(f"job states at the end: {jobs}")

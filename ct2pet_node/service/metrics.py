"""A small Prometheus text-format registry: counters and gauges with labels.

Small on purpose: the node exposes a dozen series, and one module is easier
to audit in a hospital than another dependency.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in key) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help_text = help_text
        self._values: dict[LabelKey, float] = {}
        self._lock = threading.Lock()
        self._reader: Callable[[], dict[LabelKey, float]] | None = None

    def read_from(self, reader: Callable[[], dict[LabelKey, float]]) -> None:
        """Take the samples from ``reader`` at scrape time instead of from ``inc``/``set``.

        For values whose truth lives elsewhere (the job store), so they
        survive a restart and can never disagree with ``jobs list``.
        """
        self._reader = reader

    def _key(self, labels: dict[str, str]) -> LabelKey:
        return tuple(sorted(labels.items()))

    def value(self, **labels: str) -> float:
        return dict(self.samples()).get(self._key(labels), 0.0)

    def samples(self) -> Iterable[tuple[LabelKey, float]]:
        if self._reader is not None:
            return list(self._reader().items())
        with self._lock:
            return list(self._values.items())

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{self.name}{_labels(key)} {value:g}" for key, value in sorted(self.samples())]
        return lines


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value read at scrape time from a callback, or set directly."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = value


class Registry:
    """The node's metrics, named as `/metrics` exposes them."""

    def __init__(self) -> None:
        self.instances_received = Counter(
            "ct2pet_instances_received_total", "CT instances acknowledged to senders."
        )
        self.instances_ignored = Counter(
            "ct2pet_instances_ignored_total",
            "Instances of SOP classes the node does not translate, acknowledged and dropped, by SOP class.",
        )
        self.instances_rejected = Counter(
            "ct2pet_instances_rejected_total", "C-STORE requests answered with a failure status, by status."
        )
        # Both read from the job store by the composition root: jobs that got past (or were
        # refused at) qualification, by the router or at the engine's re-qualification.
        self.series_completed = Counter(
            "ct2pet_series_completed_total", "Series complete and qualified (jobs past qualification)."
        )
        self.series_refused = Counter("ct2pet_series_refused_total", "Series refused at qualification.")
        self.engine_seconds = Counter("ct2pet_engine_seconds_total", "Seconds spent translating volumes.")
        self.engine_slices = Counter("ct2pet_engine_slices_total", "CT slices translated.")
        self.send_failures = Counter(
            "ct2pet_send_failures_total", "Failed delivery attempts, by destination."
        )
        self.instances_sent = Counter("ct2pet_instances_sent_total", "Instances delivered, by destination.")
        self.connections_waiting = Gauge(
            "ct2pet_connections_waiting", "DICOM connections that have not yet sent an association request."
        )
        self.connections_dropped = Counter(
            "ct2pet_connections_dropped_total",
            "DICOM connections closed before their association request, by reason.",
        )
        self.associations_active = Gauge(
            "ct2pet_associations_active", "DICOM associations holding a slot (requested and not ended)."
        )
        self.associations_rejected = Counter(
            "ct2pet_associations_rejected_total", "DICOM association requests rejected, by reason."
        )
        self.jobs = Gauge("ct2pet_jobs", "Jobs by state.")
        self.queue_depth = Gauge("ct2pet_queue_depth", "Items waiting, by queue.")

    def read_from_listener(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Take the DICOM listener's series at scrape time from its own counts.

        ``status`` is ``StorageScp.listener_status`` (the same numbers
        ``ct2pet-node status`` shows), passed in so this module needs no
        pynetdicom.
        """

        def by(key: str, label: str) -> Callable[[], dict[LabelKey, float]]:
            return lambda: {((label, name),): float(n) for name, n in status()[key].items()}

        self.instances_ignored.read_from(by("instances_ignored", "sop_class"))
        self.associations_rejected.read_from(by("associations_rejected", "reason"))
        self.connections_dropped.read_from(by("connections_dropped", "reason"))
        self.associations_active.read_from(lambda: {(): float(status()["associations_active"])})
        self.connections_waiting.read_from(lambda: {(): float(status()["connections_waiting"])})

    def all(self) -> list[_Metric]:
        return [value for value in vars(self).values() if isinstance(value, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines += metric.render()
        return "\n".join(lines) + "\n"

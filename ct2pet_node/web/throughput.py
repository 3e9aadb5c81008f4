"""The node's throughput over the last hours, from the job store's own times, drawn as inline SVG.

Deciding code only: jobs and ``now`` in, values and SVG text out. A job
counts in the hour its results were written (``details.written_at``); its
phases are those the engine recorded (``details.phase_seconds``) plus, for a
job DONE after writing, the delivery (``updated_at - written_at``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ct2pet_node.domain.jobs import Job, JobState

HOUR = 3600.0
PHASES = ("waiting", "load", "translate", "write", "deliver")
PHASE_COLOURS = {
    "waiting": "#9aa5b1",
    "load": "#6c8ebf",
    "translate": "#d79b00",
    "write": "#82b366",
    "deliver": "#b85450",
}


@dataclass(frozen=True, slots=True)
class HourOfWork:
    """What the node finished in one hour; ``start`` in seconds since the epoch, phases in mean seconds."""

    start: float
    studies: int
    series: int
    slices: int
    mean_phase_seconds: tuple[tuple[str, float], ...]


def job_phases(job: Job) -> dict[str, float]:
    """Seconds per phase of ``job`` as far as it went, in :data:`PHASES` order."""
    phases = dict(job.details.phase_seconds or ())
    written = job.details.written_at
    if written is not None and job.state is JobState.DONE:
        phases["deliver"] = max(0.0, job.updated_at - written)
    return {name: phases[name] for name in PHASES if name in phases}


def hours_of_work(jobs: Sequence[Job], now: float, hours: int) -> list[HourOfWork]:
    """One :class:`HourOfWork` per hour of the last ``hours``, oldest first; the last one ends at ``now``."""
    first = now - hours * HOUR
    buckets: list[list[Job]] = [[] for _ in range(hours)]
    for job in jobs:
        written = job.details.written_at
        if written is None or not first <= written <= now:
            continue
        buckets[min(hours - 1, int((written - first) // HOUR))].append(job)
    result = []
    for index, bucket in enumerate(buckets):
        sums: dict[str, list[float]] = {}
        for job in bucket:
            for name, seconds in job_phases(job).items():
                sums.setdefault(name, []).append(seconds)
        means = tuple((name, sum(sums[name]) / len(sums[name])) for name in PHASES if name in sums)
        result.append(
            HourOfWork(
                start=first + index * HOUR,
                studies=len({job.study_uid for job in bucket}),
                series=len(bucket),
                slices=sum(job.n_instances for job in bucket),
                mean_phase_seconds=means,
            )
        )
    return result


# Drawing ------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 560, 170
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 22, 28


def _nice_top(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 < value:
        scale *= 10
    while scale > value * 10:
        scale /= 10
    return next(step * scale for step in (1, 2, 5, 10) if step * scale >= value)


def _frame(title: str, top: float, unit: str, hours: Sequence[HourOfWork], hour_label: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">',
        f'<text x="{LEFT}" y="14" class="chart-title">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#888"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" class="tick">{top:g}{escape(unit)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" class="tick">0</text>',
    ]
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(hours))
    for index in range(0, len(hours), max(1, len(hours) // 6)):
        ago = len(hours) - index
        parts.append(
            f'<text x="{LEFT + index * slot:.1f}" y="{HEIGHT - 8}" class="tick">-{ago}{hour_label}</text>'
        )
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end" class="tick">now</text>')
    return parts


def bars_svg(title: str, hours: Sequence[HourOfWork], field: str, colour: str = "#4a7ab0") -> str:
    """Bars of one count (``"studies"``, ``"series"`` or ``"slices"``) per hour."""
    values = [float(getattr(hour, field)) for hour in hours]
    top = _nice_top(max(values, default=0.0))
    parts = _frame(title, top, "", hours, " h")
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(hours))
    for index, (hour, value) in enumerate(zip(hours, values, strict=True)):
        height = plot_h * value / top
        x = LEFT + index * slot + 1
        parts.append(
            f'<rect x="{x:.1f}" y="{TOP + plot_h - height:.1f}" width="{max(1.0, slot - 2):.1f}" '
            f'height="{height:.1f}" fill="{colour}"><title>{int(value)} {field} in the hour from '
            f"{time.strftime('%H:%M', time.gmtime(hour.start))} UTC</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def phases_svg(title: str, hours: Sequence[HourOfWork]) -> str:
    """Stacked bars of the mean seconds per phase of the jobs finished in each hour (legend: :func:`legend_html`)."""
    totals = [sum(seconds for _, seconds in hour.mean_phase_seconds) for hour in hours]
    top = _nice_top(max(totals, default=0.0))
    parts = _frame(title, top, " s", hours, " h")
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(hours))
    for index, hour in enumerate(hours):
        y = float(TOP + plot_h)
        for name, seconds in hour.mean_phase_seconds:
            height = plot_h * seconds / top
            y -= height
            parts.append(
                f'<rect x="{LEFT + index * slot + 1:.1f}" y="{y:.1f}" width="{max(1.0, slot - 2):.1f}" '
                f'height="{height:.1f}" fill="{PHASE_COLOURS[name]}"><title>{name}: {seconds:.1f} s'
                "</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def legend_html() -> str:
    """The colours of :func:`phases_svg`, as HTML beside it."""
    return " ".join(
        f'<span class="swatch" style="background:{PHASE_COLOURS[name]}"></span>{name}' for name in PHASES
    )

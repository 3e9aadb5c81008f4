"""When is a series complete? Pure: the caller passes ``now`` and the headers.

A series is complete when, in this order of precedence:

1. an operator forced it (``jobs force SERIES_UID``);
2. its geometry proves it whole: every image slice lies on one regular grid
   with no gap and no duplicate, *and* an expected count is known and met --
   every slice carries the same ImagesInAcquisition N and there are exactly N
   slices, or the series is one Enhanced CT instance (its NumberOfFrames is
   its own count);
3. no instance has arrived for ``quiet_seconds``.

Why a regular grid alone is not proof: a series arriving in slice order is
a gap-free grid after every single instance, so without a count it would be
declared complete after its first few slices. Such series (the GE sample
among them: no ImagesInAcquisition) complete by the quiet rule.

Localizers and secondary captures are left out of the count and the grid,
as qualification drops them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.routing.stack import (
    CT_IMAGE_SOP_CLASSES,
    analyse_grid,
    expand_frames,
    finite,
    is_localizer,
    slice_normal,
    sort_along_normal,
)

DEFAULT_GRID_TOLERANCE_MM = 0.05


@dataclass(frozen=True, slots=True)
class CompletionDecision:
    """Whether a series is complete, and why (shown in ``jobs list`` and logs).

    Attributes
    ----------
    complete : bool
    why : str
        e.g. "quiet for 30 s", "geometry complete: 247 of 247 slices on a
        3.27 mm grid", "forced by operator", or why it is still waiting.
    recheck_in_seconds : float
        When not complete: seconds until the quiet rule would complete it
        (0 when complete). The router may sleep this long.
    """

    complete: bool
    why: str
    recheck_in_seconds: float = 0.0


def decide_completion(
    headers: Sequence[SliceHeader],
    last_instance_at: float,
    now: float,
    quiet_seconds: float,
    forced: bool,
    *,
    grid_tolerance_mm: float = DEFAULT_GRID_TOLERANCE_MM,
) -> CompletionDecision:
    """Decide whether the series made of ``headers`` is complete.

    Parameters
    ----------
    headers : sequence of SliceHeader
        Every instance received so far for one series.
    last_instance_at, now : float
        Seconds (same clock) of the last arrival and of this decision.
    quiet_seconds : float
        ``[routing] series_quiet_seconds``.
    forced : bool
        The operator forced completion.
    grid_tolerance_mm : float
        How far a step may differ from the median step, mm; pass
        ``[routing] slice_spacing_tolerance_mm``.

    Returns
    -------
    CompletionDecision
    """
    if forced:
        return CompletionDecision(True, "forced by operator")
    geometry = geometry_completion(headers, grid_tolerance_mm)
    if geometry is not None:
        return CompletionDecision(True, geometry)
    quiet_for = now - last_instance_at
    if quiet_for >= quiet_seconds:
        return CompletionDecision(True, f"quiet for {quiet_for:.0f} s")
    remaining = quiet_seconds - quiet_for
    return CompletionDecision(
        False,
        f"waiting: {len(headers)} instance(s), last {quiet_for:.0f} s ago, quiet after {quiet_seconds:.0f} s",
        remaining,
    )


def geometry_completion(headers: Sequence[SliceHeader], tolerance_mm: float) -> str | None:
    """The "geometry complete: ..." reason when geometry proves the series whole, else None."""
    images = [h for h in headers if str(h.sop_class_uid) in CT_IMAGE_SOP_CLASSES and not is_localizer(h)]
    if not images or not all(finite(h.image_orientation) for h in images):
        return None
    expected = _expected_count(images)
    if expected is None:
        return None
    slices = expand_frames(images)
    if len(slices) != expected or len(slices) < 2 or not all(finite(s.position) for s in slices):
        return None
    orientation = images[0].image_orientation
    assert orientation is not None
    if any(h.image_orientation != orientation for h in images):
        return None
    normal = slice_normal(orientation)
    grid = analyse_grid(sort_along_normal(slices, normal), normal, tolerance_mm)
    if not grid.regular:
        return None
    return f"geometry complete: {len(slices)} of {expected} slices on a {grid.step_mm:.2f} mm grid"


def _expected_count(images: Sequence[SliceHeader]) -> int | None:
    if len(images) == 1 and images[0].frame_positions:
        return images[0].frames
    counts = {h.images_in_acquisition for h in images}
    if len(counts) != 1:
        return None
    count = counts.pop()
    return count if count is not None and count > 0 else None

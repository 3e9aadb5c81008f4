"""When is a series complete? Pure: the caller passes ``now`` and the headers.

A series is complete when, in this order of precedence:

1. an operator forced it (``jobs force SERIES_UID``);
2. its geometry proves it whole: every image slice lies on one regular grid
   with no gap and no duplicate, *and* an expected count is known and met --
   every slice carries the same ImagesInAcquisition N and there are exactly N
   slices, or the series is one Enhanced CT instance (its NumberOfFrames is
   its own count);
3. the one association that brought every instance of it was released
   ``settle_seconds`` ago, and its slices form a gap-free stack (no count
   needed: a sender that releases has sent what it meant to send);
4. no instance has arrived for ``quiet_seconds``.

Why a regular grid alone is not proof: a series arriving in slice order is
a gap-free grid after every single instance, so without a count it would be
declared complete after its first few slices. Such series (the GE sample
among them: no ImagesInAcquisition) complete by the settle rule when one
association brought them, else by the quiet rule. Whether one association
brought the series is the caller's to know: it passes ``released_at`` only
then.

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
        When not complete: seconds until the quiet or settle rule would
        complete it (0 when complete). The router may sleep this long.
    settles_at : float or None
        When not complete: the time (the caller's clock) at which the settle
        rule completes it, where that rule applies; None where only the
        quiet rule can.
    """

    complete: bool
    why: str
    recheck_in_seconds: float = 0.0
    settles_at: float | None = None


@dataclass(frozen=True, slots=True)
class GapFreeStack:
    """Image slices that lie on one regular grid with no gap and no duplicate.

    Attributes
    ----------
    slices : int
        Slices (frames of an Enhanced CT count one each).
    step_mm : float
        Distance between neighbouring slices along the normal, mm.
    """

    slices: int
    step_mm: float


def decide_completion(
    headers: Sequence[SliceHeader],
    last_instance_at: float,
    now: float,
    quiet_seconds: float,
    forced: bool,
    *,
    grid_tolerance_mm: float = DEFAULT_GRID_TOLERANCE_MM,
    released_at: float | None = None,
    settle_seconds: float = 0.0,
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
    released_at : float or None
        When the association that brought *every* instance so far was
        released cleanly (same clock as ``now``); None when that is not so
        (still open, aborted, or the series came over several associations).
    settle_seconds : float
        ``[routing] settle_after_release_seconds``; 0 turns the settle rule off.

    Returns
    -------
    CompletionDecision
    """
    if forced:
        return CompletionDecision(True, "forced by operator")
    geometry = geometry_completion(headers, grid_tolerance_mm)
    if geometry is not None:
        return CompletionDecision(True, geometry)
    settles_at = None
    if released_at is not None and settle_seconds > 0:
        stack = gap_free_stack(headers, grid_tolerance_mm)
        if stack is not None:
            settles_at = released_at + settle_seconds
            if now >= settles_at:
                return CompletionDecision(
                    True,
                    f"settled {now - released_at:.0f} s after its association was released: "
                    f"{stack.slices} slices on a {stack.step_mm:.2f} mm grid, no gap",
                )
    quiet_for = now - last_instance_at
    if quiet_for >= quiet_seconds:
        return CompletionDecision(True, f"quiet for {quiet_for:.0f} s")
    remaining = quiet_seconds - quiet_for
    why = (
        f"waiting: {len(headers)} instance(s), last {quiet_for:.0f} s ago, quiet after {quiet_seconds:.0f} s"
    )
    if settles_at is not None:
        remaining = min(remaining, settles_at - now)
        why += f", settled in {settles_at - now:.0f} s (association released, no gap)"
    return CompletionDecision(False, why, remaining, settles_at)


def geometry_completion(headers: Sequence[SliceHeader], tolerance_mm: float) -> str | None:
    """The "geometry complete: ..." reason when geometry proves the series whole, else None."""
    expected = _expected_count(_images(headers))
    if expected is None:
        return None
    stack = gap_free_stack(headers, tolerance_mm)
    if stack is None or stack.slices != expected:
        return None
    return f"geometry complete: {stack.slices} of {expected} slices on a {stack.step_mm:.2f} mm grid"


def gap_free_stack(headers: Sequence[SliceHeader], tolerance_mm: float) -> GapFreeStack | None:
    """The image slices of ``headers`` when they form one regular stack of two or more, else None.

    One orientation, finite positions, every step within ``tolerance_mm`` of
    the median step: no gap, no duplicate. Says nothing about the ends, so on
    its own it proves only that nothing is missing *between* the slices.
    """
    images = _images(headers)
    if not images or not all(finite(h.image_orientation) for h in images):
        return None
    slices = expand_frames(images)
    if len(slices) < 2 or not all(finite(s.position) for s in slices):
        return None
    orientation = images[0].image_orientation
    assert orientation is not None
    if any(h.image_orientation != orientation for h in images):
        return None
    normal = slice_normal(orientation)
    grid = analyse_grid(sort_along_normal(slices, normal), normal, tolerance_mm)
    if not grid.regular:
        return None
    return GapFreeStack(len(slices), grid.step_mm)


def _images(headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    return [h for h in headers if str(h.sop_class_uid) in CT_IMAGE_SOP_CLASSES and not is_localizer(h)]


def _expected_count(images: Sequence[SliceHeader]) -> int | None:
    if len(images) == 1 and images[0].frame_positions:
        return images[0].frames
    counts = {h.images_in_acquisition for h in images}
    if len(counts) != 1:
        return None
    count = counts.pop()
    return count if count is not None and count > 0 else None

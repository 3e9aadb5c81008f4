"""Refusal reasons for a stack that is not one regular, untilted grid. Pure.

Worded for a PACS administrator: slices numbered from 1 in position order,
table positions as ``z=-120.0`` (mm, one decimal), steps in mm with two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ct2pet_node.config import RoutingConfig
from ct2pet_node.domain.series import OrderedSlice
from ct2pet_node.routing.stack import Grid, GridProblem

# How far the affine may place a slice from its own ImagePositionPatient, as a
# share of the slice step (the exact positions still reach the writer).
MAX_POSITION_ERROR_STEPS = 0.1
_MAX_LISTED = 3


def _instance(slice_: OrderedSlice) -> str:
    frame = f" frame {slice_.frame_number}" if slice_.frame_number is not None else ""
    return f"{slice_.sop_instance_uid}{frame}"


def grid_refusal(ordered: Sequence[OrderedSlice], grid: Grid, tolerance_mm: float) -> str:
    """The reason a stack with ``grid.problems`` is refused: duplicates, then uneven steps, then gaps."""
    by_kind: dict[str, list[GridProblem]] = {"duplicate": [], "uneven": [], "gap": []}
    for problem in grid.problems:
        by_kind[problem.kind].append(problem)
    if by_kind["duplicate"]:
        first, a, b, more = _first_problem(ordered, by_kind["duplicate"], "duplicate position")
        return (
            f"slices {first.index + 1} and {first.index + 2} share position {a.z_text}: instances "
            f"{_instance(a)} and {_instance(b)}{more}; the series holds a duplicate or two overlapping "
            "reconstructions, send one"
        )
    if by_kind["uneven"]:
        first, a, b, more = _first_problem(ordered, by_kind["uneven"], "uneven step")
        return (
            f"uneven slice spacing: slice {first.index + 1} ({a.z_text}) to slice {first.index + 2} "
            f"({b.z_text}) is {first.step_mm:.2f} mm, expected {grid.step_mm:.2f} mm ± {tolerance_mm:g} mm"
            f"{more}; this node does not resample in z, send a reconstruction with constant spacing"
        )
    return _gaps_text(ordered, by_kind["gap"], grid.step_mm)


def _first_problem(
    ordered: Sequence[OrderedSlice], problems: Sequence[GridProblem], noun: str
) -> tuple[GridProblem, OrderedSlice, OrderedSlice, str]:
    """The first of ``problems``, the two slices it lies between, and the others counted in words."""
    first = problems[0]
    return first, ordered[first.index], ordered[first.index + 1], _more(len(problems) - 1, noun)


def _gaps_text(ordered: Sequence[OrderedSlice], gaps: Sequence[GridProblem], step_mm: float) -> str:
    texts = []
    missing_before = 0
    for gap in gaps:
        first_missing = gap.index + 2 + missing_before
        last_missing = first_missing + gap.missing - 1
        numbers = f"slice {first_missing}" if gap.missing == 1 else f"slices {first_missing}-{last_missing}"
        a, b = ordered[gap.index], ordered[gap.index + 1]
        texts.append(f"{numbers} missing between {a.z_text} and {b.z_text}")
        missing_before += gap.missing
    listed = "; ".join(texts[:_MAX_LISTED])
    more = _more(len(texts) - _MAX_LISTED, "gap") if len(texts) > _MAX_LISTED else ""
    return (
        f"{listed}{more} (expected a {step_mm:.2f} mm step); this node does not interpolate missing "
        "slices, resend the complete series"
    )


def _more(count: int, what: str) -> str:
    return f" (and {count} more {what}{'s' if count != 1 else ''})" if count > 0 else ""


def stacking_refusal(
    ordered: Sequence[OrderedSlice], affine: np.ndarray, normal: np.ndarray, rules: RoutingConfig
) -> str | None:
    """Why a regular stack still cannot be one volume (tilted, or not on one line), or None."""
    if len(ordered) < 2:
        return None
    step = affine[:3, 2]
    step_length = float(np.linalg.norm(step))
    cosine = min(1.0, abs(float(np.dot(step, normal))) / step_length)
    angle = math.degrees(math.acos(cosine))
    if angle > rules.max_gantry_tilt_degrees:
        limit_deg = rules.max_gantry_tilt_degrees
        return (
            f"slices are stacked at {angle:.1f}° to their image plane's normal (a gantry tilt), more than "
            f"the {limit_deg:.1f}° this node accepts ([routing] max_gantry_tilt_degrees); "
            "send a reconstruction without tilt"
        )
    limit = max(rules.slice_spacing_tolerance_mm, MAX_POSITION_ERROR_STEPS * step_length)
    for index, slice_ in enumerate(ordered):
        predicted = affine[:3, 3] + index * step
        error = float(np.linalg.norm(np.asarray(slice_.position) - predicted))
        if error > limit:
            return (
                f"slice {index + 1} ({slice_.z_text}, instance {_instance(slice_)}) lies {error:.2f} mm off "
                "the straight line through the other slices; the slices do not form one volume, "
                "send one reconstruction"
            )
    return None

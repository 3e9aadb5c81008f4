"""Does a complete series qualify for translation? Pure: headers in, a value or a refusal out.

A series qualifies before it costs any GPU time, or is refused with a reason
a PACS administrator can act on (kept in the job store). Slices in messages
are numbered from 1 in position order, positions are table z in mm with one
decimal: "slice 57 missing between z=-120.0 and z=-113.5 (expected a 3.27 mm
step)".

Decisions, written down once:

* **Nothing is resampled here.** Steps within ``slice_spacing_tolerance_mm``
  of the median are accepted as they are: the affine takes the mean step
  and every source position is kept for the writer. A missing slice, uneven
  steps, a duplicate position or a gantry tilt beyond
  ``max_gantry_tilt_degrees`` are refused, because an interpolated slice
  would put invented anatomy under a PET that looks measured. A tilt within
  the limit is kept exactly as a sheared affine, not resampled.
* **Dropped with a note** (the note is logged and kept with the job): images
  whose ImageType says LOCALIZER/SCOUT, secondary captures, and a non-axial
  image that shares its orientation with at most one other image -- a scout
  that is plainly a separate acquisition, which a PACS administrator
  expects to be ignored. A larger non-axial group (reformats mixed in) is
  refused: guessing which stack was meant is not ours to do.
* **Refused**: another modality, any non-CT image class, a missing or
  non-finite position/orientation/spacing, mixed rows/columns/pixel
  spacing/orientation, more than one (or no) frame of reference, a
  non-axial stack, fewer than ``min_slices`` slices.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from ct2pet_node.config import RoutingConfig
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.series import OrderedSlice, QualifiedSeries
from ct2pet_node.domain.uids import Uid
from ct2pet_node.errors import SeriesRefused
from ct2pet_node.routing.refusals import grid_refusal, stacking_refusal
from ct2pet_node.routing.stack import (
    CT_IMAGE_SOP_CLASSES,
    analyse_grid,
    degrees_from_axial,
    expand_frames,
    finite,
    is_localizer,
    is_secondary_capture,
    slice_normal,
    sort_along_normal,
)

# The slice normal may lean this far from the head-foot axis and still count
# as axial (a plane tilt with slices stacked along the normal is merely oblique;
# a gantry tilt, slices stacked along z, is judged by max_gantry_tilt_degrees).
AXIAL_TOLERANCE_DEGREES = 5.0
# Cosine differences up to this are rounding in the sender, not another orientation (~0.06 degrees).
ORIENTATION_TOLERANCE = 1e-3
# Relative difference in PixelSpacing treated as equal.
PIXEL_SPACING_TOLERANCE = 1e-4
# Non-axial images dropped as scouts only in groups this small.
MAX_DROPPED_NON_AXIAL = 2

__all__ = ["OrderedSlice", "QualifiedSeries", "qualify_series"]


def qualify_series(headers: Sequence[SliceHeader], rules: RoutingConfig) -> QualifiedSeries:
    """Check a complete series and put its slices in order, or refuse it.

    Parameters
    ----------
    headers : sequence of SliceHeader
        Every instance of one series, in any order.
    rules : RoutingConfig
        ``min_slices``, ``max_gantry_tilt_degrees``, ``slice_spacing_tolerance_mm``.

    Raises
    ------
    SeriesRefused
        With one specific reason (the first problem found).
    """
    notes: list[str] = []
    images = _select_images(headers, notes)
    _require_finite_geometry(images)
    _require_gantry_tilt(images, rules.max_gantry_tilt_degrees)
    images = _keep_axial(images, notes)
    _require_consistent(images)
    frame_of_reference = _one_frame_of_reference(images)
    orientation = images[0].image_orientation
    assert orientation is not None
    normal = slice_normal(orientation)
    ordered = sort_along_normal(expand_frames(images), normal)
    if len(ordered) < rules.min_slices:
        raise SeriesRefused(
            f"series has {len(ordered)} slice(s), at least {rules.min_slices} are needed "
            "([routing] min_slices); send the whole axial series"
        )
    grid = analyse_grid(ordered, normal, rules.slice_spacing_tolerance_mm)
    if not grid.regular:
        raise SeriesRefused(grid_refusal(ordered, grid, rules.slice_spacing_tolerance_mm))
    affine = _affine(ordered, orientation, images[0].pixel_spacing, images[0].slice_thickness)
    refusal = stacking_refusal(ordered, affine, normal, rules)
    if refusal:
        raise SeriesRefused(refusal)
    affine.setflags(write=False)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return QualifiedSeries(
        series_uid=images[0].series_uid,
        study_uid=images[0].study_uid,
        frame_of_reference_uid=frame_of_reference,
        slices=tuple(ordered),
        affine=affine,
        spacing=(float(norms[0]), float(norms[1]), float(norms[2])),
        rows=images[0].rows,
        columns=images[0].columns,
        kvp=next((h.kvp for h in images if h.kvp is not None), None),
        notes=tuple(notes),
    )


def _select_images(headers: Sequence[SliceHeader], notes: list[str]) -> list[SliceHeader]:
    """Drop duplicates, localizers and secondary captures; refuse other modalities and classes."""
    if not headers:
        raise SeriesRefused("series has no instances; nothing to translate")
    unique: dict[str, SliceHeader] = {}
    for header in headers:
        unique.setdefault(header.sop_instance_uid, header)
    if len(unique) < len(headers):
        notes.append(f"{len(headers) - len(unique)} instance(s) received more than once; each used once")
    modalities = Counter(h.modality or "(none)" for h in unique.values())
    if "CT" not in modalities:
        shown = ", ".join(sorted(modalities))
        raise SeriesRefused(f"series modality is {shown}, not CT; only CT series are translated to PET")
    for header in unique.values():
        if header.modality != "CT":
            raise SeriesRefused(
                f"series mixes modalities: instance {header.sop_instance_uid} is "
                f"{header.modality or '(no modality)'} among CT images; send the CT series alone"
            )
    images: list[SliceHeader] = []
    for header in unique.values():
        if is_secondary_capture(header):
            notes.append(f"dropped secondary capture {header.sop_instance_uid}: not a slice of the volume")
        elif is_localizer(header):
            image_type = "\\".join(header.image_type)
            notes.append(
                f"dropped localizer {header.sop_instance_uid} (ImageType {image_type}): "
                "a separate scout acquisition"
            )
        elif str(header.sop_class_uid) not in CT_IMAGE_SOP_CLASSES:
            raise SeriesRefused(
                f"instance {header.sop_instance_uid} has SOP class {header.sop_class_uid}, not a CT image; "
                "send CT Image Storage or Enhanced CT only"
            )
        else:
            images.append(header)
    if not images:
        raise SeriesRefused("series holds only localizers or secondary captures, no axial CT slices")
    return images


def _require_finite_geometry(images: Sequence[SliceHeader]) -> None:
    for header in images:
        checks = (
            ("ImagePositionPatient", header.image_position),
            ("ImageOrientationPatient", header.image_orientation),
            ("PixelSpacing", header.pixel_spacing),
        )
        for keyword, value in checks:
            if value is None:
                raise SeriesRefused(
                    f"instance {header.sop_instance_uid} has no {keyword}; its slice cannot be placed"
                )
            if not finite(value):
                shown = "\\".join(str(v) for v in value)
                raise SeriesRefused(
                    f"instance {header.sop_instance_uid} has a non-finite {keyword} ({shown}); "
                    "fix the sender's geometry"
                )
        for number, position in enumerate(header.frame_positions, start=1):
            if not finite(position):
                raise SeriesRefused(
                    f"frame {number} of instance {header.sop_instance_uid} has a non-finite "
                    f"ImagePositionPatient ({position}); fix the sender's geometry"
                )
        if header.pixel_spacing is not None and min(header.pixel_spacing) <= 0:
            raise SeriesRefused(
                f"instance {header.sop_instance_uid} has PixelSpacing {header.pixel_spacing}; "
                "spacing must be above 0 mm"
            )
        _require_orthonormal(header)


def _require_orthonormal(header: SliceHeader) -> None:
    orientation = header.image_orientation
    assert orientation is not None
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(col) - 1) > 0.01
        or abs(float(np.dot(row, col))) > 0.01
    ):
        raise SeriesRefused(
            f"instance {header.sop_instance_uid} has an ImageOrientationPatient {orientation} that is not "
            "two perpendicular unit vectors; fix the sender's geometry"
        )


def _require_gantry_tilt(images: Sequence[SliceHeader], max_degrees: float) -> None:
    for header in images:
        tilt = header.gantry_tilt
        if tilt is not None and math.isfinite(tilt) and abs(tilt) > max_degrees:
            raise SeriesRefused(
                f"gantry tilt {tilt:.1f}° (instance {header.sop_instance_uid}) exceeds "
                f"the {max_degrees:.1f}° this node accepts ([routing] max_gantry_tilt_degrees); "
                "send a reconstruction without tilt"
            )


def _keep_axial(images: list[SliceHeader], notes: list[str]) -> list[SliceHeader]:
    """Keep axial images; drop tiny non-axial groups as scouts, refuse larger ones."""
    axial: list[SliceHeader] = []
    groups: dict[tuple[float, ...], list[SliceHeader]] = defaultdict(list)
    for header in images:
        assert header.image_orientation is not None
        if degrees_from_axial(header.image_orientation) <= AXIAL_TOLERANCE_DEGREES:
            axial.append(header)
        else:
            groups[tuple(round(v, 2) for v in header.image_orientation)].append(header)
    if not axial:
        angle = degrees_from_axial(images[0].image_orientation or ())
        raise SeriesRefused(
            f"series is not axial: its slice normal is {angle:.1f}° from the patient's head-foot axis "
            f"(ImageOrientationPatient {images[0].image_orientation}); send an axial CT series"
        )
    for group in groups.values():
        if len(group) > MAX_DROPPED_NON_AXIAL:
            n_other = sum(len(g) for g in groups.values())
            raise SeriesRefused(
                f"series mixes {len(axial)} axial and {n_other} non-axial images (e.g. instance "
                f"{group[0].sop_instance_uid}, ImageOrientationPatient {group[0].image_orientation}); "
                "send the axial reconstruction alone"
            )
        for header in group:
            notes.append(
                f"dropped non-axial image {header.sop_instance_uid} "
                f"(ImageOrientationPatient {header.image_orientation}): treated as a localizer"
            )
    return axial


def _require_consistent(images: Sequence[SliceHeader]) -> None:
    first = images[0]
    assert first.image_orientation is not None and first.pixel_spacing is not None
    for header in images[1:]:
        assert header.image_orientation is not None and header.pixel_spacing is not None
        if (header.rows, header.columns) != (first.rows, first.columns):
            raise SeriesRefused(
                f"slices differ in size: instance {first.sop_instance_uid} is {first.rows}x{first.columns}, "
                f"instance {header.sop_instance_uid} is {header.rows}x{header.columns} (rows x columns); "
                "send one reconstruction"
            )
        if not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=PIXEL_SPACING_TOLERANCE, atol=0):
            raise SeriesRefused(
                f"slices differ in pixel spacing: instance {first.sop_instance_uid} has "
                f"{_mm(first.pixel_spacing)}, instance {header.sop_instance_uid} has "
                f"{_mm(header.pixel_spacing)}; send one reconstruction"
            )
        if not np.allclose(header.image_orientation, first.image_orientation, atol=ORIENTATION_TOLERANCE):
            raise SeriesRefused(
                f"slices differ in orientation: instance {first.sop_instance_uid} has "
                f"{first.image_orientation}, instance {header.sop_instance_uid} has "
                f"{header.image_orientation}; send one reconstruction"
            )


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values) + " mm"


def _one_frame_of_reference(images: Sequence[SliceHeader]) -> Uid:
    counts = Counter(h.frame_of_reference_uid for h in images)
    if None in counts:
        missing = next(h for h in images if h.frame_of_reference_uid is None)
        raise SeriesRefused(
            f"instance {missing.sop_instance_uid} has no FrameOfReferenceUID; its position cannot be "
            "related to the others, fix the sender"
        )
    if len(counts) > 1:
        shown = ", ".join(f"{uid} on {n} slice(s)" for uid, n in counts.most_common())
        raise SeriesRefused(
            f"series has {len(counts)} frames of reference ({shown}); refusing to build one volume from them"
        )
    uid = next(iter(counts))
    assert uid is not None
    return uid


def _affine(
    ordered: Sequence[OrderedSlice],
    orientation: Sequence[float],
    pixel_spacing: tuple[float, float] | None,
    slice_thickness: float | None,
) -> np.ndarray:
    """Voxel (x, y, z, 1) -> LPS mm; the z column is the mean step from first to last slice."""
    assert pixel_spacing is not None
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    first = np.asarray(ordered[0].position, float)
    if len(ordered) > 1:
        step = (np.asarray(ordered[-1].position, float) - first) / (len(ordered) - 1)
    else:
        # One slice has no step: its thickness along the normal is the best stand-in.
        step = slice_normal(orientation) * (slice_thickness or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * pixel_spacing[1]
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first
    return affine

"""decide_completion: forced, geometry-complete (with and without a count), settled and quiet series."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ct2pet_node.dicom.volume import scan_folder
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.uids import SeriesUid, SopInstanceUid, StudyUid, Uid
from ct2pet_node.routing.completion import decide_completion

CT = Uid("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT = Uid("1.2.840.10008.5.1.4.1.1.2.1")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def header(index: int, z: float, *, count: int | None = None, **changes: object) -> SliceHeader:
    base = SliceHeader(
        sop_instance_uid=SopInstanceUid(f"1.2.3.{index + 1}"),
        sop_class_uid=CT,
        series_uid=SeriesUid("1.2.3"),
        study_uid=StudyUid("1.2"),
        frame_of_reference_uid=Uid("1.2.4"),
        modality="CT",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        instance_number=index + 1,
        rows=64,
        columns=64,
        image_position=(0.0, 0.0, z),
        image_orientation=AXIAL,
        pixel_spacing=(0.9, 0.9),
        slice_thickness=3.0,
        gantry_tilt=None,
        images_in_acquisition=count,
        kvp=120.0,
        frames=1,
        frame_positions=(),
        path=Path(f"/spool/{index}.dcm"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def stack(
    n: int, *, step: float = 3.0, count: int | None = None, skip: tuple[int, ...] = ()
) -> list[SliceHeader]:
    # Arrival order is not position order, as from a real scanner sending in parallel.
    return [header(k, -100.0 + step * k, count=count) for k in reversed(range(n)) if k not in skip]


def test_forced_completes_at_once() -> None:
    decision = decide_completion(stack(3), last_instance_at=100.0, now=100.0, quiet_seconds=30, forced=True)
    assert decision.complete and decision.why == "forced by operator"


def test_quiet_series_completes_after_quiet_seconds() -> None:
    decision = decide_completion(stack(30), last_instance_at=100.0, now=130.0, quiet_seconds=30, forced=False)
    assert decision.complete and decision.why == "quiet for 30 s"


def test_series_still_arriving_waits_and_says_how_long() -> None:
    decision = decide_completion(stack(30), last_instance_at=100.0, now=120.0, quiet_seconds=30, forced=False)
    assert not decision.complete
    assert decision.recheck_in_seconds == pytest.approx(10.0)
    assert "quiet after 30 s" in decision.why


def test_geometry_with_matching_images_in_acquisition_completes_early() -> None:
    decision = decide_completion(
        stack(30, step=3.27, count=30), last_instance_at=100.0, now=100.0, quiet_seconds=30, forced=False
    )
    assert decision.complete
    assert decision.why == "geometry complete: 30 of 30 slices on a 3.27 mm grid"


def test_regular_grid_without_a_count_is_not_proof() -> None:
    # A series arriving in slice order is a gap-free grid after every instance.
    decision = decide_completion(stack(30), last_instance_at=100.0, now=101.0, quiet_seconds=30, forced=False)
    assert not decision.complete


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(stack(29, count=30), id="one short of ImagesInAcquisition"),
        pytest.param(stack(31, count=30, skip=(12,)), id="count met but a slice missing in the middle"),
        pytest.param(
            [*stack(29, count=30), header(99, -100.0 + 3.0 * 5, count=30)], id="count met with a duplicate"
        ),
        pytest.param(
            [
                h if i else dataclasses.replace(h, images_in_acquisition=31)
                for i, h in enumerate(stack(30, count=30))
            ],
            id="counts disagree",
        ),
    ],
)
def test_incomplete_geometry_waits_for_quiet(headers: list[SliceHeader]) -> None:
    decision = decide_completion(headers, last_instance_at=100.0, now=101.0, quiet_seconds=30, forced=False)
    assert not decision.complete


def test_localizer_is_not_counted() -> None:
    scout = header(
        99,
        0.0,
        count=30,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    )
    decision = decide_completion(
        [scout, *stack(30, count=30)], last_instance_at=100.0, now=100.0, quiet_seconds=30, forced=False
    )
    assert decision.complete and decision.why.startswith("geometry complete: 30 of 30")


def test_single_enhanced_instance_is_its_own_count() -> None:
    positions = tuple((0.0, 0.0, -100.0 + 2.0 * k) for k in reversed(range(40)))
    enhanced = header(0, -22.0, sop_class_uid=ENHANCED_CT, frames=40, frame_positions=positions)
    decision = decide_completion(
        [enhanced], last_instance_at=100.0, now=100.0, quiet_seconds=30, forced=False
    )
    assert decision.complete
    assert decision.why == "geometry complete: 40 of 40 slices on a 2.00 mm grid"


def test_sample_completes_by_geometry_once_it_states_its_count(sample_dir: Path) -> None:
    (headers,) = scan_folder(sample_dir / "CT").values()
    # The GE sample carries no ImagesInAcquisition: it completes by the quiet rule.
    assert not decide_completion(headers, 100.0, 101.0, 30, False).complete
    assert decide_completion(headers, 100.0, 130.0, 30, False).why == "quiet for 30 s"
    counted = [dataclasses.replace(h, images_in_acquisition=247) for h in headers]
    decision = decide_completion(counted, 100.0, 100.0, 30, False)
    assert decision.complete
    assert decision.why == "geometry complete: 247 of 247 slices on a 3.27 mm grid"


# The settle rule: the association that brought every instance was released at RELEASED.
RELEASED = 110.0


def settle(headers: list[SliceHeader], now: float, *, settle_seconds: float = 3.0, quiet: float = 30.0):
    return decide_completion(
        headers,
        last_instance_at=RELEASED - 1,
        now=now,
        quiet_seconds=quiet,
        forced=False,
        released_at=RELEASED,
        settle_seconds=settle_seconds,
    )


def test_a_released_gap_free_series_completes_after_the_settle_time() -> None:
    waiting = settle(stack(30, step=3.27), RELEASED + 2.0)
    assert not waiting.complete
    assert waiting.settles_at == RELEASED + 3.0
    assert waiting.recheck_in_seconds == pytest.approx(1.0)  # the settle time, not the quiet rule's 27 s
    assert "settled in 1 s" in waiting.why
    done = settle(stack(30, step=3.27), RELEASED + 3.0)
    assert done.complete
    assert done.why == ("settled 3 s after its association was released: 30 slices on a 3.27 mm grid, no gap")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(stack(30, skip=(12,)), id="a slice missing in the middle"),
        pytest.param([*stack(29), header(99, -100.0 + 3.0 * 5)], id="a duplicate position"),
        pytest.param(stack(1), id="one slice is no stack"),
        pytest.param(
            [
                h if i else dataclasses.replace(h, image_orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
                for i, h in enumerate(stack(30))
            ],
            id="two orientations",
        ),
    ],
)
def test_a_released_series_that_is_not_one_gap_free_stack_waits_for_quiet(headers: list[SliceHeader]) -> None:
    decision = settle(headers, RELEASED + 10.0)
    assert not decision.complete
    assert decision.settles_at is None
    assert decision.recheck_in_seconds == pytest.approx(30.0 - 11.0)
    assert settle(headers, RELEASED - 1 + 30.0).why == "quiet for 30 s"


def test_settle_seconds_zero_turns_the_rule_off() -> None:
    decision = settle(stack(30), RELEASED + 10.0, settle_seconds=0.0)
    assert not decision.complete and decision.settles_at is None


def test_without_a_release_a_gap_free_series_waits_for_quiet() -> None:
    decision = decide_completion(
        stack(30), last_instance_at=100.0, now=120.0, quiet_seconds=30, forced=False, settle_seconds=3.0
    )
    assert not decision.complete and decision.settles_at is None


def test_the_quiet_rule_still_applies_when_it_comes_first() -> None:
    # A settle time longer than the quiet period: whichever rule comes first completes it.
    decision = settle(stack(30), RELEASED - 1 + 30.0, settle_seconds=60.0, quiet=30.0)
    assert decision.complete and decision.why == "quiet for 30 s"


def test_the_sample_settles_after_release(sample_dir: Path) -> None:
    (headers,) = scan_folder(sample_dir / "CT").values()
    decision = settle(headers, RELEASED + 3.0)
    assert decision.complete
    assert decision.why.endswith("247 slices on a 3.27 mm grid, no gap")

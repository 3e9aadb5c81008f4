"""When a series is complete and how results are delivered: ``[routing]`` and ``[delivery]``."""

from __future__ import annotations

from ct2pet_node.config.checks import Checker
from ct2pet_node.config.model import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAYS_SECONDS,
    DeliveryConfig,
    RoutingConfig,
)


def parse_routing(check: Checker) -> RoutingConfig:
    table = check.table("routing")
    check.unknown_keys("[routing]", table, set(RoutingConfig.__slots__))
    number = (int, float)
    quiet = check.get("[routing]", table, "series_quiet_seconds", number, lambda v: v > 0, "seconds, above 0")
    min_slices = check.get("[routing]", table, "min_slices", int, lambda v: v >= 1, "a count, 1 or more")
    tilt = check.get(
        "[routing]", table, "max_gantry_tilt_degrees", number, lambda v: 0 <= v < 45, "degrees, 0 to 45"
    )
    tolerance = check.get(
        "[routing]", table, "slice_spacing_tolerance_mm", number, lambda v: v > 0, "millimetres, above 0"
    )
    settle = check.get(
        "[routing]", table, "settle_after_release_seconds", number, lambda v: v >= 0, "seconds, 0 or more"
    )
    return RoutingConfig(
        series_quiet_seconds=float(quiet or 0),
        min_slices=min_slices or 0,
        max_gantry_tilt_degrees=float(tilt or 0),
        slice_spacing_tolerance_mm=float(tolerance or 0),
        settle_after_release_seconds=float(settle or 0),
    )


def parse_delivery(check: Checker) -> DeliveryConfig:
    table = check.table("delivery")
    check.unknown_keys("[delivery]", table, set(DeliveryConfig.__slots__))
    number = (int, float)
    delays = check.get(
        "[delivery]", table, "retry_delays_seconds", list, bool, "a non-empty list of seconds, e.g. [10, 60]"
    )
    clean: list[float] = []
    for delay in delays or []:
        if isinstance(delay, number) and not isinstance(delay, bool) and delay >= 0:
            clean.append(float(delay))
        else:
            check.problems.append(
                f"[delivery] retry_delays_seconds: {delay!r} is not a number of seconds >= 0"
            )
    attempts = check.get("[delivery]", table, "max_attempts", int, lambda v: v >= 1, "a count, 1 or more")
    timeouts: dict[str, float | None] = {}
    for key in ("connect_timeout_seconds", "acse_timeout_seconds", "dimse_timeout_seconds"):
        # Optional: absent means [node] network_timeout_seconds, as before this table existed.
        value = (
            check.get("[delivery]", table, key, number, lambda v: v > 0, "seconds, above 0")
            if key in table
            else None
        )
        timeouts[key] = None if value is None else float(value)
    defaults = DeliveryConfig()
    batch = {
        key: check.get("[delivery]", table, key, int, lambda v: v >= 1, "a count, 1 or more")
        for key in ("stow_batch_instances", "stow_batch_mb")
        if key in table
    }
    return DeliveryConfig(
        retry_delays_seconds=tuple(clean) or DEFAULT_RETRY_DELAYS_SECONDS,
        max_attempts=attempts or DEFAULT_MAX_ATTEMPTS,
        **timeouts,
        stow_batch_instances=batch.get("stow_batch_instances") or defaults.stow_batch_instances,
        stow_batch_mb=batch.get("stow_batch_mb") or defaults.stow_batch_mb,
    )

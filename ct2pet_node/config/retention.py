"""``[retention]``: how long the files of finished jobs stay, and when ``status`` warns of disk space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ct2pet_node.config.checks import Checker
from ct2pet_node.config.model import RetentionConfig

# The spelling of "keep these files forever" in the TOML, which has no null.
FOREVER = "forever"
_DAYS_FIX = f'days, 0 or more (0: as soon as allowed), or "{FOREVER}"'


def parse_retention(check: Checker) -> RetentionConfig:
    table = check.table("retention")
    check.unknown_keys("[retention]", table, set(RetentionConfig.__slots__))
    defaults = RetentionConfig()
    interval = _optional(check, table, "interval_minutes", (int, float), lambda v: v > 0, "minutes, above 0")
    warn = _optional(check, table, "warn_free_mb", int, lambda v: v >= 0, "megabytes, 0 or more")
    return RetentionConfig(
        spool_days=_days(check, table, "spool_days", defaults.spool_days),
        results_days=_days(check, table, "results_days", defaults.results_days),
        refused_days=_days(check, table, "refused_days", defaults.refused_days),
        interval_minutes=float(defaults.interval_minutes if interval is None else interval),
        warn_free_mb=defaults.warn_free_mb if warn is None else warn,
    )


def _days(check: Checker, table: Mapping[str, Any], key: str, default: float | None) -> float | None:
    if key not in table:  # a file written before [retention] existed gets the defaults
        return default
    value = check.get(
        "[retention]",
        table,
        key,
        (int, float, str),
        lambda v: v == FOREVER if isinstance(v, str) else v >= 0,
        _DAYS_FIX,
    )
    if value == FOREVER:
        return None
    return default if value is None else float(value)


def _optional(
    check: Checker, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], rule: Any, fix: str
) -> Any:
    return check.get("[retention]", table, key, kind, rule, fix) if key in table else None


def check_warning_above_watermark(check: Checker, retention: RetentionConfig, min_free_mb: int) -> None:
    """The warning is worth having only before the node starts refusing CT."""
    if retention.warn_free_mb and retention.warn_free_mb <= min_free_mb:
        check.problems.append(
            f"[retention] warn_free_mb: {retention.warn_free_mb} is not above [node] min_free_mb "
            f"({min_free_mb}), so status would warn only once CT is refused; raise it (e.g. "
            f"{max(10 * min_free_mb, 1024)}) or set 0 for no warning"
        )

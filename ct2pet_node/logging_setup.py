"""One logging pipeline for our events and for pynetdicom's stdlib logs.

JSON lines when stderr is not a terminal (systemd's journal, CI), a console
renderer on a terminal. Events carry UIDs, never patient names or IDs; the
patient-data scrubber below is a second line of defence for third-party
messages (pynetdicom can dump whole datasets at DEBUG).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# pynetdicom logs dataset summaries at DEBUG and some header fields at INFO;
# keep it at WARNING unless the operator asked for debug explicitly.
_THIRD_PARTY_LEVEL = logging.WARNING
_PATIENT_FIELD = re.compile(
    r"(Patient(?:'s)?\s*(?:Name|ID|Birth\s*Date)|\(0010,00(?:10|20|30)\))(.{0,3}?)[:=]?\s*\S.*", re.I
)


def _scrub_patient_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    message = event_dict.get("event")
    if isinstance(message, str) and _PATIENT_FIELD.search(message):
        event_dict["event"] = _PATIENT_FIELD.sub(r"\1: <removed>", message)
    return event_dict


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Route structlog and stdlib logging through one renderer.

    Parameters
    ----------
    level : str
        "debug", "info", "warning" or "error".
    json : bool or None
        Force JSON (True) or console (False); None chooses by whether stderr is a TTY.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub_patient_fields,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    third_party = numeric if numeric <= logging.DEBUG else max(numeric, _THIRD_PARTY_LEVEL)
    logging.getLogger("pynetdicom").setLevel(third_party)
    logging.getLogger("pydicom").setLevel(max(numeric, logging.WARNING))

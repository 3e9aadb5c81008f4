"""The Server: start and stop order of the components, and the second signal that forces exit.

The components are recording stand-ins: what is checked here is the order
STYLE.md's "Threads" paragraph gives, not what each component does (each
has its own tests; tests/unit/test_app.py runs a real node).
"""

from __future__ import annotations

import signal
from typing import Any, cast

from ct2pet_node.config import load_config
from ct2pet_node.service.recent_errors import RecentErrors
from ct2pet_node.service.server import Components, Server


class Recorder:
    """Every component at once: each call is logged as "<component>.<method>"."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def part(self, name: str) -> Any:
        recorder = self

        class Part:
            current_job = None
            translator = type("T", (), {"model_id": "fake"})()

            def __getattr__(self, method: str) -> Any:
                def call(*args: object, **kwargs: object) -> object:
                    recorder.calls.append(f"{name}.{method}")
                    return [] if method == "list_jobs" else True

                return call

        return Part()


def _server(recorder: Recorder, exits: list[int] | None = None) -> Server:
    names = ("store", "outbox", "router", "worker", "sender", "scp", "admin", "metrics", "errors")
    names += ("retention",)
    parts = {name: recorder.part(name) for name in names}
    parts["errors"] = RecentErrors()
    return Server(
        load_config(), cast(Any, Components)(**parts), force_exit=([] if exits is None else exits).append
    )


def test_start_recovers_then_starts_in_the_order_data_flows() -> None:
    recorder = Recorder()
    _server(recorder).start()
    started = [call for call in recorder.calls if call.endswith(".start")]
    assert started == [
        "router.start",
        "worker.start",
        "sender.start",
        "retention.start",
        "admin.start",
        "scp.start",
    ]
    # Recovery reads the stores before any thread starts.
    assert recorder.calls.index("store.list_jobs") < recorder.calls.index("router.start")


def test_stop_stops_accepting_first_and_closes_the_stores_last() -> None:
    recorder = Recorder()
    _server(recorder).stop()
    assert recorder.calls == [
        "worker.request_stop",  # the engine checkpoints while associations drain
        "scp.stop",
        "router.stop",
        "worker.stop",
        "sender.stop",
        "retention.stop",
        "admin.stop",
        "outbox.close",
        "store.close",
    ]


def test_a_second_signal_forces_exit() -> None:
    exits: list[int] = []
    server = _server(Recorder(), exits)
    server.request_stop(signal.SIGTERM)
    assert exits == []
    server.request_stop(signal.SIGINT)
    assert exits == [1]

"""A fake Ray for the driver's dispatch loop: actors whose chunks finish in the order they were sent.

Also a driver process entry point on it (:func:`fake_serve`), so the node's
RayTranslator can be tested against the real driver loop without a cluster.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

import numpy as np

from ct2pet_node.cluster.driver import DriverSettings, _Pool


class ActorDied(Exception):
    pass


class TaskFailed(Exception):
    cause: BaseException | None = None


class Ref:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class FakeRay:
    """Just what the driver calls: actors whose chunks finish in the order they were sent."""

    exceptions = SimpleNamespace(RayActorError=ActorDied, RayTaskError=TaskFailed)

    def __init__(self, deaths: int = 0) -> None:
        self.deaths = deaths
        self.started = 0

    def remote(self, _cls: Any) -> Any:
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=self._actor))

    def _actor(self, _spec: Any) -> Any:
        self.started += 1

        def translate(chunk: np.ndarray, kvp: Any, steps: Any, eta: Any, seed: Any, first: int) -> Ref:
            if self.deaths:
                self.deaths -= 1
                return Ref(error=ActorDied("the actor died"))
            return Ref(np.full(chunk.shape, first, dtype=np.float32))

        return SimpleNamespace(translate=SimpleNamespace(remote=translate))

    def wait(self, refs: list[Ref], num_returns: int, timeout: float) -> tuple[list[Ref], list[Ref]]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: Ref) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value


def fake_serve(conn: Connection, settings: DriverSettings, deaths: int = 0) -> None:
    """What ``driver.serve`` does once connected, on :class:`FakeRay`: actors ``fake-<n>`` on the CPU."""
    pool = _Pool(FakeRay(deaths), settings)
    pool.actors = [pool.start_actor() for _ in range(settings.actors)]
    described = [
        {"host": f"fake-{n}", "pid": os.getpid(), "device": "cpu", "model_id": None, "refusal": None}
        for n in range(settings.actors)
    ]
    conn.send(("ready", described))
    pool.idle.extend(range(settings.actors))
    pool.serve(conn)

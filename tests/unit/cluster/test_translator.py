"""The node's RayTranslator against the real driver loop on a fake Ray (no cluster): demux, ledger, retries."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from unit.cluster.fake_ray import fake_serve

from ct2pet_node.cluster.translator import RayTranslator
from ct2pet_node.config import RayConfig, load_config

CHUNK = 4


def _translator(tmp_path: Path, deaths: int = 0) -> RayTranslator:
    config = load_config()
    engine = dataclasses.replace(
        config.engine,
        weights=str(REPO_ROOT / "weights" / "demo"),
        device="cpu",
        backend="ray",
        ray=RayConfig("127.0.0.1:6379", 2, 0.0, 1.0, "test", "wait"),
    )
    config = dataclasses.replace(
        config, engine=engine, node=dataclasses.replace(config.node, data_dir=tmp_path)
    )
    return RayTranslator(config, driver=functools.partial(fake_serve, deaths=deaths))


@pytest.fixture
def ready(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RayTranslator]:
    translator = _translator(tmp_path, deaths=getattr(request, "param", 0))
    try:
        deadline = time.monotonic() + 60
        while not (translator.ready() and translator.state == "ready"):
            assert time.monotonic() < deadline, translator.cluster_status(0)
            time.sleep(0.1)
        yield translator
    finally:
        translator.close()


def _spread(translator: RayTranslator, slices: int, first: int) -> dict[int, np.ndarray]:
    region = np.zeros((slices, 2, 2), dtype=np.float32)
    chunks = [range(start, min(start + CHUNK, slices)) for start in range(0, slices, CHUNK)]
    got: dict[int, np.ndarray] = {}
    for chunk, values in translator.translate_chunks(
        region, chunks, kvp=None, steps=3, eta=None, seed=0, first_slice_index=first
    ):
        assert chunk.start not in got, f"chunk {chunk.start} came back twice"
        got[chunk.start] = values
    return got


def test_two_jobs_at_once_each_get_their_own_chunks_and_the_ledger_counts_both(ready: RayTranslator) -> None:
    results: dict[int, dict[int, np.ndarray]] = {}
    threads = [
        threading.Thread(target=lambda first=first: results.__setitem__(first, _spread(ready, 24, first)))
        for first in (0, 1000)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for first in (0, 1000):
        # The fake actor answers each chunk with its noise index: the job's first slice + the chunk's.
        assert {start: float(values[0, 0, 0]) for start, values in results[first].items()} == {
            start: float(first + start) for start in range(0, 24, CHUNK)
        }
    snapshot = ready.cluster_snapshot(time.time())
    assert [(actor.name, actor.host, actor.device) for actor in snapshot.actors] == [
        ("actor-0", "fake-0", "cpu"),
        ("actor-1", "fake-1", "cpu"),
    ]
    assert sum(actor.slices_done for actor in snapshot.actors) == 48
    assert snapshot.chunks_in_flight == 0 and snapshot.slices_per_second > 0 and snapshot.chunk_retries == 0


@pytest.mark.parametrize("ready", [1], indirect=True)
def test_a_dead_actor_is_counted_as_a_retry_and_its_chunk_comes_back_once(ready: RayTranslator) -> None:
    got = _spread(ready, 12, 0)
    assert sorted(got) == [0, 4, 8]
    snapshot = ready.cluster_snapshot(time.time())
    assert ready.retries == snapshot.chunk_retries == 1
    assert sum(actor.restarts for actor in snapshot.actors) == 1
    assert sum(actor.slices_done for actor in snapshot.actors) == 12

"""The Ray backend on a real two-node Ray cluster, on the loopback of a private network namespace.

The cluster, the node's driver and every check run in one ``unshare -n``
process (tests/integration/ray_scenarios.py), because a Ray driver must share
the cluster's network; its JSON verdict is asserted here. Token
authentication on, dashboard off: nothing leaves the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from peers import namespaces_unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def verdict(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    why = namespaces_unavailable()
    if why is not None:
        pytest.skip(why)
    if shutil.which("ray") is None:
        pytest.fail('the ray command is missing: install the test extra (pip install -e ".[test]")')
    work = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    script = REPO_ROOT / "tests" / "integration" / "ray_scenarios.py"
    run = subprocess.run(
        ["unshare", "-n", sys.executable, str(script), str(tiny_weights), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=work,
    )
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_two_actors_on_two_nodes_equal_the_local_translation_bit_for_bit(verdict: dict[str, Any]) -> None:
    assert len(verdict["actors"]) == 2
    assert verdict["identical"] and verdict["chunks_once"]
    # Two requests at once (two jobs in flight) share the actors and each gets exactly its chunks.
    assert verdict["concurrent_identical"]


def test_an_actor_killed_mid_study_gives_the_same_series_once(verdict: dict[str, Any]) -> None:
    assert verdict["retries"] >= 1
    assert verdict["killed_identical"] and verdict["killed_chunks_once"]


def test_a_lost_head_leaves_the_job_waiting_with_a_status_line_and_it_completes_when_back(
    verdict: dict[str, Any],
) -> None:
    assert verdict["state_after_loss"] == "waiting"
    assert "engine cluster 127.0.0.1:6379 unreachable since" in verdict["reason_after_loss"]
    assert verdict["status_line"].startswith("engine cluster 127.0.0.1:6379 unreachable since ")
    assert verdict["status_line"].endswith(", 1 jobs waiting")
    assert verdict["checkpoints_kept"] >= 1 and verdict["ready_while_down"] is False
    assert verdict["state_after_return"] == "done" and verdict["outputs"] == 40
    # Only the chunks not checkpointed before the loss were translated again.
    assert verdict["translated_after_return"] == 40 - 4 * verdict["checkpoints_kept"]
    # The status JSON shows the actors that came back, their speed, and the retry of the earlier kill.
    cluster = verdict["status_cluster"]
    assert cluster["state"] == "ready" and len(cluster["actors"]) == 2
    assert {actor["device"] for actor in cluster["actors"]} == {"cpu"}
    assert cluster["slices_per_second"] > 0 and cluster["chunks_in_flight"] == 0
    assert cluster["chunk_retries"] >= verdict["retries"] >= 1


def test_a_worker_with_another_model_is_refused_with_a_clear_error(verdict: dict[str, Any]) -> None:
    reason = verdict["refusal"]
    assert "has model other-model-1" in reason and "the node serves" in reason

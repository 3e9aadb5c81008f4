"""Checkpoint files and the stateless learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ct2pet_node.errors import WeightsError
from ct2pet_node.training.checkpoints import StageRun, load_payload, save_atomic


def _run(total: int, fraction: float) -> StageRun:
    layer = torch.nn.Linear(2, 1)
    return StageRun(
        name="demo",
        total_steps=total,
        modules={"layer": layer},
        optimizer=torch.optim.Adam(layer.parameters(), lr=1e-3),
        step_fn=lambda step, gen: layer(torch.ones(1, 2)).sum(),
        generator=torch.Generator().manual_seed(0),
        fingerprint="f",
        lr_final_fraction=fraction,
    )


def test_cosine_decay_runs_from_lr_to_its_final_fraction() -> None:
    run = _run(101, 0.1)
    assert run.lr_at(0) == pytest.approx(1e-3)
    assert run.lr_at(50) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert run.lr_at(100) == pytest.approx(1e-4)
    assert _run(10, 1.0).lr_at(7) == pytest.approx(1e-3)


def test_checkpoints_round_trip_and_leave_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "stage.pt"
    save_atomic(path, {"step": 3, "weights": torch.arange(4.0)})
    loaded = load_payload(path)
    assert loaded is not None and loaded["step"] == 3
    assert torch.equal(loaded["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["stage.pt"]
    assert load_payload(tmp_path / "absent.pt") is None


def test_a_truncated_checkpoint_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "stage.pt"
    save_atomic(path, {"step": 3, "weights": torch.arange(400.0)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="delete it"):
        load_payload(path)

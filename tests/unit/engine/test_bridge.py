"""The Brownian-bridge schedule against the reference vectors and the release's formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.errors import EngineError, WeightsError


@pytest.fixture(scope="module")
def vectors(reference_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(reference_dir / "cpdm-tiny" / "vectors.npz"))


def test_schedule_arrays_match_the_reference(vectors: dict[str, np.ndarray]) -> None:
    schedule = BridgeSchedule(mt_type="linear", max_var=1.0)
    np.testing.assert_allclose(schedule.m_t, vectors["schedule_m_t"], atol=1e-7, rtol=0)
    np.testing.assert_allclose(schedule.variance_t, vectors["schedule_variance_t"], atol=1e-7, rtol=0)


def test_linear_skip_schedule_matches_the_reference(vectors: dict[str, np.ndarray]) -> None:
    schedule = BridgeSchedule(sample_step=5)
    np.testing.assert_array_equal(schedule.timesteps(), vectors["sample_steps"].astype(np.int64))


# The release's timestep lists for T = 1000 (reference README, section 7), written out
# rather than recomputed: the list a formula gives is what this pins.
_RELEASE_STEPS = {
    200: ([999, 993, 988, 983, 978, 973], [15, 10, 5, 1, 0]),
    50: ([999, 978, 957, 936, 915, 894], [62, 41, 20, 1, 0]),
    13: ([999, 908, 817, 726, 635, 544], [272, 181, 90, 1, 0]),
    10: ([999, 874, 749, 624, 499, 374], [374, 249, 124, 1, 0]),
    7: ([999, 799, 599, 399, 199, 1], [599, 399, 199, 1, 0]),
    5: ([999, 666, 333, 1, 0], [999, 666, 333, 1, 0]),
}


@pytest.mark.parametrize("count", sorted(_RELEASE_STEPS))
def test_linear_skip_schedule_visits_exactly_the_releases_timesteps(count: int) -> None:
    steps = BridgeSchedule().timesteps(count)
    head, tail = _RELEASE_STEPS[count]
    assert len(steps) == count
    assert steps[: len(head)].tolist() == head
    assert steps[-len(tail) :].tolist() == tail
    assert np.all(np.diff(steps) < 0)


def test_linear_skip_schedule_of_200_steps_is_not_a_floored_stride() -> None:
    steps = BridgeSchedule().timesteps(200).tolist()
    # floor(999 / 198) = 5 would visit 999, 994, 989, ... and 202 timesteps.
    assert 994 not in steps and 993 in steps
    # The non-integer stride 999 / 198 = 5.045...: gaps of 5 and 6, never a repeat.
    assert set(np.diff(steps[:-2]).tolist()) == {-5, -6}


def test_more_steps_than_timesteps_visits_each_timestep_once() -> None:
    assert BridgeSchedule(num_timesteps=10).timesteps(25).tolist() == list(range(9, -1, -1))


def test_full_schedule_without_skipping() -> None:
    steps = BridgeSchedule(skip_sample=False, num_timesteps=10).timesteps()
    assert steps.tolist() == list(range(9, -1, -1))


def test_cosine_schedule_is_strictly_decreasing_in_range() -> None:
    steps = BridgeSchedule(sample_type="cosine").timesteps(10)
    assert steps[0] == 999 and steps[-1] == 0
    assert np.all(np.diff(steps) < 0)
    raw = (np.cos(np.linspace(0, 1000, 11) / 1000 * np.pi) + 1) / 2 * 1000
    assert steps[1:].tolist() == raw.astype(np.int64)[1:].tolist()


@pytest.mark.parametrize(
    ("index", "value"), [(0, 5.6878e-4), (500, 0.0239385), (998, 0.992548), (999, 0.999)]
)
def test_sin_schedule_is_the_releases_geometric_ramp(index: int, value: float) -> None:
    # Values from the reference README, section 6: not a sine despite the name.
    schedule = BridgeSchedule(mt_type="sin", max_var=0.5)
    assert schedule.m_t[index] == pytest.approx(value, rel=2e-5)
    m = float(schedule.m_t[index])
    assert schedule.variance_t[index] == pytest.approx(2 * (m - m * m) * 0.5, rel=1e-4)


def test_sin_schedule_rises_monotonically_to_its_fixed_end() -> None:
    m_t = BridgeSchedule(mt_type="sin").m_t
    assert np.all(np.diff(m_t) > 0)
    assert m_t[-1] == np.float32(0.999)


def test_q_sample_and_objective_match_the_reference(vectors: dict[str, np.ndarray]) -> None:
    schedule = BridgeSchedule()
    x0, y = torch.from_numpy(vectors["vqgan_encode_pet"]), torch.from_numpy(vectors["vqgan_encode_ct"])
    t, noise = torch.from_numpy(vectors["q_t"]).long(), torch.from_numpy(vectors["q_noise"])
    np.testing.assert_allclose(schedule.q_sample(x0, y, t, noise).numpy(), vectors["q_x_t"], atol=1e-4)
    np.testing.assert_allclose(
        schedule.objective_target(x0, y, t, noise).numpy(), vectors["q_objective"], atol=1e-4
    )


@pytest.mark.parametrize("objective", ["grad", "noise", "ysubx"])
def test_predict_x0_inverts_the_training_target(objective: str) -> None:
    schedule = BridgeSchedule(objective=objective)
    gen = torch.Generator().manual_seed(0)
    x0, y, noise = (torch.randn(3, 2, 4, 4, generator=gen) for _ in range(3))
    # Not near T-1: the noise objective divides by 1 - m_t, which amplifies float32 rounding there.
    t = torch.tensor([0, 500, 900])
    x_t = schedule.q_sample(x0, y, t, noise)
    recovered = schedule.predict_x0(x_t, y, t, schedule.objective_target(x0, y, t, noise))
    torch.testing.assert_close(recovered, x0, atol=1e-5, rtol=0)


def _release_step(
    x0: np.ndarray, y: np.ndarray, x_t: np.ndarray, t: int, n: int, eta: float, noise: np.ndarray
):
    m = np.linspace(0.001, 0.999, 1000)
    var = 2 * (m - m**2)
    sigma2 = (var[t] - var[n] * (1 - m[t]) ** 2 / (1 - m[n]) ** 2) * var[n] / var[t]
    mean = (
        (1 - m[n]) * x0 + m[n] * y + np.sqrt((var[n] - sigma2) / var[t]) * (x_t - (1 - m[t]) * x0 - m[t] * y)
    )
    return mean + np.sqrt(sigma2) * eta * noise


@pytest.mark.parametrize(("t", "next_t", "eta"), [(999, 666, 0.0), (333, 1, 1.0), (1, 0, 0.5)])
def test_step_is_the_release_update(t: int, next_t: int, eta: float) -> None:
    schedule = BridgeSchedule()
    gen = torch.Generator().manual_seed(1)
    x0, y, x_t, noise = (torch.randn(2, 3, 4, 4, generator=gen) for _ in range(4))
    got = schedule.step(x0, y, x_t, t, next_t, noise, eta)
    expected = _release_step(
        *(a.numpy().astype(np.float64) for a in (x0, y, x_t)), t, next_t, eta, noise.numpy()
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_last_step_returns_the_x0_estimate() -> None:
    schedule = BridgeSchedule()
    x0 = torch.ones(1, 3, 2, 2)
    assert schedule.step(x0, torch.zeros_like(x0), torch.zeros_like(x0), 0, None, None) is x0


def test_step_with_eta_needs_noise() -> None:
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(EngineError, match="needs noise"):
        BridgeSchedule().step(x, x, x, 999, 666, None, eta=1.0)


def test_clip_denoised_clamps_the_estimate() -> None:
    schedule = BridgeSchedule(clip_denoised=True)
    x = torch.full((1, 3, 2, 2), 5.0)
    assert schedule.predict_x0(x, x, 10, torch.zeros_like(x)).max().item() == 1.0


def test_config_round_trip_and_bad_values() -> None:
    schedule = BridgeSchedule(mt_type="sin", eta=0.2, sample_step=7)
    assert BridgeSchedule.from_config({**schedule.to_config(), "loss_type": "l1"}) == schedule
    with pytest.raises(WeightsError, match="mt_type 'cubic'"):
        BridgeSchedule(mt_type="cubic")
    with pytest.raises(EngineError, match="too few"):
        BridgeSchedule().timesteps(2)

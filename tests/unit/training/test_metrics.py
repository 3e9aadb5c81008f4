"""The evaluation metrics: known values, skimage-compatible SSIM, and the body mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage  # the test extra installs it: a missing scipy fails, never skips

from ct2pet_node.training import metrics


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """skimage's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)."""
    x, y = np.clip(x, 0, data_range), np.clip(y, 0, data_range)

    def blur(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_mae_is_the_mean_absolute_difference() -> None:
    target = np.zeros((4, 4))
    pred = np.zeros((4, 4))
    pred[0, :] = 2.0
    assert metrics.mae(pred, target) == pytest.approx(0.5)


def test_psnr_known_value_and_identity() -> None:
    target = np.full((8, 8), 3.0)
    assert metrics.psnr(target + 1.0, target, data_range=10.0) == pytest.approx(20.0)
    assert math.isinf(metrics.psnr(target, target, data_range=10.0))


def test_psnr_clips_both_images_to_the_data_range() -> None:
    target = np.full((8, 8), 10.0)
    # 30 SUV is clipped to 10: no error left inside the range the model can represent.
    assert math.isinf(metrics.psnr(np.full((8, 8), 30.0), target, data_range=10.0))


def test_ssim_of_identical_slices_is_one() -> None:
    image = np.random.default_rng(1).random((32, 40)) * 5
    assert metrics.ssim(image, image, data_range=10.0) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_the_skimage_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.gamma(2.0, 1.0, (48, 56))
    pred = target + rng.normal(0, 0.7, target.shape)
    expected = _reference_ssim(pred, target, 12.0)
    assert metrics.ssim(pred, target, data_range=12.0) == pytest.approx(expected, abs=1e-12)
    assert expected < 0.99


def test_ssim_refuses_volumes_and_tiny_slices() -> None:
    with pytest.raises(ValueError, match="one"):
        metrics.ssim(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), 1.0)
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(np.zeros((16, 16)), np.zeros((16, 16)), 0.0)


def _phantom() -> np.ndarray:
    """Air, an elliptic body with an air-filled lung inside, and a couch below joined by a 1-pixel strut."""
    yy, xx = np.mgrid[:64, :64]
    hu = np.full((64, 64), -1000.0)
    body = ((yy - 28) / 18.0) ** 2 + ((xx - 32) / 24.0) ** 2 < 1
    hu[body] = 40.0
    hu[(yy - 26) ** 2 + (xx - 26) ** 2 < 25] = -850.0
    hu[52:55, 4:60] = 300.0
    hu[46:52, 32] = 300.0
    return hu


def test_body_mask_fills_lungs_and_drops_the_couch() -> None:
    hu = _phantom()
    mask = metrics.body_mask(hu)
    assert mask[26, 26], "the lung inside the body belongs to the body"
    assert not mask[53, 10], "the couch is not body"
    assert not mask[0, 0]
    yy, xx = np.mgrid[:64, :64]
    body = ((yy - 28) / 18.0) ** 2 + ((xx - 32) / 24.0) ** 2 < 1
    assert abs(int(mask.sum()) - int(body.sum())) < 0.05 * body.sum()


def test_body_mask_of_a_volume_is_per_slice_and_empty_for_air() -> None:
    volume = np.stack([_phantom(), np.full((64, 64), -1000.0)])
    mask = metrics.body_mask(volume)
    assert mask.shape == volume.shape
    assert mask[0].any() and not mask[1].any()


def test_suv_errors_inside_the_body() -> None:
    real = np.zeros((2, 8, 8))
    pred = np.zeros((2, 8, 8))
    body = np.zeros((2, 8, 8), bool)
    body[:, 2:6, 2:6] = True
    real[body] = 1.0
    real[0, 3, 3] = 5.0
    pred[body] = 1.5
    pred[1, 7, 7] = 50.0  # outside the body: ignored
    result = metrics.suv_errors(pred, real, body)
    assert result is not None
    assert result.suv_mean_real == pytest.approx((15 + 5 + 16) / 32)
    assert result.suv_mean_error == pytest.approx(1.5 - 36 / 32)
    assert result.suv_max_real == 5.0 and result.suv_max_error == pytest.approx(-3.5)
    assert metrics.suv_errors(pred, real, np.zeros_like(body)) is None


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differs"):
        metrics.mae(np.zeros((4, 4)), np.zeros((4, 5)))

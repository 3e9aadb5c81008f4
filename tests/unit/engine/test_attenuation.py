"""HU to 511 keV attenuation against the reference vectors and the stated knots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct2pet_node.engine.attenuation import (
    AttenuationKvp,
    attenuation_map,
    ct01_to_hu,
    mu_511kev,
    slopes_at_kvp,
)
from ct2pet_node.errors import WeightsError


@pytest.fixture(scope="module")
def vectors(reference_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(reference_dir / "cpdm-tiny" / "vectors.npz"))


@pytest.mark.parametrize("kvp", [80, 100, 120, 140, 130])
def test_mu_matches_the_reference(vectors: dict[str, np.ndarray], kvp: int) -> None:
    hu = ct01_to_hu(vectors["ct01"][0, 0])
    np.testing.assert_allclose(mu_511kev(hu, kvp), vectors[f"attenuation_mu_kvp{kvp}"], atol=1e-6, rtol=0)


def test_attenuation_map_matches_the_reference(vectors: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(attenuation_map(vectors["ct01"], 140), vectors["attenuation_map"], atol=1e-6)


def test_knots_at_140_kvp() -> None:
    mu = mu_511kev(np.array([-1000.0, 0.0, 1000.0, 3000.0]), 140)
    expected = [0.093 - 0.093, 0.093, 0.093 + 0.0559, 0.093 + 0.0559 + 2000 * 0.698e-5]
    np.testing.assert_allclose(mu, expected, atol=1e-7)


def test_hu_is_clamped_to_the_knot_range() -> None:
    mu = mu_511kev(np.array([-3000.0, -1000.0, 3000.0, 9000.0]), 120)
    assert mu[0] == mu[1] and mu[2] == mu[3]


def test_kvp_interpolates_linearly_and_is_held_outside_80_to_140() -> None:
    a110 = np.array(slopes_at_kvp(110))
    np.testing.assert_allclose(a110, (np.array(slopes_at_kvp(100)) + np.array(slopes_at_kvp(120))) / 2)
    assert slopes_at_kvp(60) == slopes_at_kvp(80)
    assert slopes_at_kvp(150) == slopes_at_kvp(140)
    assert slopes_at_kvp(120) == (9.3e-5, 4.71e-5, 0.589e-5)


def test_shape_and_dtype_are_kept() -> None:
    hu = np.zeros((2, 3, 4), dtype=np.float64)
    assert mu_511kev(hu, 120).shape == (2, 3, 4)
    assert attenuation_map(np.zeros((2, 1, 4, 4)), 140).dtype == np.float32


def test_fixed_policy_ignores_the_ct_kvp() -> None:
    assert AttenuationKvp().resolve(120.0) == 140.0
    assert AttenuationKvp("fixed", 100.0).resolve(None) == 100.0


def test_from_ct_policy_uses_the_tag_with_a_fallback() -> None:
    policy = AttenuationKvp("from_ct", 120.0)
    assert policy.resolve(80.0) == 80.0
    assert policy.resolve(None) == 120.0
    assert policy.resolve(float("nan")) == 120.0
    assert AttenuationKvp.from_dict(policy.to_dict()) == policy


def test_bad_policy_is_refused() -> None:
    with pytest.raises(WeightsError, match="'guess'"):
        AttenuationKvp("guess")  # type: ignore[arg-type]
    with pytest.raises(WeightsError, match="unreadable"):
        AttenuationKvp.from_dict({"mode": "fixed"})


def test_the_kvp_rule_says_what_the_model_does_and_what_the_header_said() -> None:
    fixed = AttenuationKvp("fixed", 120.0)
    assert fixed.describe(100.0) == "model fixes kVp at 120, CT header said 100"
    assert fixed.describe(None) == "model fixes kVp at 120, CT header has no kVp"
    assert fixed.describe(float("nan")) == "model fixes kVp at 120, CT header has no kVp"
    from_ct = AttenuationKvp("from_ct", 140.0)
    assert from_ct.describe(100.0) == "model uses the CT header's kVp, 100"
    assert from_ct.describe(None) == "model uses the CT header's kVp; header has none, so 140"

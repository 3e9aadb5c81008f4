"""CT Hounsfield units to 511 keV linear attenuation, and CPDM's attenuation map.

Bilinear CT-to-PET energy scaling (Abella et al. 2012): mu(HU) in 1/cm is
piecewise linear through four knots whose slopes depend on the tube voltage.
Pure numpy, no torch: the pipeline hands arrays in and out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ct2pet_node.errors import WeightsError

WATER_MU_511KEV = 0.093
"""b: mu of water at 511 keV, 1/cm (the knot at HU 0)."""

RELEASE_KVP = 140.0
"""The release hard-codes 140 kVp whatever the CT's KVP tag says; its weights were trained so."""

# kVp -> (a0, a1, a2): slopes below 0 HU, from 0 to 1000 HU, and above 1000 HU, in 1/cm per HU.
_SLOPES_BY_KVP: dict[float, tuple[float, float, float]] = {
    80.0: (9.3e-5, 3.28e-5, 0.41e-5),
    100.0: (9.3e-5, 4.0e-5, 0.5e-5),
    120.0: (9.3e-5, 4.71e-5, 0.589e-5),
    140.0: (9.3e-5, 5.59e-5, 0.698e-5),
}
_KNOT_HU = np.array([-1000.0, 0.0, 1000.0, 3000.0])


def slopes_at_kvp(kvp: float) -> tuple[float, float, float]:
    """The three bilinear slopes at ``kvp``, each interpolated linearly in kVp.

    Held constant outside the tabulated 80..140 kVp range.
    """
    if not np.isfinite(kvp):
        raise ValueError(f"kVp {kvp!r} is not a finite number")
    kvps = np.array(sorted(_SLOPES_BY_KVP))
    table = np.array([_SLOPES_BY_KVP[k] for k in kvps])
    a0, a1, a2 = (float(np.interp(kvp, kvps, table[:, i])) for i in range(3))
    return a0, a1, a2


def mu_511kev(hu: np.ndarray, kvp: float) -> np.ndarray:
    """Linear attenuation coefficient at 511 keV, 1/cm, for CT values in HU.

    Parameters
    ----------
    hu : numpy.ndarray
        CT values in Hounsfield units, any shape; clamped to [-1000, 3000].
    kvp : float
        Tube voltage of the CT in kVp.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape, 1/cm.
    """
    a0, a1, a2 = slopes_at_kvp(kvp)
    b = WATER_MU_511KEV
    knot_mu = np.array([b - 1000.0 * a0, b, b + 1000.0 * a1, b + 1000.0 * a1 + 2000.0 * a2])
    # np.interp holds the end values outside the knots, which is the HU clamp.
    flat = np.interp(np.asarray(hu, dtype=np.float64).ravel(), _KNOT_HU, knot_mu)
    mu: np.ndarray = flat.reshape(np.shape(hu)).astype(np.float32)
    return mu


def ct01_to_hu(ct01: np.ndarray) -> np.ndarray:
    """Invert the model's CT scaling: HU = ct01 * 2047 - 1024 (float32, as the release)."""
    return np.asarray(ct01, dtype=np.float32) * np.float32(2047.0) - np.float32(1024.0)


def attenuation_map(ct01: np.ndarray, kvp: float) -> np.ndarray:
    """CPDM's attenuation map exp(-mu) from CT scaled to [0, 1] (any shape, float32)."""
    return np.exp(-mu_511kev(ct01_to_hu(ct01), kvp).astype(np.float64)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class AttenuationKvp:
    """Which tube voltage the attenuation map uses.

    Parameters
    ----------
    mode : {"fixed", "from_ct"}
        ``fixed``: always ``kvp`` (the release: 140, whatever the DICOM says).
        ``from_ct``: the CT's own KVP tag, ``kvp`` when the tag is absent.
    kvp : float
        The fixed value, or the fallback for ``from_ct``.
    """

    mode: Literal["fixed", "from_ct"] = "fixed"
    kvp: float = RELEASE_KVP

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "from_ct"):
            raise WeightsError(f"attenuation kVp mode {self.mode!r} is not 'fixed' or 'from_ct'")
        if not (np.isfinite(self.kvp) and self.kvp > 0):
            raise WeightsError(f"attenuation kVp {self.kvp!r} must be a positive number")

    def resolve(self, ct_kvp: float | None) -> float:
        """The kVp to use for a CT whose KVP tag is ``ct_kvp`` (None when absent or unreadable)."""
        header = _valid_kvp(ct_kvp)
        if self.mode == "from_ct" and header is not None:
            return header
        return float(self.kvp)

    def describe(self, ct_kvp: float | None) -> str:
        """Which kVp a CT whose KVP tag is ``ct_kvp`` gets, and why, for the log.

        e.g. "model fixes kVp at 140, CT header said 100", "model fixes kVp at 140,
        CT header has no kVp", "model uses the CT header's kVp, 100", or "model uses
        the CT header's kVp; header has none, so 120".
        """
        header = _valid_kvp(ct_kvp)
        if self.mode == "fixed":
            said = "CT header has no kVp" if header is None else f"CT header said {header:g}"
            return f"model fixes kVp at {self.kvp:g}, {said}"
        if header is None:
            return f"model uses the CT header's kVp; header has none, so {self.kvp:g}"
        return f"model uses the CT header's kVp, {header:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the weights manifest."""
        return {"mode": self.mode, "kvp": float(self.kvp)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttenuationKvp:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(mode=data["mode"], kvp=float(data["kvp"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"attenuation kVp policy {dict(data)!r} is unreadable ({exc})") from exc


def _valid_kvp(kvp: float | None) -> float | None:
    """``kvp`` as a float when it is a usable tube voltage (a positive finite number), else None."""
    if kvp is None or not np.isfinite(kvp) or kvp <= 0:
        return None
    return float(kvp)

"""What a weights directory's ``manifest.json`` says, as values: no file, no tensor, no torch.

The architecture to rebuild the networks, how CT goes in and PET comes out
(:class:`CtScaling`, :class:`PetScaling`, the kVp policy, output units), and
the size and sha256 of every file. Reading and writing the directory is
:mod:`ct2pet_node.engine.weights`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.errors import InputError, WeightsError

FORMAT_VERSION = 1
RELEASE_CALIBRATION = (
    "uncalibrated, relative per slice: the release normalises each PET slice to its own maximum"
)


@dataclass(frozen=True, slots=True)
class CtScaling:
    """HU -> model input in [0, 1]: clip(HU + hu_offset, 0, ct_max) / ct_max."""

    hu_offset: float = 1024.0
    ct_max: float = 2047.0

    def to_ct01(self, hu: np.ndarray) -> np.ndarray:
        """CT in HU (any shape) -> float32 in [0, 1]."""
        stored = np.clip(np.asarray(hu, dtype=np.float32) + np.float32(self.hu_offset), 0.0, self.ct_max)
        ct01: np.ndarray = (stored / np.float32(self.ct_max)).astype(np.float32)
        return ct01


@dataclass(frozen=True, slots=True)
class PetScaling:
    """Model PET in [-1, 1] <-> output units.

    ``linear``: value = (m11 + 1) / 2 * scale. ``log1p``: value =
    expm1((m11 + 1) / 2 * log1p(scale)), which spends the model's range on low
    uptake. m11 is clamped to [-1, 1] first, as the release does when it saves.
    """

    kind: Literal["linear", "log1p"] = "linear"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "log1p"):
            raise WeightsError(f"PET normalisation kind {self.kind!r} is not 'linear' or 'log1p'")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise WeightsError(f"PET normalisation scale {self.scale!r} must be a positive number")

    def to_output(self, m11: np.ndarray) -> np.ndarray:
        """Model output in [-1, 1] (any shape) -> float32 output units."""
        unit = (np.clip(np.asarray(m11, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0
        value = unit * self.scale if self.kind == "linear" else np.expm1(unit * np.log1p(self.scale))
        out: np.ndarray = value.astype(np.float32)
        return out

    def to_m11(self, value: np.ndarray) -> np.ndarray:
        """Output units -> model range [-1, 1] (clamped), float32; for training targets."""
        v = np.clip(np.asarray(value, dtype=np.float64), 0.0, self.scale)
        unit = v / self.scale if self.kind == "linear" else np.log1p(v) / np.log1p(self.scale)
        m11: np.ndarray = (unit * 2.0 - 1.0).astype(np.float32)
        return m11


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a weights directory: its size in bytes and sha256 (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class WeightsManifest:
    """The parsed ``manifest.json`` of a weights directory."""

    format_version: int
    model_id: str
    architecture: dict[str, Any]
    normalisation: dict[str, Any]
    output_units: str
    calibration: str
    files: dict[str, FileEntry]
    sources: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Not part of the model id: it says what the training data looked like, not what the weights are.
    geometry: ModelFrame | None = None

    @property
    def frame(self) -> ModelFrame:
        """The in-plane geometry of the training slices; the release's assumed one when unstated."""
        if self.geometry is not None:
            return self.geometry
        return ModelFrame.release_default(int(self.architecture["image_size"]))

    @property
    def ct_scaling(self) -> CtScaling:
        """How HU become model input."""
        ct = self.normalisation.get("ct", {})
        return CtScaling(float(ct.get("hu_offset", 1024.0)), float(ct.get("ct_max", 2047.0)))

    @property
    def pet_scaling(self) -> PetScaling:
        """How model output becomes ``output_units``."""
        pet = self.normalisation.get("pet", {})
        return PetScaling(pet.get("kind", "linear"), float(pet.get("scale", 1.0)))

    @property
    def networks(self) -> tuple[str, ...]:
        """Names of the networks stored (file stems)."""
        return tuple(sorted(Path(name).stem for name in self.files if name.endswith(".safetensors")))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, the inverse of :func:`manifest_from_json`."""
        return {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "normalisation": self.normalisation,
            "output_units": self.output_units,
            "calibration": self.calibration,
            "files": {k: {"size": v.size, "sha256": v.sha256} for k, v in sorted(self.files.items())},
            "sources": self.sources,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "extra": self.extra,
            **({"geometry": self.geometry.to_json()} if self.geometry is not None else {}),
        }


def release_normalisation() -> dict[str, Any]:
    """Normalisation of the authors' release: CT offset 1024 / max 2047, PET relative, 140 kVp fixed."""
    return {
        "ct": {"hu_offset": 1024.0, "ct_max": 2047.0},
        "pet": {"kind": "linear", "scale": 1.0},
        "attenuation_kvp": {"mode": "fixed", "kvp": 140.0},
    }


def manifest_from_json(data: Any, path: Path) -> WeightsManifest:
    """The manifest read from ``path``, parsed; refuses another format version or a malformed one."""
    try:
        if data["format_version"] != FORMAT_VERSION:
            raise WeightsError(
                f"{path} has format version {data['format_version']}, this ct2pet-node reads "
                f"{FORMAT_VERSION}; upgrade ct2pet-node or re-import the weights"
            )
        files = {k: FileEntry(int(v["size"]), str(v["sha256"])) for k, v in data["files"].items()}
        return WeightsManifest(
            format_version=int(data["format_version"]),
            model_id=str(data["model_id"]),
            architecture=dict(data["architecture"]),
            normalisation=dict(data["normalisation"]),
            output_units=str(data["output_units"]),
            calibration=str(data["calibration"]),
            files=files,
            sources=dict(data.get("sources") or {}),
            created_by=str(data.get("created_by", "")),
            created_at=str(data.get("created_at", "")),
            extra=dict(data.get("extra") or {}),
            geometry=ModelFrame.from_json(data["geometry"]) if data.get("geometry") else None,
        )
    except InputError as exc:
        raise WeightsError(f"{path}: {exc}; fix its 'geometry' or re-import the weights") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WeightsError(f"{path} is not a ct2pet-node weights manifest (bad or missing {exc})") from exc

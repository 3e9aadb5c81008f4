"""The on-disk format of paired CT/PET training datasets, and reading it.

On-disk format, version 2 (the training and evaluation code depend on it)::

    DATASET_DIR/
      manifest.json
      studies/<ct_series_uid>/
        ct_hu.npy      float32 (n, size, size)  Hounsfield units on the model grid
        pet_suv.npy    float32 (n, size, size)  SUVbw (g/ml); 0 outside the PET field of view
        pet_fov.npy    uint8   (n, size, size)  1 where the PET field of view covers the voxel
        body_mask.npy  uint8   (n, size, size)  1 inside the body (HU > -500, largest part, filled)

Arrays are indexed ``[slice, row, column]``. Slices are in increasing
position along the slice normal of the model's orientation (feet to head for
an axial scan, however it was stored), never in file-name or instance-number
order. In plane every study lies on the grid the node shows a CT to a model
on (:func:`ct2pet_node.domain.model_grid.plan_model_grid`): head-first supine
(columns from the patient's right to left, rows from anterior to posterior,
whatever the CT's stored orientation), ``field_of_view_mm`` around the centre
of the CT's field of view over ``size`` pixels. ``manifest.json`` holds::

    {"format_version": 2, "size": 256, "field_of_view_mm": 500.0, "pixel_spacing_mm": 1.953125,
     "studies": [{
        "study_uid", "ct_series_uid", "pet_series_uid", "frame_of_reference_uid",
        "n_slices", "size",
        "grid_mapping":      what was done to the CT's slices, in words (re-indexing, padding, cropping),
        "affine":            4x4, model-grid voxel (x, y, z, 1) -> patient LPS mm,
        "z_positions_mm":    per slice, position along the slice normal,
        "ct_sop_uids":       per slice, the CT instance it came from,
        "pet_sop_uids":      the PET instances within one PET slice of the paired range,
        "ct_kvp", "suv_factor" (SUVbw per Bq/ml),
        "suv_inputs": {"units", "decay_correction", "reference_source", "patient_weight_kg",
                       "injected_dose_bq", "half_life_s", "decay_seconds"},
        "suv_max_source":    SUVmax of the whole PET series before resampling,
        "suv_max_paired":    SUVmax of pet_suv.npy,
        "pet_fov_fraction":  share of voxels inside the PET field of view,
        "files": {"ct_hu": "studies/<uid>/ct_hu.npy", ...}}]}

No patient name, ID, birth date or acquisition date is ever written: the
SUV inputs keep the decay time in seconds, not the clock times. Version 1
datasets (each CT squeezed over its own field of view, in its stored
orientation, no ``field_of_view_mm``) are refused: rebuild them. Building is
:mod:`ct2pet_node.training.dataset`; how the two series are brought onto the
model grid is written down in :mod:`ct2pet_node.training.pairing`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ct2pet_node.domain.model_grid import HEAD_FIRST_SUPINE, ModelFrame
from ct2pet_node.errors import InputError

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
STUDIES_DIR = "studies"
ARRAY_NAMES = ("ct_hu", "pet_suv", "pet_fov", "body_mask")


@dataclass(frozen=True, slots=True)
class SuvRecord:
    """The SUVbw inputs kept for one study (no clock times: they would date the examination)."""

    units: str
    decay_correction: str
    reference_source: str
    patient_weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    decay_seconds: float


@dataclass(frozen=True, slots=True)
class DatasetStudy:
    """One study's entry in ``manifest.json`` (see the module docstring for each field)."""

    study_uid: str
    ct_series_uid: str
    pet_series_uid: str
    frame_of_reference_uid: str
    n_slices: int
    size: int
    grid_mapping: str
    affine: tuple[tuple[float, ...], ...]
    z_positions_mm: tuple[float, ...]
    ct_sop_uids: tuple[str, ...]
    pet_sop_uids: tuple[str, ...]
    ct_kvp: float | None
    suv_factor: float
    suv_inputs: SuvRecord
    suv_max_source: float
    suv_max_paired: float
    pet_fov_fraction: float
    files: tuple[tuple[str, str], ...]

    @property
    def affine_matrix(self) -> np.ndarray:
        """The model-grid affine as a float64 4x4 array."""
        return np.array(self.affine, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """The manifest form of this entry."""
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data["affine"] = [list(row) for row in self.affine]
        data["suv_inputs"] = asdict(self.suv_inputs)
        data["files"] = dict(self.files)
        for name in ("z_positions_mm", "ct_sop_uids", "pet_sop_uids"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetStudy:
        """Read one manifest entry; raises InputError naming a missing or malformed field."""
        try:
            values = dict(data)
            values["affine"] = tuple(tuple(float(v) for v in row) for row in data["affine"])
            values["suv_inputs"] = SuvRecord(**data["suv_inputs"])
            values["files"] = tuple((str(k), str(v)) for k, v in data["files"].items())
            for name in ("z_positions_mm", "ct_sop_uids", "pet_sop_uids"):
                values[name] = tuple(data[name])
            study = cls(**values)
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"manifest entry is malformed ({error}); rebuild the study") from None
        if study.n_slices != len(study.z_positions_mm) or study.n_slices != len(study.ct_sop_uids):
            raise InputError(
                f"manifest entry for CT series {study.ct_series_uid} has inconsistent slice counts"
            )
        return study


@dataclass(frozen=True, slots=True, eq=False)
class StudyArrays:
    """The arrays of one study, memory-mapped read-only (see the module docstring)."""

    ct_hu: np.ndarray
    pet_suv: np.ndarray
    pet_fov: np.ndarray
    body_mask: np.ndarray


@dataclass(frozen=True, slots=True)
class Dataset:
    """A loaded dataset: where it is, its grid, and its studies in the order they were added.

    Attributes
    ----------
    size : int
        Rows and columns of every study's slices.
    field_of_view_mm, pixel_spacing_mm : float
        The in-plane field of view the slices cover and ``field_of_view_mm / size``.
    """

    root: Path
    size: int
    field_of_view_mm: float
    pixel_spacing_mm: float
    studies: tuple[DatasetStudy, ...]

    @property
    def frame(self) -> ModelFrame:
        """The geometry of the slices, as a model trained on them states it."""
        return ModelFrame(self.size, self.pixel_spacing_mm, HEAD_FIRST_SUPINE)

    def arrays(self, study: DatasetStudy) -> StudyArrays:
        """Memory-map ``study``'s arrays; raises InputError when one is missing or the wrong shape."""
        expected = (study.n_slices, study.size, study.size)
        loaded = {}
        files = dict(study.files)
        for name in ARRAY_NAMES:
            path = self.root / files.get(name, f"{STUDIES_DIR}/{study.ct_series_uid}/{name}.npy")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise InputError(
                    f"cannot read {path} ({error}); rebuild study {study.ct_series_uid}"
                ) from None
            if array.shape != expected:
                raise InputError(f"{path} has shape {array.shape}, the manifest says {expected}; rebuild it")
            loaded[name] = array
        return StudyArrays(**loaded)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """``out_dir/manifest.json`` as JSON, None when there is none; another format version is refused."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable manifest ({error}); restore or remove it") from None
    version = manifest.get("format_version")
    if version == 1:
        raise InputError(
            f"{path} is a version 1 dataset (each CT squeezed over its own field of view, as stored); "
            "rebuild it with `ct2pet-node dataset build` into a new folder"
        )
    if version != FORMAT_VERSION:
        raise InputError(f"{path} has format_version {version!r}; this version reads {FORMAT_VERSION} only")
    return manifest


def load_dataset(out_dir: Path) -> Dataset:
    """Read ``out_dir/manifest.json``; arrays are opened lazily by :meth:`Dataset.arrays`.

    Raises
    ------
    InputError
        No manifest, another format version, or a malformed entry.
    """
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise InputError(f"{out_dir} holds no {MANIFEST_NAME}; build it with `ct2pet-node dataset build`")
    studies = tuple(DatasetStudy.from_json(entry) for entry in manifest.get("studies", []))
    try:
        size, fov = int(manifest["size"]), float(manifest["field_of_view_mm"])
        spacing = float(manifest["pixel_spacing_mm"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{out_dir / MANIFEST_NAME} lacks its grid ({error}); rebuild the dataset") from None
    return Dataset(root=out_dir, size=size, field_of_view_mm=fov, pixel_spacing_mm=spacing, studies=studies)

"""Paired CT/PET training datasets on disk: build one study at a time, load them all.

On-disk format, version 1 (the training and evaluation code depend on it)::

    DATASET_DIR/
      manifest.json
      studies/<ct_series_uid>/
        ct_hu.npy      float32 (n, size, size)  Hounsfield units on the model grid
        pet_suv.npy    float32 (n, size, size)  SUVbw (g/ml); 0 outside the PET field of view
        pet_fov.npy    uint8   (n, size, size)  1 where the PET field of view covers the voxel
        body_mask.npy  uint8   (n, size, size)  1 inside the body (HU > -500, largest part, filled)

Arrays are indexed ``[slice, row, column]`` and slices are in increasing
position along the slice normal (feet to head for an axial head-first scan),
never in file-name or instance-number order. ``manifest.json`` holds::

    {"format_version": 1, "size": 256, "studies": [{
        "study_uid", "ct_series_uid", "pet_series_uid", "frame_of_reference_uid",
        "n_slices", "size",
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
SUV inputs keep the decay time in seconds, not the clock times. The folder
is created 0700 (the arrays are still patient data); ``.lock`` serialises
concurrent builds; a study is keyed by its CT series, and adding it again
is refused unless ``overwrite`` is given. How the two
series are brought onto the model grid is written down in
:mod:`ct2pet_node.training.pairing`.
"""

from __future__ import annotations

import fcntl
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.pet import PetSeries, read_pet_series
from ct2pet_node.dicom.sitk_convert import body_mask
from ct2pet_node.dicom.volume import build_ct_volume, scan_folder
from ct2pet_node.domain.uids import require_uid
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import InputError, SeriesRefused, StorageError
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.spool.atomic import atomic_write, ensure_private_dir
from ct2pet_node.training.pairing import PairedSlices, pair_volumes, sub_volume

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STUDIES_DIR = "studies"
ARRAY_NAMES = ("ct_hu", "pet_suv", "pet_fov", "body_mask")
# The node's own qualification, but no tilt at all: a sheared CT grid has no
# SimpleITK image to resample the PET onto.
CT_RULES = RoutingConfig(
    series_quiet_seconds=1.0, min_slices=1, max_gantry_tilt_degrees=0.0, slice_spacing_tolerance_mm=0.05
)


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
    """A loaded dataset: where it is, its grid size and its studies in the order they were added."""

    root: Path
    size: int
    studies: tuple[DatasetStudy, ...]

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


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable manifest ({error}); restore or remove it") from None
    version = manifest.get("format_version")
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
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise InputError(f"{out_dir} holds no {MANIFEST_NAME}; build it with `ct2pet-node dataset build`")
    studies = tuple(DatasetStudy.from_json(entry) for entry in manifest.get("studies", []))
    return Dataset(root=out_dir, size=int(manifest["size"]), studies=studies)


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    # Two builds into one dataset must not lose each other's manifest entry.
    with open(out_dir / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _pet_sop_uids_used(pet: PetSeries, paired: PairedSlices) -> tuple[str, ...]:
    normal = pet.affine[:3, 2] / np.linalg.norm(pet.affine[:3, 2])
    step = float(np.linalg.norm(pet.affine[:3, 2]))
    pet_offsets = (
        pet.affine[:3, 3] + np.outer(np.arange(len(pet.sop_instance_uids)), pet.affine[:3, 2])
    ) @ normal
    ends = [
        paired.affine[:3, 3] @ normal,
        (paired.affine[:3, 3] + (len(paired.ct_hu) - 1) * paired.affine[:3, 2]) @ normal,
    ]
    low, high = min(ends) - step, max(ends) + step
    return tuple(uid for uid, z in zip(pet.sop_instance_uids, pet_offsets, strict=True) if low <= z <= high)


def _study_entry(ct: CtVolume, pet: PetSeries, paired: PairedSlices) -> DatasetStudy:
    ct_sources = ct.sources[paired.first_ct_slice : paired.first_ct_slice + len(paired.ct_hu)]
    size = paired.ct_hu.shape[1]
    normal = np.cross(paired.affine[:3, 0], paired.affine[:3, 1])
    normal = normal / np.linalg.norm(normal)
    origins = paired.affine[:3, 3] + np.outer(np.arange(len(paired.ct_hu)), paired.affine[:3, 2])
    folder = f"{STUDIES_DIR}/{ct.series_uid}"
    inputs = pet.suv.inputs
    return DatasetStudy(
        study_uid=str(ct.study_uid),
        ct_series_uid=str(ct.series_uid),
        pet_series_uid=str(pet.series_uid),
        frame_of_reference_uid=str(ct.frame_of_reference_uid),
        n_slices=len(paired.ct_hu),
        size=size,
        affine=tuple(tuple(float(v) for v in row) for row in paired.affine),
        z_positions_mm=tuple(float(v) for v in origins @ normal),
        ct_sop_uids=tuple(str(s.sop_instance_uid) for s in ct_sources),
        pet_sop_uids=_pet_sop_uids_used(pet, paired),
        ct_kvp=ct.kvp,
        suv_factor=pet.suv.per_bq_ml,
        suv_inputs=SuvRecord(
            units=inputs.units,
            decay_correction=inputs.decay_correction,
            reference_source=inputs.reference_source,
            patient_weight_kg=inputs.patient_weight_kg,
            injected_dose_bq=inputs.injected_dose_bq,
            half_life_s=inputs.half_life_s,
            decay_seconds=pet.suv.decay_seconds,
        ),
        suv_max_source=float(pet.activity_bq_ml.max()) * pet.suv.per_bq_ml,
        suv_max_paired=float(paired.pet_suv.max()),
        pet_fov_fraction=float(paired.pet_fov.mean()),
        files=tuple((name, f"{folder}/{name}.npy") for name in ARRAY_NAMES),
    )


def read_ct_volume(ct_dir: Path) -> CtVolume:
    """The one CT series under ``ct_dir`` in HU, qualified as the node would (but untilted).

    Raises
    ------
    InputError
        No CT series, several, or one the node's qualification refuses (the reason is kept).
    """
    found = scan_folder(ct_dir)
    if len(found) != 1:
        raise InputError(
            f"{ct_dir} holds {len(found)} CT series ({', '.join(sorted(found)) or 'none'}); "
            "give a folder holding exactly one CT series"
        )
    [headers] = found.values()
    try:
        return build_ct_volume(qualify_series(headers, CT_RULES))
    except SeriesRefused as refusal:
        raise InputError(f"CT series in {ct_dir} refused: {refusal}") from None


def _refuse_duplicate(
    manifest: dict[str, Any] | None, ct_series_uid: str, out_dir: Path, overwrite: bool
) -> None:
    if overwrite or manifest is None:
        return
    if any(study.get("ct_series_uid") == ct_series_uid for study in manifest.get("studies", [])):
        raise InputError(
            f"CT series {ct_series_uid} is already in dataset {out_dir}; pass overwrite to rebuild it"
        )


def build_dataset(
    ct_dir: Path,
    pet_dir: Path,
    out_dir: Path,
    size: int = 256,
    *,
    overwrite: bool = False,
    slices: tuple[int, int] | None = None,
) -> DatasetStudy:
    """Pair one PET/CT study from DICOM folders and append it to the dataset in ``out_dir``.

    Parameters
    ----------
    ct_dir, pet_dir : Path
        Folders holding one CT series and one PET series of the same
        examination (one frame of reference); file names do not matter.
    out_dir : Path
        The dataset; created when missing.
    size : int
        Rows and columns of the model grid; every study of a dataset has the same.
    overwrite : bool
        Replace a study already built from the same CT series instead of refusing.
    slices : tuple of int, optional
        ``(start, stop)`` CT slice indices in position order: pair only those.

    Raises
    ------
    InputError
        Unusable CT or PET (the message says which and why), a CT series
        already in the dataset, or a dataset of another size.
    """
    ct = read_ct_volume(ct_dir)
    # Checked again under the lock; refusing here saves reading and resampling the PET.
    _refuse_duplicate(
        _read_manifest(out_dir) if out_dir.is_dir() else None, str(ct.series_uid), out_dir, overwrite
    )
    if slices is not None:
        ct = sub_volume(ct, *slices)
    pet = read_pet_series(pet_dir)
    paired = pair_volumes(ct, pet, size)
    entry = _study_entry(ct, pet, paired)
    ensure_private_dir(out_dir)
    with _locked(out_dir):
        manifest = _read_manifest(out_dir) or {"format_version": FORMAT_VERSION, "size": size, "studies": []}
        if int(manifest["size"]) != size:
            raise InputError(
                f"dataset {out_dir} holds {manifest['size']}² studies; build with size {manifest['size']}"
            )
        _refuse_duplicate(manifest, entry.ct_series_uid, out_dir, overwrite)
        others = [s for s in manifest["studies"] if s.get("ct_series_uid") != entry.ct_series_uid]
        study_dir = out_dir / STUDIES_DIR / require_uid(entry.ct_series_uid, "CT SeriesInstanceUID")
        if study_dir.exists():
            shutil.rmtree(study_dir)
        ensure_private_dir(study_dir)
        arrays = {
            "ct_hu": paired.ct_hu,
            "pet_suv": paired.pet_suv,
            "pet_fov": paired.pet_fov,
            "body_mask": body_mask(paired.ct_hu),
        }
        for name, array in arrays.items():
            atomic_write(study_dir / f"{name}.npy", _npy_bytes(array))
        manifest["studies"] = [*others, entry.to_json()]
        try:
            text = json.dumps(manifest, indent=1, allow_nan=False)
        except ValueError as error:
            raise StorageError(f"manifest for {out_dir} holds a non-finite number ({error})") from None
        atomic_write(out_dir / MANIFEST_NAME, text.encode("utf-8"))
    log.info(
        "dataset_study_added",
        ct_series_uid=entry.ct_series_uid,
        pet_series_uid=entry.pet_series_uid,
        slices=entry.n_slices,
        suv_factor=entry.suv_factor,
        suv_max_paired=entry.suv_max_paired,
    )
    return entry

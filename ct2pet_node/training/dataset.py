"""Building paired CT/PET training datasets: one study at a time, from DICOM folders.

The on-disk format, and reading it, are in :mod:`ct2pet_node.training.dataset_format`
(its names are re-exported here). No patient name, ID, birth date or
acquisition date is ever written. The folder is created 0700 (the arrays are
still patient data); ``.lock`` serialises concurrent builds; a study is keyed
by its CT series, and adding it again is refused unless ``overwrite`` is
given, and so is a study of another size or field of view than the
dataset's. How the two series are brought onto the model grid is written
down in :mod:`ct2pet_node.training.pairing`.
"""

from __future__ import annotations

import fcntl
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ct2pet_node.config import RoutingConfig
from ct2pet_node.dicom.pet import PetSeries, read_pet_series
from ct2pet_node.dicom.sitk_convert import body_mask
from ct2pet_node.dicom.volume import build_ct_volume, scan_folder
from ct2pet_node.domain.model_grid import HEAD_FIRST_SUPINE, RELEASE_FIELD_OF_VIEW_MM, ModelFrame
from ct2pet_node.domain.uids import require_uid
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import InputError, SeriesRefused, StorageError
from ct2pet_node.routing.qualify import qualify_series
from ct2pet_node.spool.atomic import atomic_write, atomic_write_npy, ensure_private_dir
from ct2pet_node.training.dataset_format import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STUDIES_DIR,
    Dataset,
    DatasetStudy,
    StudyArrays,
    SuvRecord,
    load_dataset,
    read_manifest,
)
from ct2pet_node.training.pairing import PairedSlices, in_model_slice_order, pair_volumes, sub_volume

__all__ = [
    "ARRAY_NAMES",
    "CT_RULES",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "STUDIES_DIR",
    "Dataset",
    "DatasetStudy",
    "StudyArrays",
    "SuvRecord",
    "build_dataset",
    "load_dataset",
    "read_ct_volume",
]

log = structlog.get_logger(__name__)

# A study whose pixels are more than 1 % larger than the dataset's had a body wider than its field of view.
_SCALE_TOLERANCE = 1.01

# The node's own qualification, but no tilt at all: a sheared CT grid has no
# SimpleITK image to resample the PET onto.
CT_RULES = RoutingConfig(
    series_quiet_seconds=1.0, min_slices=1, max_gantry_tilt_degrees=0.0, slice_spacing_tolerance_mm=0.05
)


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    # Two builds into one dataset must not lose each other's manifest entry.
    with open(out_dir / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        grid_mapping=paired.mapping.describe(),
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


def _refuse_another_grid(manifest: dict[str, Any], frame: ModelFrame, out_dir: Path) -> None:
    size, fov = int(manifest["size"]), float(manifest.get("field_of_view_mm", float("nan")))
    if size != frame.matrix:
        raise InputError(f"dataset {out_dir} holds {size}² studies; build with size {size}")
    if not math.isclose(fov, frame.field_of_view_mm, rel_tol=1e-9, abs_tol=1e-6):
        raise InputError(
            f"dataset {out_dir} holds studies over a {fov:g} mm field of view, not "
            f"{frame.field_of_view_mm:g} mm; build at {fov:g} mm (--field-of-view-mm {fov:g}) or into a new folder"
        )


def build_dataset(
    ct_dir: Path,
    pet_dir: Path,
    out_dir: Path,
    size: int = 256,
    *,
    field_of_view_mm: float = RELEASE_FIELD_OF_VIEW_MM,
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
    field_of_view_mm : float
        In-plane field of view of the model grid in mm (default 500, the
        release's and the demo's); every study of a dataset has the same. A CT
        reconstructed at another is padded with air or cropped around its centre.
    overwrite : bool
        Replace a study already built from the same CT series instead of refusing.
    slices : tuple of int, optional
        ``(start, stop)`` CT slice indices in the dataset's slice order (increasing
        position feet to head, :func:`~ct2pet_node.training.pairing.in_model_slice_order`):
        pair only those.

    Raises
    ------
    InputError
        Unusable CT or PET (the message says which and why), a CT series
        already in the dataset, or a dataset of another size or field of view.
    """
    if not (math.isfinite(field_of_view_mm) and field_of_view_mm > 0):
        raise InputError(f"field of view {field_of_view_mm} mm must be a positive number of mm, e.g. 500")
    if size < 1:
        raise InputError(f"model grid size {size} must be a positive number of pixels, e.g. 256")
    frame = ModelFrame(size, field_of_view_mm / size, HEAD_FIRST_SUPINE)
    existing = read_manifest(out_dir) if out_dir.is_dir() else None
    if existing is not None:
        # Checked again under the lock; refusing here saves reading and resampling both series.
        _refuse_another_grid(existing, frame, out_dir)
    ct = in_model_slice_order(read_ct_volume(ct_dir), frame)
    _refuse_duplicate(existing, str(ct.series_uid), out_dir, overwrite)
    if slices is not None:
        ct = sub_volume(ct, *slices)
    pet = read_pet_series(pet_dir)
    paired = pair_volumes(ct, pet, frame)
    if paired.mapping.scale > _SCALE_TOLERANCE:
        # The node shows this CT to a model the same way, but its pixels are not the dataset's.
        log.warning(
            "dataset_study_rescaled",
            ct_series_uid=str(ct.series_uid),
            scale=round(paired.mapping.scale, 3),
            field_of_view_mm=frame.field_of_view_mm,
        )
    entry = _study_entry(ct, pet, paired)
    ensure_private_dir(out_dir)
    with _locked(out_dir):
        manifest = read_manifest(out_dir) or {
            "format_version": FORMAT_VERSION,
            "size": size,
            "field_of_view_mm": frame.field_of_view_mm,
            "pixel_spacing_mm": frame.pixel_spacing_mm,
            "studies": [],
        }
        _refuse_another_grid(manifest, frame, out_dir)
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
            atomic_write_npy(study_dir / f"{name}.npy", array)
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
        grid_mapping=entry.grid_mapping,
        suv_factor=entry.suv_factor,
        suv_max_paired=entry.suv_max_paired,
    )
    return entry

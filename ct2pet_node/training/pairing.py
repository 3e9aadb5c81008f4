"""Pairing a CT volume with a real PET series on the model grid. Pure: arrays in, arrays out.

The target grid is the CT's slices (same positions, same slice normal) by a
``size`` x ``size`` in-plane grid over the CT's field of view, edge to edge
(:func:`ct2pet_node.dicom.resample.model_grid_affine`, the grid the engine
and the writer use too).

* **CT** is resized in plane with bilinear interpolation, antialiased when
  shrinking (``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False, antialias=True)``): exactly the resize the engine
  pipeline applies to a CT at inference, so the model is trained on the
  inputs it will see. For 512 -> 256 this is a separable triangle filter
  with weights (1, 3, 3, 1) / 8. Pure in-plane index resizing is exact here
  because the model grid shares the CT's slices and field of view.
* **PET** is resampled in patient space with SimpleITK (trilinear), since
  its grid is offset from the CT's in plane and its slices need not match
  the CT's; a Gaussian antialiases any axis the model grid samples more
  coarsely (:func:`ct2pet_node.dicom.sitk_convert.resample_linear`). It is
  converted to SUVbw after resampling (the conversion is linear).
* Voxels outside the PET's field of view are 0 SUV and 0 in ``pet_fov``;
  CT slices with no PET voxel at all are dropped from both ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ct2pet_node.dicom.pet import PetSeries
from ct2pet_node.dicom.resample import model_grid_affine
from ct2pet_node.dicom.sitk_convert import resample_linear
from ct2pet_node.domain.volume import CtVolume
from ct2pet_node.errors import InputError

# Slices resized per torch call: bounds the float32 working set (~32 MB at 512²).
_RESIZE_CHUNK = 32


@dataclass(frozen=True, slots=True, eq=False)
class PairedSlices:
    """CT and PET of one study on the model grid, slice for slice.

    Attributes
    ----------
    ct_hu : numpy.ndarray
        float32 (n, size, size), Hounsfield units.
    pet_suv : numpy.ndarray
        float32 (n, size, size), SUVbw (g/ml); 0 outside the PET's field of view.
    pet_fov : numpy.ndarray
        uint8 (n, size, size), 1 where the PET field of view covers the voxel.
    affine : numpy.ndarray
        float64 4x4 of the model grid, voxel (x, y, z, 1) -> patient LPS mm.
    first_ct_slice : int
        Index, in the CT volume given, of paired slice 0 (slices before it had no PET).
    """

    ct_hu: np.ndarray
    pet_suv: np.ndarray
    pet_fov: np.ndarray
    affine: np.ndarray
    first_ct_slice: int


def ct_to_model_grid(hu: np.ndarray, size: int) -> np.ndarray:
    """Resize every CT slice to ``size`` x ``size`` as the engine does at inference.

    Parameters
    ----------
    hu : numpy.ndarray
        (z, rows, columns), Hounsfield units, on the CT's own grid.

    Returns
    -------
    numpy.ndarray
        float32 (z, size, size) on :func:`model_grid_affine`'s grid.
    """
    if hu.ndim != 3:
        raise InputError(f"CT must be (z, y, x), got shape {hu.shape}")
    _, rows, columns = hu.shape
    if (rows, columns) == (size, size):
        return hu.astype(np.float32, copy=True)
    shrinking = size < rows or size < columns
    chunks = []
    with torch.inference_mode():
        for start in range(0, hu.shape[0], _RESIZE_CHUNK):
            block = torch.from_numpy(
                np.ascontiguousarray(hu[start : start + _RESIZE_CHUNK], dtype=np.float32)
            )
            resized = F.interpolate(
                block[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
            )
            chunks.append(resized[:, 0].numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


def sub_volume(ct: CtVolume, start: int, stop: int) -> CtVolume:
    """CT slices ``start`` to ``stop`` (exclusive, in position order) as a volume of their own."""
    if not 0 <= start < stop <= ct.hu.shape[0]:
        raise InputError(f"slice range {start}:{stop} is outside the CT's {ct.hu.shape[0]} slices")
    affine = np.array(ct.affine, dtype=np.float64, copy=True)
    affine[:3, 3] = ct.affine[:3, 3] + start * ct.affine[:3, 2]
    return CtVolume(
        hu=np.ascontiguousarray(ct.hu[start:stop]),
        affine=affine,
        study_uid=ct.study_uid,
        series_uid=ct.series_uid,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        sources=ct.sources[start:stop],
        kvp=ct.kvp,
    )


def pair_volumes(ct: CtVolume, pet: PetSeries, size: int) -> PairedSlices:
    """CT and PET on the model grid over the CT, keeping the CT slices the PET covers.

    Raises
    ------
    InputError
        The two series do not share a frame of reference, or the PET covers
        none of the CT's slices.
    """
    if ct.frame_of_reference_uid != pet.frame_of_reference_uid:
        raise InputError(
            f"CT series {ct.series_uid} (frame of reference {ct.frame_of_reference_uid}) and PET series "
            f"{pet.series_uid} (frame of reference {pet.frame_of_reference_uid}) are not registered; "
            "pair a CT and a PET acquired together on one PET/CT scanner"
        )
    if size < 8:
        raise InputError(f"model grid size {size} is too small; use the model's size, e.g. 256")
    affine = model_grid_affine(ct, size)
    shape = (ct.hu.shape[0], size, size)
    activity, inside = resample_linear(pet.activity_bq_ml, pet.affine, affine, shape, antialias=True)
    covered = np.flatnonzero(inside.any(axis=(1, 2)))
    if covered.size == 0:
        raise InputError(
            f"PET series {pet.series_uid} covers none of CT series {ct.series_uid}'s slices; "
            "check that the two series belong to the same examination"
        )
    first, last = int(covered[0]), int(covered[-1])
    kept = slice(first, last + 1)
    suv = activity[kept] * np.float32(pet.suv.per_bq_ml)
    suv[~inside[kept]] = 0.0
    affine[:3, 3] = affine[:3, 3] + first * affine[:3, 2]
    return PairedSlices(
        ct_hu=ct_to_model_grid(ct.hu[kept], size),
        pet_suv=suv.astype(np.float32, copy=False),
        pet_fov=inside[kept].astype(np.uint8),
        affine=affine,
        first_ct_slice=first,
    )

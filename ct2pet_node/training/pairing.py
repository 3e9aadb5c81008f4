"""Pairing a CT volume with a real PET series on the model grid. Pure: arrays in, arrays out.

The target grid is the one the node shows a CT to a model on
(:func:`ct2pet_node.domain.model_grid.plan_model_grid` with
:func:`~ct2pet_node.domain.model_grid.body_extent`): the CT's slices (same
positions, same slice normal), re-indexed exactly into the model's
orientation (head-first supine), over the region of whole CT pixels that
covers the model's field of view around the centre of the CT's (padded with
air or cropped), at ``matrix`` x ``matrix`` pixels edge to edge
(:attr:`~ct2pet_node.domain.model_grid.GridMapping.model_affine`). A CT stored
feet first therefore pairs to exactly the arrays of the same CT stored head
first, and a CT reconstructed at another field of view is shown at the
model's pixel size, not squeezed.

* **CT** is taken to that region (:meth:`~ct2pet_node.domain.model_grid.GridMapping.to_region`,
  exact) and resized in plane with bilinear interpolation, antialiased when
  shrinking (``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False, antialias=True)``): exactly the resize the engine
  pipeline applies to a CT's region at inference, so the model is trained on
  the inputs it will see. For 512 -> 256 this is a separable triangle filter
  with weights (1, 3, 3, 1) / 8. Pure in-plane index resizing is exact here
  because the model grid shares the region's slices and edges.
* **PET** is resampled in patient space with SimpleITK (trilinear) onto the
  model grid's affine, since its grid is offset from the CT's in plane and
  its slices need not match the CT's; a Gaussian antialiases any axis the
  model grid samples more coarsely
  (:func:`ct2pet_node.dicom.sitk_convert.resample_linear`). It is converted to
  SUVbw after resampling (the conversion is linear).
* Voxels outside the PET's field of view are 0 SUV and 0 in ``pet_fov``;
  CT slices with no PET voxel at all are dropped from both ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ct2pet_node.dicom.pet import PetSeries
from ct2pet_node.dicom.sitk_convert import resample_linear
from ct2pet_node.domain.model_grid import GridMapping, ModelFrame, body_extent, plan_model_grid
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
        Index, in the CT volume in the model's slice order (:func:`in_model_slice_order`),
        of paired slice 0 (slices before it had no PET).
    mapping : GridMapping
        How the CT's slices were brought onto the model grid (its ``describe()`` says it in words).
    """

    ct_hu: np.ndarray
    pet_suv: np.ndarray
    pet_fov: np.ndarray
    affine: np.ndarray
    first_ct_slice: int
    mapping: GridMapping


def ct_to_model_grid(hu: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """Every CT slice on the model grid, as the engine shows it to the model at inference.

    Parameters
    ----------
    hu : numpy.ndarray
        (z, rows, columns), Hounsfield units, on the CT's own grid as stored.
    mapping : GridMapping
        The CT's mapping onto the model grid: each slice is taken to its region
        (re-indexed, padded with air or cropped; exact) and the region resized
        to ``mapping.matrix`` square.

    Returns
    -------
    numpy.ndarray
        float32 (z, matrix, matrix) on ``mapping.model_affine``'s grid.
    """
    if hu.ndim != 3:
        raise InputError(f"CT must be (z, y, x), got shape {hu.shape}")
    size = mapping.matrix
    rows, columns = mapping.region_shape
    shrinking = size < rows or size < columns
    chunks = []
    with torch.inference_mode():
        for start in range(0, hu.shape[0], _RESIZE_CHUNK):
            region = mapping.to_region(hu[start : start + _RESIZE_CHUNK])
            if (rows, columns) == (size, size):
                chunks.append(region)
                continue
            resized = F.interpolate(
                torch.from_numpy(region)[:, None],
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=shrinking,
            )
            chunks.append(resized[:, 0].numpy())
    if not chunks:
        return np.zeros((0, size, size), np.float32)
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


def in_model_slice_order(ct: CtVolume, frame: ModelFrame) -> CtVolume:
    """The CT with its slices in increasing position along the model orientation's slice normal.

    DICOM stacks slices along row direction x column direction, so a CT
    stored feet first (columns from the patient's left to right) comes head
    to feet; head-first supine, the model's orientation, stacks them feet to
    head. Reversing the slices is exact, and with the in-plane re-indexing of
    :func:`~ct2pet_node.domain.model_grid.plan_model_grid` it makes the dataset
    of a CT stored feet first that of the same CT stored head first. A CT
    already in that order (or stacked across it) is returned as it is.
    """
    orientation = frame.image_orientation
    normal = np.cross(orientation[:3], orientation[3:])
    if float(ct.affine[:3, 2] @ normal) >= 0.0:
        return ct
    affine = np.array(ct.affine, dtype=np.float64, copy=True)
    affine[:3, 3] = ct.affine[:3, 3] + (ct.hu.shape[0] - 1) * ct.affine[:3, 2]
    affine[:3, 2] = -ct.affine[:3, 2]
    return CtVolume(
        hu=np.ascontiguousarray(ct.hu[::-1]),
        affine=affine,
        study_uid=ct.study_uid,
        series_uid=ct.series_uid,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        sources=ct.sources[::-1],
        kvp=ct.kvp,
    )


def pair_volumes(ct: CtVolume, pet: PetSeries, frame: ModelFrame) -> PairedSlices:
    """CT and PET on the model grid of ``frame``, keeping the CT slices the PET covers.

    Parameters
    ----------
    ct : CtVolume
        The CT in HU, in any of the eight right-angle in-plane storages; its
        slices are paired in the model's slice order (:func:`in_model_slice_order`).
    pet : PetSeries
        A PET series of the same frame of reference.
    frame : ModelFrame
        The model's training geometry: matrix, pixel size and orientation.

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
    size = frame.matrix
    if size < 8:
        raise InputError(f"model grid size {size} is too small; use the model's size, e.g. 256")
    ct = in_model_slice_order(ct, frame)
    mapping = plan_model_grid(ct.affine, (ct.hu.shape[1], ct.hu.shape[2]), frame, body_extent(ct.hu))
    affine = np.array(mapping.model_affine, dtype=np.float64, copy=True)
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
        ct_hu=ct_to_model_grid(ct.hu[kept], mapping),
        pet_suv=suv.astype(np.float32, copy=False),
        pet_fov=inside[kept].astype(np.uint8),
        affine=affine,
        first_ct_slice=first,
        mapping=mapping,
    )

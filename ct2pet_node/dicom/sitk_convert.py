"""The one conversion point between product arrays and SimpleITK images.

Also the few SimpleITK operations built on it that the dataset builder
needs: linear resampling in physical space and a body mask.

Product convention (see :mod:`ct2pet_node.domain.volume`): an array indexed
``[z, y, x]`` plus a 4x4 affine mapping voxel ``(x, y, z, 1)`` to patient
LPS millimetres. SimpleITK is also LPS and indexes voxels ``(x, y, z)``;
``sitk.GetImageFromArray`` already reads a C-ordered ``[z, y, x]`` array as
an image of size ``(x, y, z)``, so only the geometry needs translating:

* spacing ``(sx, sy, sz)`` = lengths of the affine's first three columns;
* direction = those columns divided by their lengths, as a row-major 3x3
  matrix whose *columns* are the axis directions (ITK's layout);
* origin = the affine's fourth column (the centre of voxel (0, 0, 0)).

ITK direction matrices must be orthonormal for its resamplers to be right,
so a sheared affine (a tilted-gantry CT) is refused here instead of being
silently straightened.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ct2pet_node.errors import InputError

# Direction cosines from DICOM headers carry 5-6 significant digits.
_ORTHOGONALITY_TOLERANCE = 1e-4


def affine_to_geometry(
    affine: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, ...], tuple[float, float, float]]:
    """Split a product affine into SimpleITK spacing, direction and origin.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4, voxel (x, y, z, 1) -> patient LPS mm.

    Returns
    -------
    spacing : tuple of float
        (sx, sy, sz) in mm.
    direction : tuple of float
        Nine values, row-major, columns are the unit x, y, z axis directions.
    origin : tuple of float
        LPS mm of the centre of voxel (0, 0, 0).
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"affine must be a finite 4x4 matrix, got shape {matrix.shape}")
    columns = matrix[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"affine has a zero-length axis (spacing {spacing.tolist()}); it cannot be an image")
    direction = columns / spacing
    gram = direction.T @ direction
    if not np.allclose(gram, np.eye(3), atol=_ORTHOGONALITY_TOLERANCE):
        raise InputError(
            "affine axes are not orthogonal (a tilted-gantry or sheared grid); "
            "resample it onto an orthogonal grid before converting to SimpleITK"
        )
    return (
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        tuple(float(v) for v in direction.reshape(-1)),
        (float(matrix[0, 3]), float(matrix[1, 3]), float(matrix[2, 3])),
    )


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Wrap a ``[z, y, x]`` array and its affine as a SimpleITK image.

    Parameters
    ----------
    array : numpy.ndarray
        Shape (z, y, x); its dtype is kept (float32 for HU and SUV).
    affine : numpy.ndarray
        4x4, voxel (x, y, z, 1) -> patient LPS mm.

    Returns
    -------
    SimpleITK.Image
        Size (x, y, z), with the same physical placement as the input; the
        pixel buffer is a copy, so later edits of ``array`` do not leak in.
    """
    if array.ndim != 3:
        raise InputError(f"to_sitk needs a (z, y, x) array, got shape {array.shape}")
    spacing, direction, origin = affine_to_geometry(affine)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


def geometry_to_affine(
    spacing: tuple[float, ...], direction: tuple[float, ...], origin: tuple[float, ...]
) -> np.ndarray:
    """Assemble a product affine from SimpleITK spacing, direction and origin (3-D)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Unwrap a 3-D SimpleITK image into a ``[z, y, x]`` array and its affine.

    Returns
    -------
    array : numpy.ndarray
        Shape (z, y, x), the image's pixel type, an independent copy.
    affine : numpy.ndarray
        float64 4x4, voxel (x, y, z, 1) -> patient LPS mm.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"from_sitk needs a 3-D scalar image, got {image.GetDimension()}-D "
            f"with {image.GetNumberOfComponentsPerPixel()} components"
        )
    array = sitk.GetArrayFromImage(image)
    return array, geometry_to_affine(image.GetSpacing(), image.GetDirection(), image.GetOrigin())


def _antialias_variances(source_affine: np.ndarray, target_affine: np.ndarray) -> list[float]:
    """Gaussian variance per source axis, mm², before shrinking onto a coarser grid.

    Each source axis is compared with the target axis of the same index
    (both grids are slice stacks of the same orientation in practice). An
    axis shrunk by ``factor`` > 1.1 gets sigma = (factor - 1) / 2 source
    pixels, the rule scikit-image's ``resize(anti_aliasing=True)`` uses;
    an axis kept or enlarged is left sharp so SUVmax is not blurred away.
    """
    source = np.linalg.norm(np.asarray(source_affine)[:3, :3], axis=0)
    target = np.linalg.norm(np.asarray(target_affine)[:3, :3], axis=0)
    variances = []
    for source_mm, target_mm in zip(source, target, strict=True):
        factor = target_mm / source_mm
        sigma_mm = (factor - 1.0) / 2.0 * source_mm if factor > 1.1 else 0.0
        variances.append(float(sigma_mm**2))
    return variances


def resample_linear(
    values: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling, in patient space, onto another grid.

    Parameters
    ----------
    values : numpy.ndarray
        Shape (z, y, x) on the grid of ``source_affine``.
    source_affine, target_affine : numpy.ndarray
        4x4, voxel (x, y, z, 1) -> patient LPS mm; any offset, spacing or
        slice positions, orthogonal axes.
    target_shape : tuple of int
        (z, y, x) of the target grid.
    antialias : bool
        Smooth with a Gaussian first along axes the target samples more
        coarsely (see :func:`_antialias_variances`).

    Returns
    -------
    values : numpy.ndarray
        float32, ``target_shape``; 0 outside the source's field of view.
    inside : numpy.ndarray
        bool, ``target_shape``: True where the target voxel centre lies
        within the source's field of view (up to half a source voxel beyond
        its outermost centres).
    """
    source = to_sitk(values.astype(np.float32, copy=False), source_affine)
    if antialias:
        variances = _antialias_variances(source_affine, target_affine)
        if any(v > 0 for v in variances):
            smoother = sitk.DiscreteGaussianImageFilter()
            smoother.SetVariance(variances)
            smoother.SetUseImageSpacing(True)
            source = smoother.Execute(source)
    reference = to_sitk(np.zeros(target_shape, dtype=np.uint8), target_affine)
    identity = sitk.Transform()
    resampled = sitk.Resample(source, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = to_sitk(np.ones(values.shape, dtype=np.uint8), source_affine)
    coverage = sitk.Resample(ones, reference, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    result, _ = from_sitk(resampled)
    inside, _ = from_sitk(coverage)
    return result.astype(np.float32, copy=False), inside.astype(bool)


def body_mask(hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body, slice by slice: tissue above ``threshold_hu``, largest part, holes filled.

    Parameters
    ----------
    hu : numpy.ndarray
        Shape (z, y, x), Hounsfield units.

    Returns
    -------
    numpy.ndarray
        uint8 (z, y, x), 1 inside the body. Per slice: the largest connected
        region above the threshold (which drops the table and cables when
        they do not touch the patient), with enclosed holes (lungs, bowel
        gas) filled.
    """
    if hu.ndim != 3:
        raise InputError(f"body_mask needs a (z, y, x) array, got shape {hu.shape}")
    mask = np.zeros(hu.shape, dtype=np.uint8)
    for index, plane in enumerate(hu):
        tissue = sitk.GetImageFromArray((plane > threshold_hu).astype(np.uint8))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(tissue), sortByObjectSize=True)
        largest = sitk.BinaryThreshold(components, 1, 1, 1, 0)
        mask[index] = sitk.GetArrayFromImage(sitk.BinaryFillhole(largest))
    return mask

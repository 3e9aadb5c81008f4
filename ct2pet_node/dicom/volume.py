"""Qualified series -> :class:`CtVolume` in Hounsfield units; folders -> series.

Pixel data is decoded by pydicom with the installed plugins (pylibjpeg with
openjpeg and rle, pyjpegls, gdcm), so every transfer syntax those read is
accepted. The modality rescale is applied per slice (classic CT) or per
frame (Enhanced CT's PixelValueTransformationSequence, per-frame over
shared). Padding values are rescaled like any other pixel (the GE sample's
-2000 becomes -3024 HU); clipping to a window is the engine's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset

from ct2pet_node.dicom.headers import read_slice_header
from ct2pet_node.domain.records import SliceHeader
from ct2pet_node.domain.series import OrderedSlice, QualifiedSeries
from ct2pet_node.domain.uids import SeriesUid
from ct2pet_node.domain.volume import CtVolume, SourceSlice
from ct2pet_node.errors import InputError, SeriesRefused

log = structlog.get_logger(__name__)


def build_ct_volume(series: QualifiedSeries) -> CtVolume:
    """Decode every slice of a qualified series into one HU volume.

    Parameters
    ----------
    series : QualifiedSeries
        Slices in position order with their affine (see ``domain.volume``).

    Returns
    -------
    CtVolume
        ``hu`` float32 (z, y, x) in Hounsfield units, one z per ordered
        slice, with one :class:`SourceSlice` (SOP UIDs, position, frame
        number) per z for the writer.

    Raises
    ------
    SeriesRefused
        A slice's pixel data is shorter than Rows x Columns, or its pixel
        matrix does not match its header (the message names the instance).
    InputError
        A file cannot be read or its pixel data cannot be decoded (the
        message names the SOP Instance UID and the transfer syntax).
    """
    hu = np.empty((len(series.slices), series.rows, series.columns), dtype=np.float32)
    sources = []
    for z, (slice_, frame_hu) in enumerate(_decoded_slices(series)):
        if frame_hu.shape != hu.shape[1:]:
            raise SeriesRefused(
                f"instance {slice_.sop_instance_uid} decodes to {frame_hu.shape[0]}x{frame_hu.shape[1]} "
                f"pixels but the series is {series.rows}x{series.columns}; resend the instance"
            )
        hu[z] = frame_hu
        sources.append(
            SourceSlice(
                sop_instance_uid=slice_.sop_instance_uid,
                sop_class_uid=slice_.header.sop_class_uid,
                position=slice_.position,
                frame_number=slice_.frame_number,
            )
        )
    return CtVolume(
        hu=hu,
        affine=np.array(series.affine, dtype=np.float64),
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        sources=tuple(sources),
        kvp=series.kvp,
    )


def _decoded_slices(series: QualifiedSeries) -> Iterator[tuple[OrderedSlice, np.ndarray]]:
    """Each ordered slice with its HU matrix, (y, x); an Enhanced CT file is decoded once."""
    cache_path: Path | None = None
    cache: tuple[Dataset, np.ndarray] | None = None
    for slice_ in series.slices:
        path = slice_.header.path
        if slice_.frame_number is None:
            dataset = _read_pixels(slice_.header)
            stored = _decode(dataset, slice_.header)
            yield slice_, _rescale(stored, dataset, slice_)
            continue
        if cache is None or cache_path != path:
            dataset = _read_pixels(slice_.header)
            cache, cache_path = (dataset, _decode(dataset, slice_.header)), path
        dataset, frames = cache
        stored = frames if frames.ndim == 2 else frames[slice_.frame_number - 1]
        yield slice_, _rescale(stored, dataset, slice_)


def _read_pixels(header: SliceHeader) -> Dataset:
    try:
        dataset = pydicom.dcmread(header.path)
    except Exception as error:  # pydicom raises assorted errors on damaged files
        raise InputError(
            f"instance {header.sop_instance_uid} ({header.path}) cannot be read: "
            f"{type(error).__name__}: {error}; resend it"
        ) from None
    if "PixelData" not in dataset:
        raise SeriesRefused(f"instance {header.sop_instance_uid} has no pixel data; resend it")
    _require_full_pixel_data(dataset, header)
    return dataset


def _require_full_pixel_data(dataset: Dataset, header: SliceHeader) -> None:
    """Refuse truncated native pixel data before a decoder pads or misreads it."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed:
        return
    bits = int(dataset.get("BitsAllocated", 16))
    samples = int(dataset.get("SamplesPerPixel", 1))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    needed = rows * columns * samples * frames * bits // 8
    found = len(dataset.PixelData)
    if found < needed:
        raise SeriesRefused(
            f"instance {header.sop_instance_uid} holds {found} bytes of pixel data, but "
            f"{frames} frame(s) of {rows}x{columns} pixels at {bits} bits need {needed}; "
            "the file is truncated, resend it"
        )
    frame_bytes = max(1, needed // frames)
    if found - needed >= frame_bytes:
        # A whole frame too many: Rows, Columns or BitsAllocated do not describe
        # the data (pydicom would decode the extra bytes as more frames).
        raise SeriesRefused(
            f"instance {header.sop_instance_uid} holds {found} bytes of pixel data, but "
            f"{frames} frame(s) of {rows}x{columns} pixels at {bits} bits are {needed}; its Rows, "
            "Columns, BitsAllocated or NumberOfFrames do not describe its pixels, fix the sender"
        )


def _decode(dataset: Dataset, header: SliceHeader) -> np.ndarray:
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise SeriesRefused(
            f"instance {header.sop_instance_uid} is not greyscale (SamplesPerPixel "
            f"{dataset.SamplesPerPixel}); CT slices must be MONOCHROME"
        )
    try:
        return np.asarray(dataset.pixel_array)
    except Exception as error:  # decoder plugins raise their own error types
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", syntax)
        raise InputError(
            f"pixel data of instance {header.sop_instance_uid} ({name}) cannot be decoded: "
            f"{type(error).__name__}: {error}; resend it uncompressed or check the installed decoders"
        ) from None


def _rescale(stored: np.ndarray, dataset: Dataset, slice_: OrderedSlice) -> np.ndarray:
    slope, intercept = _rescale_values(dataset, slice_.frame_number)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise SeriesRefused(
            f"instance {slice_.sop_instance_uid} has a non-finite RescaleSlope/RescaleIntercept "
            f"({slope}, {intercept}); fix the sender"
        )
    # float64 arithmetic so large intercepts keep integer HU exactly before the float32 store.
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _rescale_values(dataset: Dataset, frame_number: int | None) -> tuple[float, float]:
    source: Dataset = dataset
    if frame_number is not None:
        found = _functional_item(dataset, frame_number, "PixelValueTransformationSequence")
        source = found if found is not None else dataset
    slope = source.get("RescaleSlope", 1.0)
    intercept = source.get("RescaleIntercept", 0.0)
    return float(slope if slope not in (None, "") else 1.0), float(intercept or 0.0)


def _functional_item(dataset: Dataset, frame_number: int, sequence: str) -> Dataset | None:
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    groups = ([per_frame[frame_number - 1]] if len(per_frame) >= frame_number else []) + list(shared[:1])
    for group in groups:
        items = group.get(sequence)
        if items:
            item: Dataset = items[0]
            return item
    return None


def scan_folder(folder: Path) -> dict[SeriesUid, list[SliceHeader]]:
    """Read every DICOM header under ``folder`` (recursively), grouped by series.

    Files that are not DICOM or lack what a slice needs are skipped with a
    ``file_skipped`` log event naming the file and the reason. Series keep
    the order of the sorted file paths; slices are ordered later, by
    position, in qualification.

    Raises
    ------
    InputError
        ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise InputError(f"{folder} is not a directory; give the folder that holds the CT files")
    series: dict[SeriesUid, list[SliceHeader]] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = read_slice_header(path)
        except InputError as error:
            skipped += 1
            log.info("file_skipped", path=str(path), reason=str(error))
            continue
        series.setdefault(header.series_uid, []).append(header)
    log.info("folder_scanned", folder=str(folder), series=len(series), skipped=skipped)
    return series

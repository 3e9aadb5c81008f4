"""Synthetic PET volume -> DICOM files, one per slice, written atomically.

Two kinds (``[output] series``): ``"secondary-capture"``, a Secondary
Capture series any PACS displays, and ``"pet"``, PET Image Storage in the
CT's frame of reference that viewers fuse with the CT. The volume is
written on whatever grid its affine states; :func:`ct2pet_node.dicom.resample.pet_on_grid`
puts it on the configured one first.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ct2pet_node.dicom.labels import SynthesisInfo, window
from ct2pet_node.dicom.output_common import OutputSlice, rescale_slope, slice_geometry, to_uint16
from ct2pet_node.dicom.writer_pet import build_pet_slice
from ct2pet_node.dicom.writer_sc import build_sc_slice
from ct2pet_node.domain.output_uids import (
    OUTPUT_KINDS,
    PET,
    SECONDARY_CAPTURE,
    output_series_uid,
    output_sop_instance_uid,
)
from ct2pet_node.domain.volume import PetVolume
from ct2pet_node.errors import InputError, StorageError
from ct2pet_node.spool.atomic import atomic_write, ensure_private_dir

__all__ = ["SynthesisInfo", "read_ct_reference_header", "series_number_for", "write_pet_series"]

log = structlog.get_logger(__name__)

# Output series numbers follow the CT's, offset so they sort after it and
# stay the same on every retry.
_SERIES_NUMBER_OFFSET = {SECONDARY_CAPTURE: 1000, PET: 2000}


def read_ct_reference_header(source: Dataset | Path) -> Dataset:
    """One CT header of the source series, read without pixels when given a path."""
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(source, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as error:
        raise InputError(f"CT reference header {source} cannot be read ({error}); give one CT file") from None


def series_number_for(kind: str, ct_header: Dataset) -> int:
    """SeriesNumber of the ``kind`` output: the CT's plus a fixed per-kind offset."""
    base = ct_header.get("SeriesNumber", None)
    return _SERIES_NUMBER_OFFSET[kind] + (int(base) if base not in (None, "") else 0)


def _check_inputs(pet: PetVolume, kind: str, info: SynthesisInfo, ct_header: Dataset) -> None:
    if kind not in OUTPUT_KINDS:
        raise InputError(f"output kind {kind!r} is unknown; use one of {OUTPUT_KINDS}")
    if pet.units is not info.output_units:
        raise InputError(
            f"PET volume is in {pet.units.value} but the model declares {info.output_units.value}; "
            "build SynthesisInfo from the same weights that produced the volume"
        )
    ct = pet.source
    header_series = str(ct_header.get("SeriesInstanceUID", ""))
    header_study = str(ct_header.get("StudyInstanceUID", ""))
    # Copying patient attributes from the wrong series would file the
    # synthetic PET under another patient: refuse rather than guess.
    if header_series != ct.series_uid or header_study != ct.study_uid:
        raise InputError(
            f"CT reference header is from series {header_series!r} (study {header_study!r}) but the "
            f"volume was built from series {ct.series_uid!r} (study {ct.study_uid!r}); "
            "pass a header of the volume's own series"
        )


def _atomic_write(dataset: Dataset, target: Path) -> None:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    atomic_write(target, buffer.getbuffer())


def write_pet_series(
    pet: PetVolume,
    kind: str,
    info: SynthesisInfo,
    ct_reference_header: Dataset | Path,
    out_dir: Path,
    *,
    now: datetime.datetime | None = None,
) -> list[Path]:
    """Write ``pet`` as one DICOM series of ``kind`` into ``out_dir``.

    Parameters
    ----------
    pet : PetVolume
        Values (z, y, x) in ``info.output_units`` on the grid of ``pet.affine``;
        one slice per CT slice, in increasing slice position.
    kind : str
        ``"secondary-capture"`` or ``"pet"``.
    info : SynthesisInfo
        How the volume was made; recorded in every file.
    ct_reference_header : pydicom.dataset.Dataset or pathlib.Path
        One instance (header) of the source CT series: patient and study
        attributes are copied from it.
    out_dir : pathlib.Path
        Created if missing. Files are named ``<SOPInstanceUID>.dcm``; a file
        of the same name is replaced, so a retry leaves one copy.
    now : datetime.datetime, optional
        Creation time to record; the current local time when omitted.

    Returns
    -------
    list of pathlib.Path
        One path per slice, in increasing slice position.
    """
    ct_header = read_ct_reference_header(ct_reference_header)
    _check_inputs(pet, kind, info, ct_header)
    ct = pet.source
    created = (now or datetime.datetime.now()).replace(microsecond=0)
    series_uid = output_series_uid(ct.series_uid, info.model_id, kind)
    series_number = series_number_for(kind, ct_header)
    n_slices = pet.values.shape[0]
    series_max = float(pet.values.max())
    display_window = window(info.output_units, series_max)
    series_slope = rescale_slope(series_max)
    try:
        # Patient data: the folder and any it needs are the service user's alone, whatever the umask.
        ensure_private_dir(out_dir)
    except OSError as error:
        raise StorageError(f"output folder {out_dir} cannot be created ({error.strerror})") from None

    paths: list[Path] = []
    for index in range(n_slices):
        values = pet.values[index]
        sop_uid = output_sop_instance_uid(ct.series_uid, info.model_id, kind, index)
        out = OutputSlice(
            index=index,
            geometry=slice_geometry(pet.affine, index),
            ct=ct,
            ct_header=ct_header,
            info=info,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            window=display_window,
            now=created,
        )
        if kind == PET:
            slope = rescale_slope(float(np.max(values)))
            dataset = build_pet_slice(out, to_uint16(values, slope), slope, n_slices)
        else:
            dataset = build_sc_slice(out, to_uint16(values, series_slope), series_slope)
        target = out_dir / f"{sop_uid}.dcm"
        try:
            _atomic_write(dataset, target)
        except OSError as error:
            raise StorageError(f"cannot write {target} ({error.strerror}); check free space") from None
        paths.append(target)
    log.info(
        "output_series_written",
        kind=kind,
        ct_series_uid=ct.series_uid,
        series_uid=series_uid,
        model_id=info.model_id,
        n_instances=len(paths),
        out_dir=str(out_dir),
    )
    return paths

"""The body-weight SUV factor of a PET series, from its header. No I/O.

SUVbw follows the QIBA "SUV vendor-neutral pseudo-code" (also what dcm4che
and PyRadiomics' examples implement)::

    SUVbw = activity [Bq/ml] * weight [g] / (injected dose [Bq] * 2 ** (-t / half-life))

where ``t`` is the time from the radiopharmaceutical start to the moment the
image values are decay-corrected to (DecayCorrection):

* ``START``: the series start, SeriesDate/SeriesTime. When that is later than
  the acquisition (a post-processed series re-stamped with its creation
  time), QIBA uses GE's private scan date-time (0009,100D) when present and
  otherwise the earliest AcquisitionDate/AcquisitionTime of the series;
* ``ADMIN``: the values are already corrected to the administration time, so
  ``t`` is 0;
* ``NONE``: refused, the values would need per-frame decay correction.

Only Units BQML is accepted: CNTS needs vendor calibration and GML is already
an SUV whose inputs cannot be checked. Every missing or implausible input is
refused with :class:`~ct2pet_node.errors.InputError` naming the tag.

Times without dates: the radiopharmaceutical start is taken on the reference
date, and on the day before when that would put the injection after the scan
(an injection before midnight for a scan after it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from ct2pet_node.errors import InputError

log = structlog.get_logger(__name__)

# Plausibility limits: outside them the value is a typing or unit error
# (dose in MBq, weight in pounds or grams), not a patient.
MIN_WEIGHT_KG = 1.0
MAX_WEIGHT_KG = 500.0
MIN_DOSE_BQ = 1e6
MAX_DOSE_BQ = 5e10
MIN_HALF_LIFE_S = 10.0
MAX_HALF_LIFE_S = 1e7
MAX_DECAY_HALF_LIVES = 10.0
_GE_PET_CREATOR = "GEMS_PETD_01"


@dataclass(frozen=True, slots=True)
class SuvInputs:
    """The header values an SUVbw factor was computed from.

    Attributes
    ----------
    patient_weight_kg : float
        PatientWeight, kg.
    injected_dose_bq : float
        RadionuclideTotalDose, Bq, at ``injection_time``.
    half_life_s : float
        RadionuclideHalfLife, seconds.
    injection_time, reference_time : datetime
        Scanner-local, naive: the radiopharmaceutical start and the moment
        the image values are decay-corrected to.
    reference_source : str
        Which tag ``reference_time`` came from.
    """

    units: str
    decay_correction: str
    patient_weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    injection_time: datetime
    reference_time: datetime
    reference_source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601 text)."""
        data = asdict(self)
        data["injection_time"] = self.injection_time.isoformat()
        data["reference_time"] = self.reference_time.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class SuvFactor:
    """Multiply activity in Bq/ml by ``per_bq_ml`` to get SUVbw (g/ml).

    Attributes
    ----------
    per_bq_ml : float
        weight [g] / decayed dose [Bq].
    decay_seconds : float
        Time the dose was decayed over, seconds (0 for ADMIN).
    decayed_dose_bq : float
        The injected dose at ``inputs.reference_time``, Bq.
    """

    per_bq_ml: float
    decay_seconds: float
    decayed_dose_bq: float
    inputs: SuvInputs


def compute_suv_factor(inputs: SuvInputs) -> SuvFactor:
    """The SUVbw factor from checked inputs; refuses implausible values.

    Raises
    ------
    InputError
        Weight, dose, half-life or decay time out of their plausible range.
    """
    weight, dose, half_life = inputs.patient_weight_kg, inputs.injected_dose_bq, inputs.half_life_s
    if not (math.isfinite(weight) and MIN_WEIGHT_KG <= weight <= MAX_WEIGHT_KG):
        raise InputError(
            f"PatientWeight {weight} kg is implausible (expected {MIN_WEIGHT_KG}-{MAX_WEIGHT_KG} kg); "
            "correct the weight in the PET series before computing SUV"
        )
    if not (math.isfinite(dose) and dose > 0):
        raise InputError(
            f"RadionuclideTotalDose {dose} Bq is not positive; the injected dose is required for SUV"
        )
    if not MIN_DOSE_BQ <= dose <= MAX_DOSE_BQ:
        raise InputError(
            f"RadionuclideTotalDose {dose} Bq is implausible (expected {MIN_DOSE_BQ:g}-{MAX_DOSE_BQ:g} Bq; "
            "a value in MBq was probably written); correct the dose in the PET series"
        )
    if not (math.isfinite(half_life) and MIN_HALF_LIFE_S <= half_life <= MAX_HALF_LIFE_S):
        raise InputError(
            f"RadionuclideHalfLife {half_life} s is implausible "
            f"(expected {MIN_HALF_LIFE_S:g}-{MAX_HALF_LIFE_S:g} s)"
        )
    decay = (inputs.reference_time - inputs.injection_time).total_seconds()
    if decay < 0:
        raise InputError(
            f"radiopharmaceutical start {inputs.injection_time.isoformat()} is after the decay reference "
            f"{inputs.reference_time.isoformat()} ({inputs.reference_source}); check the injection time"
        )
    if decay > MAX_DECAY_HALF_LIVES * half_life:
        raise InputError(
            f"{decay:.0f} s between radiopharmaceutical start {inputs.injection_time.isoformat()} and "
            f"{inputs.reference_source} {inputs.reference_time.isoformat()} is more than "
            f"{MAX_DECAY_HALF_LIVES:g} half-lives; check the injection date and time"
        )
    decayed = dose * 2.0 ** (-decay / half_life)
    return SuvFactor(
        per_bq_ml=weight * 1000.0 / decayed, decay_seconds=decay, decayed_dose_bq=decayed, inputs=inputs
    )


def suv_bw_factor(header: Dataset, earliest_acquisition: datetime | None = None) -> SuvFactor:
    """The SUVbw factor of a PET series from one of its headers.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        A PET image header (pixel data not needed).
    earliest_acquisition : datetime, optional
        Earliest AcquisitionDate/Time over the series; used when SeriesTime
        is later than the acquisition. Defaults to this header's own.

    Raises
    ------
    InputError
        Units, decay correction, weight, dose, half-life or a time is
        missing, unsupported or implausible; the message names the tag.
    """
    return compute_suv_factor(suv_inputs(header, earliest_acquisition))


def suv_inputs(header: Dataset, earliest_acquisition: datetime | None = None) -> SuvInputs:
    """Read and check the SUV inputs of a PET header (see :func:`suv_bw_factor`)."""
    units = str(header.get("Units", "") or "").strip().upper()
    if units != "BQML":
        raise InputError(
            f"PET Units is {units or 'missing'!r}, not BQML; SUVbw is computed from activity in Bq/ml only "
            "(export the PET series in Bq/ml)"
        )
    correction = str(header.get("DecayCorrection", "") or "").strip().upper()
    if correction not in ("START", "ADMIN"):
        raise InputError(
            f"PET DecayCorrection is {correction or 'missing'!r}; only START and ADMIN are supported "
            "(export the PET series decay-corrected to the scan start)"
        )
    corrected = {str(v).strip().upper() for v in (header.get("CorrectedImage") or [])}
    if corrected and not {"ATTN", "DECY"} <= corrected:
        raise InputError(
            f"PET CorrectedImage {sorted(corrected)} lacks ATTN or DECY; only attenuation- and "
            "decay-corrected PET gives SUV"
        )
    weight = _positive_number(header, "PatientWeight", "kg")
    drug = _radiopharmaceutical(header)
    dose = _positive_number(drug, "RadionuclideTotalDose", "Bq")
    half_life = _positive_number(drug, "RadionuclideHalfLife", "s")
    if correction == "ADMIN":
        injection = _injection_time(drug, _series_start(header))
        reference, source = injection, "RadiopharmaceuticalStart (DecayCorrection ADMIN)"
    else:
        reference, source = _start_reference(header, earliest_acquisition)
        injection = _injection_time(drug, reference)
    return SuvInputs(
        units=units,
        decay_correction=correction,
        patient_weight_kg=weight,
        injected_dose_bq=dose,
        half_life_s=half_life,
        injection_time=injection,
        reference_time=reference,
        reference_source=source,
    )


def _positive_number(dataset: Dataset, keyword: str, unit: str) -> float:
    raw = dataset.get(keyword)
    text = str(raw).strip() if raw is not None else ""
    if not text:
        raise InputError(f"PET {keyword} ({unit}) is missing; SUVbw cannot be computed without it")
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"PET {keyword} {text!r} is not a number ({unit})") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"PET {keyword} is {text} {unit}; it must be a positive number for SUVbw")
    return value


def _radiopharmaceutical(header: Dataset) -> Dataset:
    items = header.get("RadiopharmaceuticalInformationSequence") or []
    if len(items) != 1:
        raise InputError(
            f"PET RadiopharmaceuticalInformationSequence has {len(items)} items; exactly one is needed "
            "for the injected dose, start time and half-life"
        )
    item: Dataset = items[0]
    return item


def _parse_date(text: str, keyword: str) -> date:
    try:
        return DA(text)
    except (ValueError, TypeError):
        raise InputError(f"PET {keyword} {text!r} is not a DICOM date (YYYYMMDD)") from None


def _parse_time(text: str, keyword: str) -> time:
    try:
        return TM(text.strip())
    except (ValueError, TypeError):
        raise InputError(f"PET {keyword} {text!r} is not a DICOM time (HHMMSS.FFFFFF)") from None


def date_time(header: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
    """``date_keyword`` + ``time_keyword`` as a naive datetime; None when either is absent."""
    date_text = str(header.get(date_keyword, "") or "").strip()
    time_text = str(header.get(time_keyword, "") or "").strip()
    if not date_text or not time_text:
        return None
    return datetime.combine(_parse_date(date_text, date_keyword), _parse_time(time_text, time_keyword))


def _series_start(header: Dataset) -> datetime:
    series = date_time(header, "SeriesDate", "SeriesTime")
    if series is None:
        raise InputError("PET SeriesDate or SeriesTime is missing; the decay reference time is unknown")
    return series


def _ge_scan_start(header: Dataset) -> datetime | None:
    try:
        element = header.get_private_item(0x0009, 0x0D, _GE_PET_CREATOR)
    except KeyError:
        return None
    text = str(element.value).strip()
    return _naive(DT(text)) if text else None


def _naive(moment: datetime) -> datetime:
    # Injection and series times come from one scanner clock; drop any offset
    # rather than compare an aware time with a naive one. A plain datetime,
    # not pydicom's DT subclass, so values compare and print plainly.
    return datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond
    )


def _start_reference(header: Dataset, earliest_acquisition: datetime | None) -> tuple[datetime, str]:
    series = _series_start(header)
    acquisition = earliest_acquisition or date_time(header, "AcquisitionDate", "AcquisitionTime")
    if acquisition is None or series <= acquisition:
        return series, "SeriesDate/SeriesTime"
    scan = _ge_scan_start(header)
    if scan is not None:
        return scan, "GE private scan date-time (0009,100D)"
    log.warning("pet_series_time_after_acquisition", series_time=series.isoformat())
    return acquisition, "earliest AcquisitionDate/AcquisitionTime (SeriesTime is later)"


def _injection_time(drug: Dataset, reference: datetime) -> datetime:
    full = str(drug.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    if full:
        try:
            return _naive(DT(full))
        except (ValueError, TypeError):
            raise InputError(
                f"PET RadiopharmaceuticalStartDateTime {full!r} is not a DICOM date-time"
            ) from None
    text = str(drug.get("RadiopharmaceuticalStartTime", "") or "").strip()
    if not text:
        raise InputError(
            "PET RadiopharmaceuticalStartTime and RadiopharmaceuticalStartDateTime are both missing; "
            "the injection time is required for decay correction"
        )
    injection = datetime.combine(reference.date(), _parse_time(text, "RadiopharmaceuticalStartTime"))
    if injection > reference:
        # Only a time was stored: the injection was before midnight, the scan after.
        injection -= timedelta(days=1)
    return injection

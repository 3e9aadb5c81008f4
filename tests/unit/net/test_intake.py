"""The one way into the spool for instances a fetch retrieves by WADO-RS (decoded data sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    XRayRadiationDoseSRStorage,
)

from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.domain.uids import AeTitle
from ct2pet_node.net.intake import SUCCESS, InstanceIntake
from ct2pet_node.net.store_header import INVALID_HEADER, Refusal
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

STUDY = "1.2.826.0.1.3680043.10.7"
SERIES = "1.2.826.0.1.3680043.10.7.1"


def _ct(index: int, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{SERIES}.{index}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = (np.arange(4, dtype=np.int16) * index).tobytes()
    return ds


@pytest.fixture
def intake(tmp_path: Path) -> tuple[InstanceIntake, JobStore, list[InstanceRecord]]:
    store = JobStore.open(tmp_path)
    told: list[InstanceRecord] = []
    yield InstanceIntake(InstanceSpool(tmp_path, 0), store, told.append, clock=lambda: 5.0), store, told
    store.close()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_retrieved_data_set_is_spooled_recorded_and_routed_once(
    intake: tuple[InstanceIntake, JobStore, list[InstanceRecord]], syntax: str
) -> None:
    keep, store, told = intake
    assert keep.store_dataset(_ct(3, syntax), AeTitle("pacs-web")) == SUCCESS
    assert keep.store_dataset(_ct(3, syntax), AeTitle("pacs-web")) == SUCCESS  # again: kept once
    [record] = told
    assert (record.series_uid, record.calling_ae_title, record.transfer_syntax_uid) == (
        SERIES,
        "pacs-web",
        syntax,
    )
    assert [r.sop_instance_uid for r in store.instances_of(SERIES)] == [f"{SERIES}.3"]
    spooled = pydicom.dcmread(record.path)
    assert spooled.file_meta.TransferSyntaxUID == syntax
    assert spooled.file_meta.MediaStorageSOPInstanceUID == f"{SERIES}.3"
    assert spooled.pixel_array.tolist() == [[0, 3], [6, 9]]


def test_a_data_set_without_its_keys_is_refused_and_nothing_kept(
    intake: tuple[InstanceIntake, JobStore, list[InstanceRecord]],
) -> None:
    keep, store, told = intake
    broken = _ct(1)
    del broken.SeriesInstanceUID
    with pytest.raises(Refusal) as refused:
        keep.store_dataset(broken, AeTitle("pacs-web"))
    assert refused.value.status == INVALID_HEADER and "SeriesInstanceUID" in refused.value.reason
    assert told == [] and store.instances_of(SERIES) == []


def test_a_data_set_that_is_not_ct_is_dropped_as_the_scp_drops_it(
    intake: tuple[InstanceIntake, JobStore, list[InstanceRecord]],
) -> None:
    keep, store, told = intake
    report = _ct(2)
    report.SOPClassUID = XRayRadiationDoseSRStorage
    assert keep.store_dataset(report, AeTitle("pacs-web")) is None
    assert told == [] and store.instances_of(SERIES) == []

"""Instances a fetch retrieves by WADO-RS (decoded data sets) enter the spool as a push would."""

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
from ct2pet_node.net.intake import NOT_CT, SUCCESS, Intake, Outcome
from ct2pet_node.net.part10 import Unreadable, arrival_of_dataset
from ct2pet_node.net.store_header import INVALID_HEADER
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

STUDY = "1.2.826.0.1.3680043.10.7"
SERIES = "1.2.826.0.1.3680043.10.7.1"


def _keep(intake: Intake, dataset: Dataset) -> Outcome:
    arrival = arrival_of_dataset(dataset, "pacs-web")
    return arrival.outcome if isinstance(arrival, Unreadable) else intake.receive(arrival)


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
def intake(tmp_path: Path) -> tuple[Intake, JobStore, list[InstanceRecord]]:
    store = JobStore.open(tmp_path)
    told: list[InstanceRecord] = []
    yield (
        Intake(InstanceSpool(tmp_path, 0), store, told.append, 512 * 1024 * 1024, "accept", lambda: 5.0),
        store,
        told,
    )
    store.close()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_retrieved_data_set_is_spooled_recorded_and_routed_once(
    intake: tuple[Intake, JobStore, list[InstanceRecord]], syntax: str
) -> None:
    keep, store, told = intake
    assert _keep(keep, _ct(3, syntax)).stored
    assert _keep(keep, _ct(3, syntax)).status == SUCCESS  # again: kept once
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
    intake: tuple[Intake, JobStore, list[InstanceRecord]],
) -> None:
    keep, store, told = intake
    broken = _ct(1)
    del broken.SeriesInstanceUID
    refused = _keep(keep, broken)
    assert refused.status == INVALID_HEADER and "SeriesInstanceUID" in refused.reason
    assert told == [] and store.instances_of(SERIES) == []


def test_a_data_set_that_is_not_ct_is_dropped_as_the_scp_drops_it(
    intake: tuple[Intake, JobStore, list[InstanceRecord]],
) -> None:
    keep, store, told = intake
    report = _ct(2)
    report.SOPClassUID = XRayRadiationDoseSRStorage
    dropped = _keep(keep, report)
    assert (dropped.status, dropped.reason, dropped.stored) == (SUCCESS, NOT_CT, False)
    assert told == [] and store.instances_of(SERIES) == []

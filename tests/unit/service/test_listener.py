"""The counting storage SCP: every failure status it answers reaches ``ct2pet_instances_rejected_total``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from ct2pet_node.config import load_config
from ct2pet_node.domain.records import InstanceRecord
from ct2pet_node.net.scp import OUT_OF_RESOURCES, SUCCESS
from ct2pet_node.service.listener import CountingStorageScp
from ct2pet_node.service.metrics import NodeMetrics
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore


def _ct(index: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.3.1.{index}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.3"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.3.1"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.zeros((4, 4), dtype=np.int16).tobytes()
    return ds


def test_refusals_are_counted_by_status_and_stored_instances_are_not(tmp_path: Path) -> None:
    config = load_config()
    node = dataclasses.replace(config.node, data_dir=tmp_path, host="127.0.0.1", network_timeout_seconds=5)
    metrics = NodeMetrics()
    spool = InstanceSpool(tmp_path, 0)
    stored: list[InstanceRecord] = []
    with JobStore.open(tmp_path) as store:
        scp = CountingStorageScp(
            node, config.security, spool, store, stored.append, address=("127.0.0.1", 0), metrics=metrics
        )
        scp.start()
        try:
            ae = AE(ae_title="SCANNER")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
            ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
            association = ae.associate("127.0.0.1", scp.port, ae_title=node.ae_title)
            assert association.is_established
            assert association.send_c_store(_ct(1)).Status == SUCCESS
            spool.min_free_mb = 10**9  # the data directory is "full" from here on
            assert association.send_c_store(_ct(2)).Status == OUT_OF_RESOURCES
            association.release()
        finally:
            scp.stop(5)
    assert len(stored) == 1
    assert metrics.sample("ct2pet_instances_rejected_total", status="0xA700") == 1
    assert metrics.sample("ct2pet_instances_rejected_total", status="0x0000") == 0

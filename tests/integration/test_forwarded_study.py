"""A PACS forwarding a whole PET/CT study to the node: the CT is kept, the rest acknowledged and dropped.

Orthanc runs in a private network namespace (``tests/peers.py``) and so does
the node's listener (started from a thread inside it), so Orthanc reaches
it on the namespace's loopback and nothing leaves it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from ctfactory import make_ct_series, series_uid_for
from fuzz.harness import RunningScp, node_config
from peers import DCMTK_ENV, NetNamespace, OrthancPeer, dcmtk_tool, namespaces_unavailable
from studyfactory import make_pet_series, make_structured_report

pytestmark = pytest.mark.integration

CT_SLICES = 12
PET_SLICES = 4


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    """CT, PET and a report of one study, in one folder (a study as a PACS holds it)."""
    folder = tmp_path / "study"
    return [
        *make_ct_series(folder, n=CT_SLICES, rows=32, cols=32),
        *make_pet_series(folder, n=PET_SLICES),
        make_structured_report(folder),
    ]


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetNamespace() as made:
        yield made


def _node_in(namespace: NetNamespace, data_dir: Path, other_sop_classes: str) -> RunningScp:
    config = node_config(data_dir)
    config = dataclasses.replace(
        config, node=dataclasses.replace(config.node, other_sop_classes=other_sop_classes)
    )
    with namespace.entered():  # the listening socket is made, and served, inside the namespace
        return RunningScp(config)


def _forward(orthanc: OrthancPeer, study: list[Path], port: int) -> dict:
    """Upload the study to Orthanc, make the node a modality, and have Orthanc send it the study."""
    study_ids = {orthanc.upload(path)["ParentStudy"] for path in study}
    assert len(study_ids) == 1
    orthanc.rest("/modalities/ct2pet", "PUT", {"AET": "CT2PET", "Host": "127.0.0.1", "Port": port})
    job = orthanc.rest(
        "/modalities/ct2pet/store", "POST", {"Resources": sorted(study_ids), "Asynchronous": True}
    )
    return orthanc.wait_for_job(job["ID"])


def test_orthanc_forwarding_a_whole_study_succeeds_and_only_the_ct_is_kept(
    namespace: NetNamespace, tmp_path: Path, study: list[Path]
) -> None:
    node = _node_in(namespace, tmp_path / "data", "accept")
    try:
        with OrthancPeer(namespace, tmp_path / "orthanc") as orthanc:
            job = _forward(orthanc, study, node.port)
        assert job["State"] == "Success", job
        spooled = node.spooled()
        assert len(spooled) == CT_SLICES
        assert {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in spooled} == {"CT"}
        (only_job,) = node.store.list_jobs()
        assert only_job.series_uid == series_uid_for("ct") and only_job.n_instances == CT_SLICES
        assert node.scp.ignored_counts() == {
            "PositronEmissionTomographyImageStorage": PET_SLICES,
            "BasicTextSRStorage": 1,
        }
    finally:
        node.stop()


def test_with_other_sop_classes_refused_the_pet_is_refused_at_negotiation(
    namespace: NetNamespace, tmp_path: Path, study: list[Path]
) -> None:
    node = _node_in(namespace, tmp_path / "data", "refuse")
    try:
        with OrthancPeer(namespace, tmp_path / "orthanc") as orthanc:
            job = _forward(orthanc, study, node.port)
        assert job["State"] == "Failure", job  # today's behaviour, kept on request: the forward fails
        modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in node.spooled()}
        assert modalities <= {"CT"}
        assert node.scp.ignored_counts() == {}
    finally:
        node.stop()


def test_storescu_scanning_a_folder_of_mixed_objects_succeeds(tmp_path: Path, study: list[Path]) -> None:
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk's storescu not found; install dcmtk")
    node = RunningScp(node_config(tmp_path / "data"))
    try:
        # storescu proposes every storage SOP class it knows (over 100 presentation contexts).
        result = subprocess.run(
            [
                storescu,
                "-v",
                "+sd",
                "-aet",
                "SCANNER",
                "-aec",
                "CT2PET",
                "127.0.0.1",
                str(node.port),
                str(study[0].parent),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **DCMTK_ENV},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert output.count("Received Store Response (Success)") == len(study)
        assert len(node.spooled()) == CT_SLICES
        assert sum(node.scp.ignored_counts().values()) == PET_SLICES + 1
    finally:
        node.stop()

"""``ct2pet-node fetch`` against a real node process and a real Orthanc (DIMSE and DICOMweb).

Orthanc holds four studies: A (a CT series and a PT series), B and C (a CT
series each) and D (PT only). The node pulls A by C-MOVE, B by C-GET and C
by WADO-RS, each from its own ``[[sources]]`` entry for the same Orthanc,
which is also the node's destination: each time the synthetic series must
arrive in Orthanc. D has no CT, and the command says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ctfactory import PATIENT_ID, PATIENT_NAME, make_ct_series, series_uid_for
from peers import NetNamespace, NodeProcess, OrthancPeer, namespaces_unavailable
from pydicom.uid import generate_uid

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.spool.jobstore import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCP_PORT = 11112
ADMIN_PORT = 11180
ORTHANC_DICOM_PORT = 4242
ORTHANC_HTTP_PORT = 8042
SLICES = 8
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# The node's own HTTP client must not try a proxy from the environment: the namespace has only loopback.
NO_PROXY_ENV = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}


def _node_config(data_dir: Path, weights: Path) -> str:
    orthanc = f'ae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {ORTHANC_DICOM_PORT}\n'
    return (
        f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(data_dir))}\n'
        "min_free_mb = 0\n[routing]\nseries_quiet_seconds = 2.0\nmin_slices = 5\n"
        f'[engine]\nweights = {json.dumps(str(weights))}\ndevice = "cpu"\nsteps = 3\n'
        f'[output]\nseries = ["pet"]\ngrid = "model"\n[admin]\nlisten = "127.0.0.1:{ADMIN_PORT}"\n'
        f'[[destinations]]\nname = "orthanc"\n{orthanc}'
        f'[[sources]]\nname = "pacs-move"\n{orthanc}'
        f'[[sources]]\nname = "pacs-get"\n{orthanc}retrieve = "c-get"\n'
        f'[[sources]]\nname = "pacs-web"\ntype = "dicomweb"\nurl = "http://127.0.0.1:{ORTHANC_HTTP_PORT}/dicom-web"\n'
        f'[[sources]]\nname = "pacs-down"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {ORTHANC_DICOM_PORT + 1}\n'
    )


class Node(NodeProcess):
    """``python -m ct2pet_node start`` in the namespace, and its CLI."""

    def __init__(self, namespace: NetNamespace, work: Path, weights: Path) -> None:
        super().__init__(namespace, work, [SCP_PORT, ADMIN_PORT], env=NO_PROXY_ENV)
        self.config.write_text(_node_config(self.data_dir, weights))

    def fetch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("fetch", *args, timeout=120)

    def status(self) -> dict[str, Any]:
        answered = self.cli("status", "--json")
        assert answered.returncode == 0, answered.stderr
        return dict(json.loads(answered.stdout))

    def jobs(self) -> list[Job]:
        with JobStore.open(self.data_dir) as store:
            return store.list_jobs()

    def job_for(self, series_uid: str) -> Job | None:
        with JobStore.open(self.data_dir) as store:
            return store.job_for_series(series_uid)

    def wait_until(self, what: str, done: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            if any(job.state in (JobState.FAILED, JobState.REFUSED) for job in self.jobs()):
                break
            time.sleep(0.3)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])
        raise AssertionError(f"{what} did not happen; jobs {self.jobs()}\n{tail}")


def _delivered(node: Node, orthanc: OrthancPeer, series_uid: str) -> bool:
    """The series' job is done and each of its synthetic series is in Orthanc."""
    job = node.job_for(series_uid)
    if job is None or job.state is not JobState.DONE or not job.output_series_uids:
        return False
    return all(_in_orthanc(orthanc, uid) for uid in job.output_series_uids)


def _in_orthanc(orthanc: OrthancPeer, series_uid: str) -> bool:
    found = orthanc.rest("/tools/lookup", "POST", series_uid.encode())
    return any(item["Type"] == "Series" for item in found)


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"the Orthanc DICOMweb plugin is not at {DICOMWEB_PLUGIN} (apt install orthanc-dicomweb)")
    with NetNamespace() as ns:
        yield ns


def _orthanc(namespace: NetNamespace, work: Path) -> OrthancPeer:
    extra = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        # C-MOVE sends to the node's SCP; C-GET and C-FIND are asked by it.
        "DicomModalities": {"node": ["CT2PET", "127.0.0.1", SCP_PORT]},
    }
    return OrthancPeer(namespace, work, ORTHANC_DICOM_PORT, ORTHANC_HTTP_PORT, extra_config=extra)


def test_fetch_pulls_ct_by_c_move_c_get_and_wado_rs_and_says_when_a_study_has_none(
    namespace: NetNamespace, tmp_path: Path, tiny_weights: Path
) -> None:
    studies = {key: str(generate_uid()) for key in "ABCD"}
    files: list[Path] = []
    for key, series in (("A", "ct-a"), ("B", "ct-b"), ("C", "ct-c")):
        files += make_ct_series(
            tmp_path / series, n=SLICES, name=series, study_uid=studies[key], spacing=(500 / 64, 500 / 64)
        )
    for key, series in (("A", "pt-a"), ("D", "pt-d")):
        files += make_ct_series(tmp_path / series, n=3, name=series, study_uid=studies[key], modality="PT")
    node = Node(namespace, tmp_path / "node", tiny_weights)
    with _orthanc(namespace, tmp_path / "orthanc") as orthanc:
        for path in files:
            orthanc.upload(path)
        assert len(orthanc.rest("/series")) == 5
        try:
            node.start()

            # A dry run lists the CT series and takes nothing.
            dry = node.fetch("--source", "pacs-move", "--study", studies["A"], "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert "would take 1 CT series" in dry.stdout and series_uid_for("ct-a") in dry.stdout
            assert series_uid_for("pt-a") not in dry.stdout
            time.sleep(1)
            assert node.job_for(series_uid_for("ct-a")) is None

            for source, key, series in (
                ("pacs-move", "A", "ct-a"),
                ("pacs-get", "B", "ct-b"),
                ("pacs-web", "C", "ct-c"),
            ):
                pulled = node.fetch("--source", source, "--study", studies[key], "--json")
                assert pulled.returncode == 0, f"{source}: {pulled.stderr}"
                [answer] = json.loads(pulled.stdout)["series"]
                assert answer["series_uid"] == series_uid_for(series)
                assert answer["received"] == SLICES, source
                node.wait_until(
                    f"{series} by {source} reaches Orthanc",
                    lambda s=series: _delivered(node, orthanc, series_uid_for(s)),
                )
            assert len(orthanc.rest("/series")) == 5 + 3  # one synthetic series per fetched CT series

            # Fetched again: delivered again, kept once, no second job and nothing new at the destination.
            first_job = node.job_for(series_uid_for("ct-a"))
            again = node.fetch(
                "--source", "pacs-get", "--study", studies["A"], "--series", series_uid_for("ct-a")
            )
            assert again.returncode == 0, again.stderr
            assert f"8 received, job {first_job.id if first_job else '?'}" in again.stdout
            time.sleep(3)  # longer than the quiet time: a new job would have been made by now
            assert node.jobs() == [job for job in node.jobs() if job.state is JobState.DONE]
            assert len(node.jobs()) == 3 and len(orthanc.rest("/series")) == 5 + 3

            # Nothing to take: said so, exit code 2; an unknown source too.
            none = node.fetch("--source", "pacs-web", "--study", studies["D"])
            assert none.returncode == 2
            assert f"study {studies['D']} has no CT series (found: PT)" in none.stderr
            dimse_none = node.fetch("--source", "pacs-move", "--study", studies["D"])
            assert dimse_none.returncode == 2 and "has no CT series (found: PT)" in dimse_none.stderr
            unknown = node.fetch("--source", "nowhere", "--study", studies["A"])
            assert unknown.returncode == 2 and "no source named 'nowhere'" in unknown.stderr
            down = node.fetch("--source", "pacs-down", "--study", studies["A"])
            assert down.returncode == 2 and "source pacs-down: cannot connect" in down.stderr

            # status lists the last fetches, failed ones with their reason.
            fetches = node.status()["recent_fetches"]
            assert [f["method"] for f in fetches[1:4]] == ["C-MOVE", "C-GET", "WADO-RS"]
            assert all(f["instances"] == SLICES and f["error"] is None for f in fetches[1:4])
            assert fetches[0]["dry_run"] and fetches[0]["instances"] == 0
            assert "cannot connect" in (fetches[-1]["error"] or "")
            assert "has no CT series" in (fetches[-4]["error"] or "")
        finally:
            node.stop()
    logged = node.log_path.read_text(errors="replace")
    events = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    retrieved = {
        event["method"]: event["instances"] for event in events if event["event"] == "series_retrieved"
    }
    methods = [event["method"] for event in events if event["event"] == "series_retrieved"]
    assert methods == ["C-MOVE", "C-GET", "WADO-RS", "C-GET"]
    assert set(retrieved.values()) == {SLICES}
    assert sum(event["event"] == "admin_fetch" for event in events) == 9  # who asked, every time
    # Orthanc's C-FIND and QIDO-RS answers carry the patient's name and ID; none of it is logged.
    assert PATIENT_NAME not in logged and PATIENT_ID not in logged

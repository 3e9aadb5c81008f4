"""No patient name, ID or birth date in the node's logs, nor in what ``status`` and ``jobs`` print.

The node runs as a process (``--log-level info``, the default, which
includes every warning and error) on 40 slices of the shared sample study,
whose headers carry a fake name, ID and birth date; dcmtk's storescu sends
them, plus a PET instance the node must refuse, and the synthetic series go
to Orthanc. Every line the node wrote, and the JSON of ``status``, ``jobs
list`` and ``jobs show``, is searched for those values.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pydicom
import pytest
from peers import DCMTK_ENV, NetNamespace, dcmtk_tool
from soak.harness import SCP_PORT, NoDelayOrthanc, NodeRunner, NodeSettings, environment_problem, settle

pytestmark = pytest.mark.integration

SLICES = 40


def _identifying_values(path: Path) -> list[str]:
    """PatientName (whole, and each name part of 4+ characters), PatientID, PatientBirthDate."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    name = str(ds.PatientName)
    values = [name, name.replace("^", " "), str(ds.PatientID), str(ds.PatientBirthDate)]
    values += [part for part in re.split(r"[\^= ]", name) if len(part) >= 4]
    birth = str(ds.PatientBirthDate)
    values.append(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")  # as an ISO date, should anything reformat it
    return sorted({v for v in values if v})


def test_an_end_to_end_run_on_the_sample_logs_no_patient_identifiers(
    sample_dir: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    if reason := environment_problem():
        pytest.skip(reason)
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk's storescu not found (apt install dcmtk)")
    ct = sorted((sample_dir / "CT").glob("*.dcm"))[:SLICES]
    pet = sorted((sample_dir / "PT").glob("*.dcm"))[:1]
    secrets = _identifying_values(ct[0])
    assert len(secrets) >= 3, secrets  # the sample's headers do carry a (fake) name, ID and birth date

    settings = NodeSettings(weights=tiny_weights, kinds=("secondary-capture", "pet"), quiet_seconds=2.0)
    with NetNamespace() as namespace, NoDelayOrthanc(namespace, tmp_path / "orthanc") as orthanc:
        node = NodeRunner(namespace, tmp_path / "node", settings).start()
        try:
            sent = namespace.run(
                [storescu, "-aet", "SCANNER", "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), *map(str, ct)],
                env=DCMTK_ENV,
                timeout=120,
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
            # A PET instance: no presentation context for it, storescu gives up on it.
            namespace.run(
                [storescu, "-aet", "SCANNER", "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), str(pet[0])],
                env=DCMTK_ENV,
                timeout=60,
            )
            assert settle(
                time.monotonic() + 120,
                lambda: bool(node.jobs()) and all(job.state.is_final for job in node.jobs()),
            ), node.jobs()
            [job] = node.jobs()
            printed = [node.cli("status", "--json"), node.cli("jobs", "list", "--json")]
            printed.append(node.cli("jobs", "show", str(job.id)))
            held = orthanc.rest("/statistics")["CountInstances"]
        finally:
            assert node.terminate() == 0
    assert all(done.returncode == 0 for done in printed), [done.stderr for done in printed]
    log = node.log_text()
    # The log is the real one, at info, and does carry header values (UIDs are logged, by design).
    assert "instance_stored" in log and "node_stopped" in log
    assert str(pydicom.dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID) in log
    assert job.state.value == "done", job.reason
    assert held == 2 * SLICES
    texts = {"node log": log, **{f"`{' '.join(d.args[-4:])}`": d.stdout + d.stderr for d in printed}}
    leaks = [f"{value!r} in {where}" for where, text in texts.items() for value in secrets if value in text]
    assert leaks == []

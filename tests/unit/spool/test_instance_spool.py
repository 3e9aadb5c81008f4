"""The instance spool's layout and its refusal of hostile UIDs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ct2pet_node.errors import InputError, OutOfSpace
from ct2pet_node.spool.instances import InstanceSpool


def test_store_layout_and_modes(tmp_path: Path) -> None:
    spool = InstanceSpool(tmp_path / "data", min_free_mb=0)
    path = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM", b"body"], 8)
    assert path == tmp_path / "data" / "spool" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICMbody"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (tmp_path / "data", spool.root, path.parent, path.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("study", "series", "sop"),
    [
        ("1.2", "1.2.3", "../../../etc/passwd"),
        ("1.2", "..", "1.2.3.4"),
        ("/etc", "1.2.3", "1.2.3.4"),
        ("1.2", "1.2.3", "1.2.3.4/../../x"),
        ("1.2", "1.2.3", ""),
        ("1.2", "1.2.3", "1." + "2" * 70),
    ],
)
def test_hostile_uids_never_become_paths(tmp_path: Path, study: str, series: str, sop: str) -> None:
    spool = InstanceSpool(tmp_path / "data", min_free_mb=0)
    with pytest.raises(InputError, match="not a valid DICOM UID"):
        spool.store(study, series, sop, [b"x"], 1)
    assert list(spool.root.iterdir()) == []


def test_watermark_refuses_before_writing(tmp_path: Path) -> None:
    spool = InstanceSpool(tmp_path / "data", min_free_mb=10**9)
    with pytest.raises(OutOfSpace):
        spool.store("1.2", "1.2.3", "1.2.3.4", [b"x"], 1)
    assert list(spool.root.iterdir()) == []

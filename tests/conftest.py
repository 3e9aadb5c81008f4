"""Fixtures shared by every test: where the shared sample and reference live."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CT2PET_SHARED_DIR", REPO_ROOT.parent / "shared"))
SAMPLE_ARCHIVE = SHARED_DIR / "data" / "ctpet-sample.tar.xz"
REFERENCE_DIR = SHARED_DIR / "reference"
# Outside the repository on purpose: the sample must never be committed.
SAMPLE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ct2pet-node"


def _unpacked_sample() -> Path | None:
    explicit = os.environ.get("CT2PET_SAMPLE_DIR")
    if explicit:
        return Path(explicit) if (Path(explicit) / "CT").is_dir() else None
    target = SAMPLE_CACHE / "ctpet-sample"
    if (target / "CT").is_dir() and (target / "PT").is_dir():
        return target
    if not SAMPLE_ARCHIVE.is_file():
        return None
    SAMPLE_CACHE.mkdir(parents=True, exist_ok=True)
    partial = SAMPLE_CACHE / "unpacking"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    subprocess.run(["tar", "-xJf", str(SAMPLE_ARCHIVE), "-C", str(partial)], check=True)
    (partial / "ctpet-sample").rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real PET/CT sample study: a folder holding ``CT/`` and ``PT/``."""
    found = _unpacked_sample()
    if found is None:
        pytest.skip(f"shared sample study not found: set CT2PET_SAMPLE_DIR or provide {SAMPLE_ARCHIVE}")
    return found


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The CPDM reference folder (tiny model, golden vectors, manifest)."""
    if not (REFERENCE_DIR / "cpdm-tiny" / "vectors.npz").is_file():
        pytest.skip(f"CPDM reference not found at {REFERENCE_DIR}: set CT2PET_SHARED_DIR")
    return REFERENCE_DIR


def import_tiny_release(reference_dir: Path, out_root: Path) -> Path:
    """The tiny reference release imported into ``out_root/cpdm-tiny`` (64x64 model: plumbing, not quality)."""
    from ct2pet_node.engine.release import import_release_files as import_release

    release = reference_dir / "cpdm-tiny"
    out_dir = out_root / "cpdm-tiny"
    import_release(
        release / "config.yaml",
        release / "cpdm.pth",
        release / "vqgan.ckpt",
        release / "segmentation.ckpt",
        release / "segmentation.json",
        out_dir=out_dir,
    )
    return out_dir


@pytest.fixture(scope="session")
def tiny_weights(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reference release imported once per session (see :func:`import_tiny_release`)."""
    return import_tiny_release(reference_dir, tmp_path_factory.mktemp("weights"))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what a CLI command invoked in-process (click's CliRunner) does to global logging."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    structlog_config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**structlog_config)

"""Our weights format: one safetensors file per network plus ``manifest.json``.

A weights directory is self-describing: the manifest holds the architecture
needed to rebuild every network and the bridge, how CT goes in and PET comes
out (normalisation, kVp policy, output units), and the sha256 and size of
every file, so a truncated or tampered file is caught before it is used.
torch is imported only by the functions that touch tensors, so listing and
verifying weights stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.engine.manifest import (
    FORMAT_VERSION,
    FileEntry,
    PetScaling,
    WeightsManifest,
    manifest_from_json,
)
from ct2pet_node.errors import WeightsError
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_write_json

if TYPE_CHECKING:
    import torch

log = structlog.get_logger(__name__)

MANIFEST_NAME = "manifest.json"
NETWORK_NAMES = ("vqgan", "unet", "cond_attention", "cond_attenuation", "segmentation")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _created_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ct2pet-node {version('ct2pet-node')}"
    except PackageNotFoundError:
        return "ct2pet-node (unknown version)"


def tensors_sha256(state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over every network's tensors (names, dtypes, shapes, bytes) in sorted order.

    Not the files' sha256: safetensors writes its header in no fixed order, so
    equal tensors can give different file bytes.
    """
    import torch

    digest = hashlib.sha256()
    for network in sorted(state_dicts):
        for key in sorted(state_dicts[network]):
            tensor = state_dicts[network][key].detach().to("cpu").contiguous()
            digest.update(f"{network}/{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _model_id(prefix: str, tensors_digest: str, description: Mapping[str, Any]) -> str:
    # Tensors AND how they are used (architecture, normalisation, units): the same
    # tensors read out in other units are a different model for output UIDs.
    canonical = json.dumps(
        {"tensors_sha256": tensors_digest, **description}, sort_keys=True, separators=(",", ":")
    )
    return f"{prefix}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def load_manifest(weights_dir: Path) -> WeightsManifest:
    """Read ``manifest.json`` of a weights directory (no checksums: see :func:`verify_weights`)."""
    path = Path(weights_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(f"{path} does not exist; {weights_dir} is not a weights directory") from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is unreadable: {exc}") from exc
    return manifest_from_json(data, path)


def verify_weights(weights_dir: Path) -> list[str]:
    """Every problem of a weights directory, each naming its file; empty when sound."""
    weights_dir = Path(weights_dir)
    try:
        manifest = load_manifest(weights_dir)
    except WeightsError as exc:
        return [str(exc)]
    problems = []
    for name, entry in sorted(manifest.files.items()):
        path = weights_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            state = "truncated" if size < entry.size else "larger than recorded"
            problems.append(f"{path} is {state}: {size} bytes, manifest says {entry.size}")
        elif sha256_of(path) != entry.sha256:
            problems.append(f"{path} does not match its sha256 in the manifest (tampered or corrupted)")
    return problems


def save_weights(
    out_dir: Path,
    *,
    architecture: Mapping[str, Any],
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    normalisation: Mapping[str, Any],
    output_units: str,
    calibration: str,
    model_id_prefix: str,
    sources: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    geometry: ModelFrame | None = None,
    overwrite: bool = False,
) -> WeightsManifest:
    """Write a weights directory atomically: files go to a sibling folder renamed at the end.

    Parameters
    ----------
    out_dir : Path
        Directory to create; refused if it exists and is not empty, unless ``overwrite``.
    architecture : Mapping
        JSON-ready configs: ``image_size``, ``vqgan``, ``unet``, ``cond_stage``,
        ``bridge`` (see :class:`~ct2pet_node.engine.bridge.BridgeSchedule`), ``segmentation``.
    state_dicts : Mapping
        Network name (file stem, e.g. ``unet``) -> state dict; tensors are copied
        to contiguous CPU memory before saving.
    normalisation : Mapping
        ``ct`` (hu_offset, ct_max), ``pet`` (kind, scale), ``attenuation_kvp`` (mode, kvp).
    output_units, calibration : str
        What the output means, e.g. ``"SUVbw"`` or ``"relative"`` and its caveat text.
    model_id_prefix : str
        Human prefix of the model id, e.g. ``"cpdm-release"``.
    sources, extra : Mapping, optional
        Provenance of imported files (name -> sha256 ...) and free-form extras.
    geometry : ModelFrame, optional
        Orientation and pixel size of the training slices (see
        :mod:`ct2pet_node.domain.model_grid`); unstated means the release's assumed 500 mm.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    PetScaling(**dict(normalisation["pet"]))  # validate before writing anything
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise WeightsError(f"{out_dir} already exists and is not empty; choose a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        files: dict[str, FileEntry] = {}
        for name, state in sorted(state_dicts.items()):
            # clone(): zero-stride views and shared storage cannot be saved as they are.
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
            path = staging / f"{name}.safetensors"
            save_file(tensors, str(path), metadata={"network": name})
            files[path.name] = FileEntry(path.stat().st_size, sha256_of(path))
        description = {
            "architecture": architecture,
            "normalisation": normalisation,
            "output_units": output_units,
        }
        manifest = WeightsManifest(
            format_version=FORMAT_VERSION,
            model_id=_model_id(
                model_id_prefix, tensors_sha256(state_dicts), json.loads(json.dumps(description))
            ),
            architecture=json.loads(json.dumps(architecture)),
            normalisation=json.loads(json.dumps(normalisation)),
            output_units=output_units,
            calibration=calibration,
            files=files,
            sources=json.loads(json.dumps(dict(sources or {}))),
            created_by=_created_by(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            extra=json.loads(json.dumps(dict(extra or {}))),
            geometry=geometry,
        )
        atomic_write_json(staging / MANIFEST_NAME, manifest.to_json(), UMASK_FILE_MODE, indent=1)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("weights_saved", path=str(out_dir), model_id=manifest.model_id, networks=list(state_dicts))
    return manifest


def load_state_dicts(weights_dir: Path, verify: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Network name -> state dict (CPU tensors) of a weights directory.

    Raises
    ------
    WeightsError
        With every problem :func:`verify_weights` finds, when ``verify``; or a
        file that safetensors cannot read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_dir = Path(weights_dir)
    if verify:
        problems = verify_weights(weights_dir)
        if problems:
            raise WeightsError(
                f"weights in {weights_dir} failed verification; re-import or re-copy them:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
    manifest = load_manifest(weights_dir)
    states = {}
    for name in manifest.files:
        if not name.endswith(".safetensors"):
            continue
        path = weights_dir / name
        try:
            states[path.stem] = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path} is unreadable as safetensors: {exc}") from exc
    return states


def find_weights(search_dirs: Iterable[Path]) -> list[tuple[Path, WeightsManifest | str]]:
    """Weights directories in ``search_dirs`` (each itself, or its direct subdirectories).

    Returns
    -------
    list of (Path, WeightsManifest or str)
        The manifest, or the problem reading it; checksums are not computed.
    """
    found: list[tuple[Path, WeightsManifest | str]] = []
    seen: set[Path] = set()
    for root in map(Path, search_dirs):
        if not root.is_dir():
            continue
        candidates = [root] if (root / MANIFEST_NAME).exists() else sorted(p for p in root.iterdir())
        for candidate in candidates:
            if candidate in seen or not (candidate / MANIFEST_NAME).exists():
                continue
            seen.add(candidate)
            try:
                found.append((candidate, load_manifest(candidate)))
            except WeightsError as exc:
                found.append((candidate, str(exc)))
    return found

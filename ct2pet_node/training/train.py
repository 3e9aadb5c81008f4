"""``ct2pet-node train``: first stage, then attention segmenter, then bridge, then export.

Everything lands in the output folder::

    WEIGHTS_DIR/
      manifest.json, *.safetensors   the engine's weights format (load_pipeline reads it)
      hu_baseline.json               HU-bin -> mean SUV lookup fitted on the training slices
      training.json                  what was trained on, held out, and how long it took
      checkpoints/                   resumable state; re-running the same command resumes

Output units are SUVbw: PET targets are SUV mapped to [-1, 1] by the
configured ``linear`` or ``log1p`` normalisation with a fixed SUV scale,
never by per-slice maxima. Slices of the held-out block and its margins are
removed before anything (baseline included) sees the data. The manifest's
``geometry`` is the dataset's: head-first supine slices at its pixel size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.engine.device import resolve_device
from ct2pet_node.engine.manifest import CtScaling, PetScaling
from ct2pet_node.errors import InputError
from ct2pet_node.training.baseline import fit_hu_baseline
from ct2pet_node.training.checkpoints import final_path, load_payload, run_stage, save_atomic
from ct2pet_node.training.config import TrainConfig, load_train_config
from ct2pet_node.training.export import CHECKPOINT_DIR, architecture_of, export_weights
from ct2pet_node.training.train_bridge import (
    attenuation_maps,
    bridge_stage,
    build_bridge_networks,
    encode_all,
)
from ct2pet_node.training.train_segmentation import build_segmentation, predict_attention, segmentation_stage
from ct2pet_node.training.train_vqgan import build_vqgan, vqgan_params, vqgan_stage

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingSlices:
    """The slices training may use, already stripped of the held-out block.

    Attributes
    ----------
    hu, suv : numpy.ndarray
        float32 (N, S, S): CT in HU and PET in SUVbw at the model size.
    origins : tuple of (str, int)
        (study UID, slice index within the study) of each of the N slices.
    """

    hu: np.ndarray
    suv: np.ndarray
    origins: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """What a ``train`` call achieved: finished (weights exported) or stopped early to resume later."""

    finished: bool
    weights_dir: Path
    model_id: str | None
    steps_run: int


@dataclass(frozen=True, slots=True, eq=False)
class StudySlices:
    """One study of a built dataset, in memory.

    Attributes
    ----------
    hu, suv : numpy.ndarray
        float32 (N, S, S): CT in HU and PET in SUVbw on the model grid, slices by position.
    body : numpy.ndarray
        bool (N, S, S), the dataset builder's body mask.
    z_over_x : float
        Slice spacing divided by pixel spacing (for undistorted coronal views).
    """

    hu: np.ndarray
    suv: np.ndarray
    body: np.ndarray
    z_over_x: float


def read_dataset(data_dir: Path) -> dict[str, StudySlices]:
    """CT series UID -> :class:`StudySlices` of a dataset built by :mod:`ct2pet_node.training.dataset`."""
    from ct2pet_node.training.dataset import load_dataset

    dataset = load_dataset(Path(data_dir))
    if not dataset.studies:
        raise InputError(f"dataset {data_dir} holds no studies; add one with the dataset builder")
    studies = {}
    for study in dataset.studies:
        arrays = dataset.arrays(study)
        spacing = np.linalg.norm(study.affine_matrix[:3, :3], axis=0)
        studies[study.ct_series_uid] = StudySlices(
            hu=np.array(arrays.ct_hu, dtype=np.float32),
            suv=np.array(arrays.pet_suv, dtype=np.float32),
            body=np.array(arrays.body_mask, dtype=bool),
            z_over_x=float(spacing[2] / spacing[0]) if spacing[0] > 0 else 1.0,
        )
    return studies


def training_geometry(data_dir: Path) -> ModelFrame:
    """The in-plane geometry of a dataset's slices, which the exported manifest states.

    Head-first supine at the dataset's pixel size (``field_of_view_mm / size``):
    the grid the node will show every CT to the trained model on.
    """
    from ct2pet_node.training.dataset import load_dataset

    return load_dataset(Path(data_dir)).frame


def select_training_slices(studies: Mapping[str, StudySlices], config: TrainConfig) -> TrainingSlices:
    """Drop the held-out block (and margins) of the held-out study; check sizes; stack the rest."""
    holdout = config.data.holdout
    target = holdout.study or next(iter(studies))
    if holdout.excluded and target not in studies:
        raise InputError(f"held-out study {target!r} is not in the dataset (it has {sorted(studies)})")
    size = config.data.image_size
    hu_parts, suv_parts, origins = [], [], []
    for uid, study in studies.items():
        hu, suv = study.hu, study.suv
        if hu.shape[1:] != (size, size):
            raise InputError(
                f"dataset study {uid} has slices of {hu.shape[1:]} but data.image_size is {size}; "
                f"rebuild the dataset with size={size}"
            )
        keep = np.ones(hu.shape[0], dtype=bool)
        if uid == target and holdout.excluded:
            if holdout.stop > hu.shape[0]:
                raise InputError(
                    f"held-out slices {holdout.first}:{holdout.stop} exceed the {hu.shape[0]} slices of {uid}"
                )
            keep[holdout.excluded.start : holdout.excluded.stop] = False
        hu_parts.append(hu[keep])
        suv_parts.append(suv[keep])
        origins += [(uid, int(i)) for i in np.flatnonzero(keep)]
    if not origins:
        raise InputError("no training slices remain after the hold-out; shrink data.holdout")
    return TrainingSlices(np.concatenate(hu_parts), np.concatenate(suv_parts), tuple(origins))


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(
            part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True).encode()
        )
    return digest.hexdigest()[:16]


def _stage(
    run: Any, ckpt: Path, config: TrainConfig, progress: bool, budget: list[int | None]
) -> tuple[bool, int]:
    finished, done = run_stage(run, ckpt, config.checkpoint_every, progress, budget[0])
    if budget[0] is not None:
        budget[0] -= done
    return finished, done


def train(
    config_path: Path | str,
    data_dir: Path | str,
    out_dir: Path | str,
    progress: bool = True,
    *,
    stop_after: int | None = None,
) -> TrainOutcome:
    """Train (or resume training) a CPDM model and export it in the engine's weights format.

    Parameters
    ----------
    config_path : Path
        TRAIN.toml (see :mod:`ct2pet_node.training.config`).
    data_dir : Path
        A dataset folder made by the dataset builder.
    out_dir : Path
        WEIGHTS_DIR; created if needed. Re-running with the same arguments resumes.
    progress : bool
        Show tqdm bars on stderr.
    stop_after : int, optional
        Stop (after checkpointing) once this many optimiser steps ran in this
        call, counting all stages; the next call resumes. For time-boxed runs.

    Raises
    ------
    ConfigError
        Bad TRAIN.toml, or checkpoints made with other settings or data.
    InputError
        Missing or inconsistent dataset, or a hold-out outside it.
    """
    config = load_train_config(Path(config_path))
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    data = select_training_slices(read_dataset(Path(data_dir)), config)
    geometry = training_geometry(Path(data_dir))
    log.info("training_started", slices=len(data.origins), device=str(device), out=str(out_dir))
    base = _fingerprint(
        data.hu,
        data.suv,
        config.data.image_size,
        config.data.pet_normalisation,
        config.data.pet_scale_suv,
        config.seed,
        config.lr_final_fraction,
    )
    ct01 = torch.from_numpy(CtScaling().to_ct01(data.hu))[:, None]
    pet = PetScaling(config.data.pet_normalisation, config.data.pet_scale_suv)
    pet_m11 = torch.from_numpy(pet.to_m11(data.suv))[:, None]
    budget: list[int | None] = [stop_after]
    total = 0
    timings: dict[str, float] = {}

    vq_fp = _fingerprint(
        base,
        vqgan_params(config.vqgan),
        config.vqgan.lr,
        config.vqgan.batch_size,
        config.vqgan.commitment_beta,
        config.vqgan.dead_code_every,
        config.vqgan.crop_size,
    )
    torch.manual_seed(config.seed)
    vqgan = build_vqgan(config.vqgan)
    finished, total = _run_or_load(
        "vqgan",
        {"vqgan": vqgan},
        lambda: vqgan_stage(config.vqgan, vqgan, ct01, pet_m11, device, config.seed, vq_fp),
        vq_fp,
        ckpt,
        config,
        progress,
        budget,
        timings,
    )
    if not finished:
        return TrainOutcome(False, out_dir, None, total)
    vqgan.to(device).eval()

    hot = torch.from_numpy((data.suv >= config.data.hot_suv_threshold).astype(np.float32))[:, None]
    seg_fp = _fingerprint(
        base,
        config.segmentation.spec(),
        config.segmentation.lr,
        config.segmentation.batch_size,
        config.data.hot_suv_threshold,
    )
    torch.manual_seed(config.seed + 1)
    seg = build_segmentation(config.segmentation)
    finished, done = _run_or_load(
        "segmentation",
        {"segmentation": seg},
        lambda: segmentation_stage(config.segmentation, seg, ct01, hot, device, config.seed + 1, seg_fp),
        seg_fp,
        ckpt,
        config,
        progress,
        budget,
        timings,
    )
    total += done
    if not finished:
        return TrainOutcome(False, out_dir, None, total)
    seg.to(device).eval()

    architecture = architecture_of(config)
    caches = {
        "x0": encode_all(vqgan, pet_m11, device),
        "y": encode_all(vqgan, ct01, device),
        "attention": predict_attention(seg, ct01, device),
        "attenuation": attenuation_maps(ct01, config.data.attenuation_kvp),
    }
    bridge_fp = _fingerprint(
        vq_fp,
        config.vqgan.steps,
        seg_fp,
        config.segmentation.steps,
        architecture["unet"],
        architecture["bridge"],
        config.bridge.lr,
        config.bridge.batch_size,
        config.bridge.ema_decay,
        config.bridge.ema_start,
        config.data.attenuation_kvp,
    )
    torch.manual_seed(config.seed + 2)
    nets = build_bridge_networks(config.bridge, architecture["cond_stage"])

    def make_bridge() -> Any:
        return bridge_stage(config.bridge, nets, caches, device, config.seed + 2, bridge_fp)

    finished, done = _run_or_load(
        "bridge", nets, make_bridge, bridge_fp, ckpt, config, progress, budget, timings
    )
    total += done
    if not finished:
        return TrainOutcome(False, out_dir, None, total)

    states = {
        name: load_payload(final_path(ckpt, name))["modules"][name]  # type: ignore[index]
        for name in ("vqgan", "segmentation")
    }
    states.update(load_payload(final_path(ckpt, "bridge"))["modules"])  # type: ignore[index]
    baseline = fit_hu_baseline(data.hu, data.suv)
    model_id = export_weights(
        out_dir, config, architecture, states, baseline, data.origins, timings, geometry=geometry
    )
    log.info("training_finished", model_id=model_id, out=str(out_dir))
    return TrainOutcome(True, out_dir, model_id, total)


def _run_or_load(
    name: str,
    modules: Mapping[str, torch.nn.Module],
    make_run: Any,
    fingerprint: str,
    ckpt: Path,
    config: TrainConfig,
    progress: bool,
    budget: list[int | None],
    timings: dict[str, float],
) -> tuple[bool, int]:
    """Load a finished stage's final weights, or (re)run the stage and save them when it finishes."""
    final = load_payload(final_path(ckpt, name))
    run = dataclasses.replace(make_run(), lr_final_fraction=config.lr_final_fraction)
    # A stage's own step count is not in its fingerprint, so raising it continues training.
    if (
        final is not None
        and final.get("fingerprint") == fingerprint
        and final.get("steps") == run.total_steps
    ):
        for key, module in modules.items():
            module.load_state_dict(final["modules"][key])
        timings[name] = float(final.get("seconds", 0.0))
        return True, 0
    started = time.monotonic()
    finished, done = _stage(run, ckpt, config, progress, budget)
    timings[name] = time.monotonic() - started
    log.info("training_stage_ran", stage=name, steps=done, finished=finished, seconds=round(timings[name], 1))
    if finished:
        # Later stages and the export use the EMA weights where the stage keeps an average.
        exported = {
            key: (run.ema.state_dict_of(key) if run.ema is not None else module.state_dict())
            for key, module in modules.items()
        }
        save_atomic(
            final_path(ckpt, name),
            {
                "fingerprint": fingerprint,
                "modules": exported,
                "seconds": timings[name],
                "steps": run.total_steps,
            },
        )
    return finished, done

"""Writing a trained model: the engine's weights format plus the baseline and a training record.

Weights are staged under ``checkpoints/export`` by
:func:`~ct2pet_node.engine.weights.save_weights`, then moved into WEIGHTS_DIR
file by file with ``manifest.json`` last, so a reader never sees a manifest
naming files that are not there yet, and the checkpoints beside them survive.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.manifest import CtScaling
from ct2pet_node.engine.weights import save_weights
from ct2pet_node.spool.atomic import UMASK_FILE_MODE, atomic_write_json
from ct2pet_node.training.baseline import HuLookupBaseline, save_baseline
from ct2pet_node.training.config import TrainConfig
from ct2pet_node.training.train_bridge import cond_stage_params
from ct2pet_node.training.train_vqgan import vqgan_params

OUTPUT_UNITS = "SUVbw"
TRAINING_RECORD = "training.json"
CHECKPOINT_DIR = "checkpoints"


def architecture_of(config: TrainConfig) -> dict[str, Any]:
    """The manifest's ``architecture``: everything needed to rebuild the networks and the bridge."""
    factor = 2 ** (len(config.vqgan.ddconfig["ch_mult"]) - 1)
    return {
        "image_size": config.data.image_size,
        "vqgan": vqgan_params(config.vqgan),
        "unet": dict(config.bridge.unet),
        "cond_stage": cond_stage_params(factor, config.vqgan.embed_dim),
        "bridge": BridgeSchedule.from_config(config.bridge.schedule).to_config(),
        "segmentation": config.segmentation.spec(),
    }


def _normalisation(config: TrainConfig) -> dict[str, Any]:
    """The manifest's ``normalisation``: CT as the release, PET by a fixed SUV scale."""
    ct = CtScaling()
    return {
        "ct": {"hu_offset": ct.hu_offset, "ct_max": ct.ct_max},
        "pet": {"kind": config.data.pet_normalisation, "scale": config.data.pet_scale_suv},
        "attenuation_kvp": {"mode": "fixed", "kvp": config.data.attenuation_kvp},
    }


def export_weights(
    out_dir: Path,
    config: TrainConfig,
    architecture: Mapping[str, Any],
    states: Mapping[str, Mapping[str, torch.Tensor]],
    baseline: HuLookupBaseline,
    origins: Sequence[tuple[str, int]],
    timings: Mapping[str, float],
    *,
    geometry: ModelFrame,
) -> str:
    """Write weights, baseline and record into ``out_dir``; the manifest is renamed in last.

    ``geometry`` is the training slices' in-plane geometry (the dataset's), which the
    manifest states so that the node shows every CT to the model the way it was trained.
    """
    staging = out_dir / CHECKPOINT_DIR / "export"
    studies = sorted({uid for uid, _ in origins})
    holdout = config.data.holdout
    manifest = save_weights(
        staging,
        architecture=architecture,
        state_dicts=states,
        normalisation=_normalisation(config),
        output_units=OUTPUT_UNITS,
        calibration=(
            f"SUVbw learned by ct2pet-node train from {len(origins)} slices of {len(studies)} "
            "studies; PET targets normalised with a fixed SUV scale, not per slice; not clinically validated"
        ),
        model_id_prefix=config.model_id_prefix,
        sources={"training_studies": studies},
        extra={
            "holdout": {
                "study": holdout.study or studies[0],
                "slices": f"{holdout.first}:{holdout.stop}",
                "margin": holdout.margin,
            },
            "hot_suv_threshold": config.data.hot_suv_threshold,
        },
        geometry=geometry,
        overwrite=True,
    )
    for name in manifest.files:
        os.replace(staging / name, out_dir / name)
    save_baseline(baseline, out_dir)
    record = {
        "model_id": manifest.model_id,
        "config": dict(config.source),
        "training_slices": [[uid, index] for uid, index in origins],
        "excluded": {
            "study": holdout.study or studies[0],
            "slices": [holdout.excluded.start, holdout.excluded.stop],
        },
        "seconds": dict(timings),
    }
    atomic_write_json(out_dir / TRAINING_RECORD, record, UMASK_FILE_MODE, indent=1)
    os.replace(staging / "manifest.json", out_dir / "manifest.json")
    shutil.rmtree(staging, ignore_errors=True)
    return manifest.model_id

"""The CPDM authors' release turned into a weights directory of ours.

The files are read by :mod:`ct2pet_node.engine.release_files` (no code of
theirs executed); here the state dicts are split per network and keyed as the
networks in :mod:`ct2pet_node.engine.networks` expect (file prefixes removed),
the architecture is read from the config, and both are checked against each
other before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import torch

from ct2pet_node.domain.model_grid import HEAD_FIRST_SUPINE, ModelFrame
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.manifest import RELEASE_CALIBRATION, WeightsManifest, release_normalisation
from ct2pet_node.engine.networks import build_networks, segmentation_spec_from_shapes
from ct2pet_node.engine.release_files import (
    StateDict,
    load_checkpoint,
    model_state_dict,
    read_release_config,
)
from ct2pet_node.engine.weights import save_weights, sha256_of
from ct2pet_node.errors import InputError, WeightsError

log = structlog.get_logger(__name__)


# cpdm.pth 'model' prefixes -> our network names (the dot keeps 'cond_stage_model.' apart from '_1.').
CPDM_PREFIXES: dict[str, str] = {
    "denoise_fn.": "unet",
    "vqgan.": "vqgan",
    "cond_stage_model.": "cond_attention",
    "cond_stage_model_1.": "cond_attenuation",
}
SCHEDULE_BUFFERS = (
    "m_t",
    "m_tminus",
    "variance_t",
    "variance_tminus",
    "variance_t_tminus",
    "posterior_variance_t",
)
# Only what inference runs: the VQGAN checkpoint also carries its GAN loss (discriminator, LPIPS).
VQGAN_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def split_cpdm(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, StateDict], StateDict]:
    """Split the CPDM model dict into per-network dicts and the schedule buffers.

    Returns
    -------
    networks : dict
        ``unet``, ``cond_attention``, ``cond_attenuation`` and (when present) ``vqgan``.
    buffers : dict
        The bridge schedule buffers stored alongside (``m_t``, ``variance_t``, ...).
    """
    networks: dict[str, StateDict] = {name: {} for name in CPDM_PREFIXES.values()}
    buffers: StateDict = {}
    unknown = []
    for key, tensor in state.items():
        if key in SCHEDULE_BUFFERS:
            buffers[key] = tensor
            continue
        for prefix, name in CPDM_PREFIXES.items():
            if key.startswith(prefix):
                networks[name][key[len(prefix) :]] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"CPDM checkpoint {path} has keys no network owns: {unknown[:8]}")
    missing = [n for n in ("unet", "cond_attention", "cond_attenuation") if not networks[n]]
    if missing:
        raise WeightsError(
            f"CPDM checkpoint {path} lacks the {missing} weights; is it the CPDM file (cpdm.pth)?"
        )
    if not networks["vqgan"]:
        del networks["vqgan"]
    return networks, buffers


def vqgan_from_lightning(state: Mapping[str, torch.Tensor], path: Path) -> StateDict:
    """The first stage's inference weights from the VQGAN checkpoint (loss networks dropped)."""
    kept = {k: v for k, v in state.items() if k.startswith(VQGAN_PREFIXES)}
    if not any(k.startswith("encoder.") for k in kept) or "quantize.embedding.weight" not in kept:
        raise WeightsError(
            f"VQGAN checkpoint {path} has no encoder or codebook (keys {sorted(state)[:6]}); "
            "is it the first-stage file (vqgan.ckpt)?"
        )
    return kept


def segmentation_from_lightning(state: Mapping[str, torch.Tensor], path: Path) -> StateDict:
    """The segmentation U-Net's weights (``model.`` stripped).

    The ImageNet ``mean``/``std`` buffers are dropped: the release never applies them.
    """
    kept = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not kept:
        raise WeightsError(
            f"segmentation checkpoint {path} has no 'model.' weights (keys {sorted(state)[:6]}); "
            "is it the segmentation file?"
        )
    return kept


def read_segmentation_spec(path: Path) -> dict[str, Any]:
    """The segmentation constructor from a JSON file holding it under ``segmentation`` (or bare)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"segmentation spec {path} is unreadable: {exc}") from exc
    spec = data.get("segmentation", data) if isinstance(data, dict) else None
    if not isinstance(spec, dict) or "encoder_name" not in spec:
        raise WeightsError(f"segmentation spec {path} has no 'encoder_name'; expected the smp Unet arguments")
    return spec


def architecture_from_config(config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Everything needed to rebuild the networks and the bridge, from the release config.

    Raises
    ------
    WeightsError
        A needed entry is missing, or the config asks for something this
        engine does not implement (latent normalisation, latent before quant_conv).
    """
    try:
        model = config["model"]
        bb = model["BB"]["params"]
        unet = dict(bb["UNetParams"])
        cond = dict(model["CondStageParams"])
        vq = dict(model["VQGAN"]["params"])
        data = config["data"]["dataset_config"]
        image_size = int(data["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"release config {path} lacks {exc}; is it the CPDM config.yaml?") from exc
    if model.get("normalize_latent"):
        raise WeightsError(f"release config {path} sets normalize_latent, which this engine does not support")
    if model.get("latent_before_quant_conv"):
        raise WeightsError(
            f"release config {path} sets latent_before_quant_conv, which this engine does not support"
        )
    if data.get("to_normal") is False:
        raise WeightsError(f"release config {path} sets to_normal false; the engine expects PET in [-1, 1]")
    bridge = {
        k: bb[k]
        for k in ("num_timesteps", "mt_type", "max_var", "eta", "objective", "skip_sample")
        if k in bb
    }
    bridge.update({k: bb[k] for k in ("sample_type", "sample_step") if k in bb})
    bridge["clip_denoised"] = bool((config.get("testing") or {}).get("clip_denoised", False))
    for dropped in ("ckpt_path", "lossconfig"):
        vq.pop(dropped, None)
    return {
        "image_size": image_size,
        "vqgan": vq,
        "unet": unet,
        "cond_stage": cond,
        "bridge": bridge,
    }


def _check_schedule(buffers: Mapping[str, torch.Tensor], bridge: Mapping[str, Any], path: Path) -> None:
    """The config's bridge must reproduce the m_t/variance_t buffers the weights were trained with."""
    schedule = BridgeSchedule.from_config(bridge)
    for name, ours in (("m_t", schedule.m_t), ("variance_t", schedule.variance_t)):
        stored = buffers.get(name)
        if stored is None:
            continue
        if tuple(stored.shape) != ours.shape or not torch.allclose(
            stored.float(), torch.from_numpy(ours), atol=1e-6
        ):
            raise WeightsError(
                f"CPDM checkpoint {path}: its {name} buffer disagrees with the config's bridge "
                f"({dict(bridge)}); the config does not belong to these weights"
            )


def _pick_vqgan(networks: dict[str, StateDict], vqgan: Path | None) -> StateDict:
    # The release builds the VQGAN from its own file, then loads the whole CPDM
    # state dict over it, so the copy inside cpdm.pth is what actually ran.
    inside = networks.pop("vqgan", None)
    if vqgan is None:
        if inside is None:
            raise WeightsError("the CPDM checkpoint holds no VQGAN weights; give the VQGAN file (vqgan.ckpt)")
        return inside
    separate = vqgan_from_lightning(model_state_dict(load_checkpoint(vqgan), vqgan), vqgan)
    if inside is None:
        return separate
    same = inside.keys() == separate.keys() and all(
        inside[k].shape == separate[k].shape and torch.equal(inside[k], separate[k]) for k in inside
    )
    if not same:
        log.warning("release_vqgan_differs", vqgan=str(vqgan), used="the copy inside the CPDM checkpoint")
    return inside


def _segmentation_spec(
    state: Mapping[str, torch.Tensor], path: Path, given: Path | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The U-Net constructor the checkpoint's shapes describe; a given spec must agree with them.

    The shapes decide, not the full-size release's resnet34 at depth 5: a
    retrained segmenter (another ResNet, depth or decoder) imports as it is.
    """
    if given is None:
        spec = None
    elif isinstance(given, Mapping):
        spec = dict(given.get("segmentation", given))
    else:
        spec = read_segmentation_spec(Path(given))
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    try:
        return segmentation_spec_from_shapes(shapes, spec)
    except WeightsError as exc:
        source = f"spec {given}" if isinstance(given, (str, Path)) else "spec given"
        raise WeightsError(f"segmentation checkpoint {path} and its {source}: {exc}") from exc


def import_release_files(
    config_yaml: Path,
    cpdm: Path,
    vqgan: Path | None,
    segmentation: Path,
    segmentation_spec: Path | Mapping[str, Any] | None = None,
    *,
    out_dir: Path,
    overwrite: bool = False,
    field_of_view_mm: float | None = None,
) -> WeightsManifest:
    """Read, check and convert the release into a weights directory; returns its manifest.

    ``field_of_view_mm`` is the in-plane field of view the training slices
    covered at the model's matrix; the release states none, so without it
    the manifest records the release sample's 500 mm, marked as assumed.

    Steps: parse the config safely; load each checkpoint weights-only; lay the
    EMA shadow over the CPDM model; split it per network; check the config's
    schedule against the stored buffers; read the segmentation U-Net's
    constructor from its shapes (checking ``segmentation_spec`` against them
    when one is given) and record that in the manifest; build every network
    and load its weights strictly (so an incompatible file fails here, not at
    inference); save with :func:`ct2pet_node.engine.weights.save_weights`.
    """
    config_yaml, cpdm, segmentation = Path(config_yaml), Path(cpdm), Path(segmentation)
    architecture = architecture_from_config(read_release_config(config_yaml), config_yaml)
    networks, buffers = split_cpdm(model_state_dict(load_checkpoint(cpdm), cpdm), cpdm)
    _check_schedule(buffers, architecture["bridge"], cpdm)
    networks["vqgan"] = _pick_vqgan(networks, Path(vqgan) if vqgan is not None else None)
    networks["segmentation"] = segmentation_from_lightning(
        model_state_dict(load_checkpoint(segmentation), segmentation), segmentation
    )
    architecture["segmentation"] = _segmentation_spec(
        networks["segmentation"], segmentation, segmentation_spec
    )
    build_networks(architecture, networks, origin=f"release files in {cpdm.parent}")

    sources = {
        role: {"name": p.name, "sha256": sha256_of(p)}
        for role, p in (
            ("config", config_yaml),
            ("cpdm", cpdm),
            ("vqgan", Path(vqgan) if vqgan is not None else None),
            ("segmentation", segmentation),
            (
                "segmentation_spec",
                Path(segmentation_spec) if isinstance(segmentation_spec, (str, Path)) else None,
            ),
        )
        if p is not None
    }
    manifest = save_weights(
        Path(out_dir),
        architecture=architecture,
        state_dicts=networks,
        normalisation=release_normalisation(),
        output_units="relative",
        calibration=RELEASE_CALIBRATION,
        model_id_prefix="cpdm-release",
        sources=sources,
        extra={"imported_from": "CPDM release (Nguyen et al., WACV 2025)"},
        geometry=_release_frame(int(architecture["image_size"]), field_of_view_mm),
        overwrite=overwrite,
    )
    log.info("release_imported", out_dir=str(out_dir), model_id=manifest.model_id)
    return manifest


def _release_frame(matrix: int, field_of_view_mm: float | None) -> ModelFrame:
    """Head-first supine (as the release's GE sample is stored) at the stated or assumed field of view."""
    if field_of_view_mm is None:
        return ModelFrame.release_default(matrix)
    try:
        return ModelFrame(matrix, float(field_of_view_mm) / matrix, HEAD_FIRST_SUPINE)
    except InputError as exc:
        raise WeightsError(f"field of view {field_of_view_mm} mm: {exc}") from exc

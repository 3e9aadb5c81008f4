"""Read the CPDM authors' release files without executing any of their code.

Checkpoints load with ``torch.load(weights_only=True)``; the YAML config with a
SafeLoader that understands ``!!python/tuple`` and refuses every other Python
tag. What comes out is plain dicts of tensors per network, keyed as the
networks in :mod:`ct2pet_node.engine.networks` expect (file prefixes removed).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import torch
import yaml

from ct2pet_node.domain.model_grid import HEAD_FIRST_SUPINE, ModelFrame
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.networks import build_networks, segmentation_spec_from_shapes
from ct2pet_node.engine.weights import (
    RELEASE_CALIBRATION,
    WeightsManifest,
    release_normalisation,
    save_weights,
    sha256_of,
)
from ct2pet_node.errors import InputError, WeightsError

log = structlog.get_logger(__name__)

StateDict = dict[str, torch.Tensor]

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

_PYTHON_TAG_PREFIX = "tag:yaml.org,2002:python/"
_TUPLE_TAG = _PYTHON_TAG_PREFIX + "tuple"


class _RefusedTag(yaml.YAMLError):  # type: ignore[misc]
    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


class ReleaseConfigLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader plus ``!!python/tuple`` (read as a list); any other Python tag is refused."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> list[Any]:
    # A list, not a tuple: the config ends up in JSON, and the networks accept sequences.
    if not isinstance(node, yaml.SequenceNode):
        raise _RefusedTag(f"{node.tag} on a non-sequence")
    items: list[Any] = loader.construct_sequence(node, deep=True)
    return items


def _refuse_python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise _RefusedTag(node.tag)


ReleaseConfigLoader.add_constructor(_TUPLE_TAG, _construct_tuple)
ReleaseConfigLoader.add_multi_constructor(_PYTHON_TAG_PREFIX, _refuse_python_tag)


def read_release_config(path: Path) -> dict[str, Any]:
    """Parse the release's YAML config safely.

    Raises
    ------
    WeightsError
        The file is missing, is not YAML, is not a mapping, or uses a tag other
        than ``!!python/tuple`` (the message names the file and the tag).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WeightsError(f"cannot read release config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=ReleaseConfigLoader)  # a SafeLoader subclass
    except _RefusedTag as exc:
        raise WeightsError(
            f"release config {path} uses the YAML tag {exc.tag!r}; only !!python/tuple is accepted, "
            "because other Python tags would execute code: remove the tag or use the authors' file"
        ) from exc
    except yaml.YAMLError as exc:
        raise WeightsError(f"release config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"release config {path} is not a YAML mapping (got {type(data).__name__})")
    return data


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint with ``weights_only=True`` onto the CPU.

    Raises
    ------
    WeightsError
        Missing, truncated, not a torch file, or holding objects other than
        tensors and plain containers; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist; check the path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"checkpoint {path} holds objects other than tensors and plain containers, "
            f"refused without executing them: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({exc}); download it again"
        ) from exc
    if not isinstance(data, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


def _tensors_only(entries: Mapping[str, Any], path: Path, what: str) -> StateDict:
    bad = [k for k, v in entries.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"checkpoint {path}: {what} entries {bad[:5]} are not tensors")
    return dict(entries)


def model_state_dict(checkpoint: Mapping[str, Any], path: Path) -> StateDict:
    """The inference state dict of a runner or Lightning checkpoint.

    Runner checkpoints (``{'model', 'ema', ...}``) get the EMA shadow laid over
    the raw model weights, as the release does for inference; Lightning
    checkpoints give their ``state_dict``; a bare mapping of tensors is taken as is.
    """
    path = Path(path)
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        state = _tensors_only(checkpoint["model"], path, "'model'")
        ema = checkpoint.get("ema")
        if ema is None:
            log.warning("release_checkpoint_without_ema", path=str(path))
            return state
        if not isinstance(ema, Mapping):
            raise WeightsError(f"checkpoint {path}: 'ema' is a {type(ema).__name__}, not a mapping")
        shadow = _tensors_only(ema, path, "'ema'")
        unknown = [k for k in shadow if k not in state]
        misshapen = [k for k in shadow if k in state and shadow[k].shape != state[k].shape]
        if unknown or misshapen:
            raise WeightsError(
                f"checkpoint {path}: EMA entries do not match the model (unknown {unknown[:5]}, "
                f"wrong shape {misshapen[:5]}); the file is not a CPDM runner checkpoint"
            )
        state.update(shadow)
        return state
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return _tensors_only(checkpoint["state_dict"], path, "'state_dict'")
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise WeightsError(
        f"checkpoint {path} has neither 'model' nor 'state_dict' (keys {sorted(checkpoint)[:8]}); "
        "give the release's CPDM, VQGAN or segmentation file"
    )


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

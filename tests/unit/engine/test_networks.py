"""The release networks: full-size keys/shapes against the manifest, tiny weights against golden vectors."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ct2pet_node.engine.networks import (
    RELEASE_CONFIG,
    VQGAN,
    Networks,
    SegmentationUNet,
    SpatialRescaler,
    UNet,
)
from ct2pet_node.engine.networks.unet import AttentionBlock
from ct2pet_node.errors import ConfigError, EngineError, WeightsError

ATOL = 1e-4
SCHEDULE_BUFFERS = {
    "m_t",
    "m_tminus",
    "variance_t",
    "variance_tminus",
    "variance_t_tminus",
    "posterior_variance_t",
}
CPDM_PREFIXES = ("denoise_fn.", "vqgan.", "cond_stage_model.", "cond_stage_model_1.")
VECTOR_KEYS = {
    "ct01",
    "seg_logits",
    "attention_map",
    "attenuation_map",
    "pet_m11",
    "vqgan_encode_ct",
    "vqgan_encode_pet",
    "vqgan_quantized_pet",
    "vqgan_code_indices_pet",
    "vqgan_decode_pet",
    "context_attention",
    "context_attenuation",
    "context",
    "unet_x_t",
    "unet_t",
    "unet_out",
}


class _TupleLoader(yaml.SafeLoader):
    """Safe YAML plus the release's ``!!python/tuple`` tag, and nothing else executable."""


_TupleLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, list[int]]:
    return {prefix + key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


# ---------------------------------------------------------------- full-size release, meta device


@pytest.fixture(scope="module")
def manifest(reference_dir: Path) -> dict[str, dict[str, list[int]]]:
    return json.loads((reference_dir / "cpdm-official-manifest.json").read_text())


def test_release_cpdm_model_matches_manifest(manifest: dict[str, dict[str, list[int]]]) -> None:
    expected = manifest["cpdm_model_state_dict"]
    assert {key for key in expected if not key.startswith(CPDM_PREFIXES)} == SCHEDULE_BUFFERS
    with torch.device("meta"):
        parts = {
            "denoise_fn.": UNet.from_config(RELEASE_CONFIG["UNetParams"]),
            "vqgan.": VQGAN.from_config(RELEASE_CONFIG["VQGAN"]),
            "cond_stage_model.": SpatialRescaler(**RELEASE_CONFIG["CondStageParams"]),
            "cond_stage_model_1.": SpatialRescaler(**RELEASE_CONFIG["CondStageParams"]),
        }
    built: dict[str, list[int]] = {}
    for prefix, module in parts.items():
        assert all(t.is_meta for t in module.state_dict().values())
        built.update(_shapes(module, prefix))
    networks = {key: shape for key, shape in expected.items() if key not in SCHEDULE_BUFFERS}
    assert sorted(built) == sorted(networks)
    assert built == networks


def test_release_vqgan_matches_manifest(manifest: dict[str, dict[str, list[int]]]) -> None:
    with torch.device("meta"):
        vqgan = VQGAN.from_config(RELEASE_CONFIG["VQGAN"])
    built = _shapes(vqgan)
    assert list(built) == list(manifest["vqgan_lightning_state_dict"])
    assert built == manifest["vqgan_lightning_state_dict"]


def test_release_segmentation_matches_manifest(manifest: dict[str, dict[str, list[int]]]) -> None:
    expected = manifest["segmentation_lightning_state_dict"]
    assert {key for key in expected if not key.startswith("model.")} == {"mean", "std"}
    with torch.device("meta"):
        net = SegmentationUNet.from_state_dict_shapes(
            {key: tuple(shape) for key, shape in expected.items()}, RELEASE_CONFIG["segmentation"]
        )
    assert net.architecture.encoder_name == "resnet34"
    assert net.architecture.depth == 5
    assert _shapes(net, "model.") == {k: v for k, v in expected.items() if k.startswith("model.")}


def test_segmentation_spec_that_disagrees_with_the_weights_is_refused(
    manifest: dict[str, dict[str, list[int]]],
) -> None:
    shapes = {key: tuple(shape) for key, shape in manifest["segmentation_lightning_state_dict"].items()}
    spec = {**RELEASE_CONFIG["segmentation"], "encoder_name": "resnet18", "encoder_depth": 4}
    with torch.device("meta"), pytest.raises(WeightsError, match="encoder_depth 4"):
        SegmentationUNet.from_state_dict_shapes(shapes, spec)


def test_unet_config_asking_for_a_spatial_transformer_is_refused() -> None:
    params = {**RELEASE_CONFIG["UNetParams"], "use_spatial_transformer": True}
    with pytest.raises(ConfigError, match="use_spatial_transformer"):
        UNet.from_config(params)


# ---------------------------------------------------------------- tiny model, golden vectors


@pytest.fixture(scope="module")
def tiny(reference_dir: Path) -> Path:
    return reference_dir / "cpdm-tiny"


@pytest.fixture(scope="module")
def vectors(tiny: Path) -> dict[str, torch.Tensor]:
    with np.load(tiny / "vectors.npz") as npz:
        missing = VECTOR_KEYS - set(npz.files)
        assert not missing, f"vectors.npz lacks {sorted(missing)}"
        return {key: torch.from_numpy(npz[key].copy()) for key in npz.files}


@pytest.fixture(scope="module")
def config(tiny: Path) -> dict[str, Any]:
    return yaml.load((tiny / "config.yaml").read_text(), Loader=_TupleLoader)["model"]


@pytest.fixture(scope="module")
def cpdm_state(tiny: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(tiny / "cpdm.pth", weights_only=True, map_location="cpu")
    state = dict(checkpoint["model"])
    state.update(checkpoint["ema"])  # inference runs on the EMA shadow
    return state


@pytest.fixture(scope="module")
def unet(config: dict[str, Any], cpdm_state: dict[str, torch.Tensor]) -> UNet:
    net = UNet.from_config(config["BB"]["params"]["UNetParams"]).eval()
    net.load_state_dict(_sub(cpdm_state, "denoise_fn."), strict=True)
    return net


@pytest.fixture(scope="module")
def vqgan(config: dict[str, Any], tiny: Path) -> VQGAN:
    net = VQGAN.from_config(config["VQGAN"]["params"]).eval()
    state = torch.load(tiny / "vqgan.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    net.load_state_dict(state, strict=True)
    return net


@pytest.fixture(scope="module")
def segmenter(tiny: Path) -> SegmentationUNet:
    state = torch.load(tiny / "segmentation.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    spec = json.loads((tiny / "segmentation.json").read_text())
    net = SegmentationUNet.from_state_dict_shapes({k: tuple(v.shape) for k, v in state.items()}, spec)
    net.load_state_dict(_sub(state, "model."), strict=True)
    return net.eval()


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_segmentation_logits_and_attention_map(segmenter: SegmentationUNet, vectors: dict) -> None:
    logits = segmenter(vectors["ct01"])
    _close(logits, vectors["seg_logits"])
    attention = (torch.sigmoid(logits) >= 0.5).float()
    assert torch.equal(attention, vectors["attention_map"])


def test_segmentation_never_runs_stages_past_its_depth(segmenter: SegmentationUNet, vectors: dict) -> None:
    assert segmenter.architecture.depth == 3
    ran: list[str] = []
    hooks = [
        getattr(segmenter.encoder, name).register_forward_hook(lambda *_, n=name: ran.append(n))
        for name in ("layer2", "layer3", "layer4")
    ]
    try:
        with torch.no_grad():
            segmenter(vectors["ct01"])
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == ["layer2"]


@torch.no_grad()
def test_vqgan_encode_quantize_decode(vqgan: VQGAN, vectors: dict) -> None:
    _close(vqgan.encode(vectors["ct01"]), vectors["vqgan_encode_ct"])
    _close(vqgan.encode(vectors["pet_m11"]), vectors["vqgan_encode_pet"])
    quantized, indices = vqgan.quantize(vectors["vqgan_encode_pet"])
    _close(quantized, vectors["vqgan_quantized_pet"])
    assert torch.equal(indices, vectors["vqgan_code_indices_pet"].long())
    _close(vqgan.decode(vectors["vqgan_encode_pet"]), vectors["vqgan_decode_pet"])
    _close(vqgan.decode_quantized(quantized), vectors["vqgan_decode_pet"])


def test_vqgan_copy_inside_cpdm_file_equals_vqgan_file(
    vqgan: VQGAN, cpdm_state: dict[str, torch.Tensor]
) -> None:
    inner = _sub(cpdm_state, "vqgan.")
    assert inner.keys() == vqgan.state_dict().keys()
    assert all(torch.equal(inner[key], value) for key, value in vqgan.state_dict().items())


@torch.no_grad()
def test_conditioners(config: dict[str, Any], cpdm_state: dict[str, torch.Tensor], vectors: dict) -> None:
    for prefix, source, target in (
        ("cond_stage_model.", "attention_map", "context_attention"),
        ("cond_stage_model_1.", "attenuation_map", "context_attenuation"),
    ):
        rescaler = SpatialRescaler(**config["CondStageParams"])
        rescaler.load_state_dict(_sub(cpdm_state, prefix), strict=True)
        _close(rescaler(vectors[source]), vectors[target])


@torch.no_grad()
def test_unet_output(unet: UNet, vectors: dict) -> None:
    x = torch.cat([vectors["unet_x_t"], vectors["context"]], dim=1)
    _close(unet(x, vectors["unet_t"]), vectors["unet_out"])


@torch.no_grad()
def test_unet_vectors_tell_the_legacy_head_split_from_the_new_one(unet: UNet, vectors: dict) -> None:
    # The release uses guided-diffusion's QKVAttentionLegacy; the other split must miss the vectors.
    other = copy.deepcopy(unet)
    blocks = [module for module in other.modules() if isinstance(module, AttentionBlock)]
    assert blocks
    for block in blocks:
        block.use_new_attention_order = True
    x = torch.cat([vectors["unet_x_t"], vectors["context"]], dim=1)
    assert (other(x, vectors["unet_t"]) - vectors["unet_out"]).abs().max() > 1e-2


@torch.no_grad()
def test_unet_without_ema_overlay_misses_the_vectors(
    config: dict[str, Any], tiny: Path, vectors: dict
) -> None:
    raw = torch.load(tiny / "cpdm.pth", weights_only=True, map_location="cpu")["model"]
    net = UNet.from_config(config["BB"]["params"]["UNetParams"]).eval()
    net.load_state_dict(_sub(raw, "denoise_fn."), strict=True)
    x = torch.cat([vectors["unet_x_t"], vectors["context"]], dim=1)
    assert (net(x, vectors["unet_t"]) - vectors["unet_out"]).abs().max() > 1e-2


# ---------------------------------------------------------------- speed options keep the numbers


@torch.no_grad()
def test_channels_last_matches_the_float32_reference(
    unet: UNet, vqgan: VQGAN, segmenter: SegmentationUNet, vectors: dict
) -> None:
    cl = torch.channels_last
    x = torch.cat([vectors["unet_x_t"], vectors["context"]], dim=1)
    # torch's stubs omit Module.to(memory_format=...), which exists at run time.
    u, v, s = (copy.deepcopy(n).to(memory_format=cl) for n in (unet, vqgan, segmenter))  # type: ignore[call-overload]
    _close(u(x.contiguous(memory_format=cl), vectors["unet_t"]), vectors["unet_out"])
    _close(v.encode(vectors["ct01"].contiguous(memory_format=cl)), vectors["vqgan_encode_ct"])
    _close(v.decode(vectors["vqgan_encode_pet"].contiguous(memory_format=cl)), vectors["vqgan_decode_pet"])
    _close(s(vectors["ct01"].contiguous(memory_format=cl)), vectors["seg_logits"])


@torch.no_grad()
def test_autocast_runs_and_stays_near_the_reference(unet: UNet, vqgan: VQGAN, vectors: dict) -> None:
    x = torch.cat([vectors["unet_x_t"], vectors["context"]], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(x, vectors["unet_t"])
        decoded = vqgan.decode(vectors["vqgan_encode_pet"])
        _, indices = vqgan.quantize(vectors["vqgan_encode_pet"])
    assert out.dtype == torch.bfloat16
    assert torch.equal(indices, vectors["vqgan_code_indices_pet"].long())
    torch.testing.assert_close(out.float(), vectors["unet_out"], atol=2e-2, rtol=0)
    torch.testing.assert_close(decoded.float(), vectors["vqgan_decode_pet"], atol=0.2, rtol=0)


def test_segmentation_without_its_unused_encoder_stages_round_trips() -> None:
    from ct2pet_node.engine.networks.segmentation import SegmentationArchitecture

    arch = SegmentationArchitecture(
        in_channels=1,
        classes=1,
        block="basic",
        layers=(2, 2, 0, 0),
        decoder_channels=(32, 16, 8),
        head_kernel=3,
    )
    torch.manual_seed(0)
    net = SegmentationUNet(arch).eval()
    state = net.state_dict()
    assert not any(key.startswith(("encoder.layer3", "encoder.layer4")) for key in state)
    rebuilt = SegmentationUNet.from_state_dict_shapes({k: tuple(v.shape) for k, v in state.items()}, None)
    rebuilt.load_state_dict(state, strict=True)
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(image), rebuilt.eval()(image))
    holes = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("encoder.layer2")}
    with pytest.raises(WeightsError, match="block counts"):
        SegmentationUNet.from_state_dict_shapes(holes, None)


def test_networks_of_the_wrong_kind_are_refused_at_construction(unet: UNet) -> None:
    other = torch.nn.Identity()
    with pytest.raises(EngineError, match="vqgan is a UNet, not a VQGAN") as caught:
        Networks(vqgan=unet, unet=unet, cond_attention=other, cond_attenuation=other, segmentation=other)  # type: ignore[arg-type]
    assert "unet is" not in str(caught.value) and "segmentation is a Identity" in str(caught.value)

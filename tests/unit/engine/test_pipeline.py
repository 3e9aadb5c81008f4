"""The pipeline reproduces every reference vector through the import path, stage by stage and end to end."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.pipeline import Pipeline
from ct2pet_node.errors import EngineError, WeightsError

ATOL = 1e-4


@pytest.fixture(scope="module")
def vectors(reference_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(reference_dir / "cpdm-tiny" / "vectors.npz"))


@pytest.fixture(scope="session")
def weights_dir(tiny_weights: Path) -> Path:
    """The tiny release as imported once per session (read-only here; damage tests copy it)."""
    return tiny_weights


@pytest.fixture(scope="module")
def pipe(weights_dir: Path) -> Pipeline:
    return load_pipeline(weights_dir, device="cpu")


def _t(vectors: dict[str, np.ndarray], name: str) -> torch.Tensor:
    return torch.from_numpy(vectors[name])


def _close(got: torch.Tensor, vectors: dict[str, np.ndarray], name: str) -> None:
    np.testing.assert_allclose(got.detach().cpu().numpy(), vectors[name], atol=ATOL, rtol=0, err_msg=name)


def _hu(vectors: dict[str, np.ndarray]) -> np.ndarray:
    return vectors["ct01"][:, 0] * np.float32(2047.0) - np.float32(1024.0)


def test_pipeline_describes_itself(pipe: Pipeline, weights_dir: Path) -> None:
    assert pipe.model_id == pipe.manifest.model_id and pipe.model_id.startswith("cpdm-release-")
    assert pipe.output_units == "relative"
    assert pipe.device == torch.device("cpu")
    assert pipe.image_size == 64


@torch.inference_mode()
def test_guide_maps_and_context(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    ct01 = _t(vectors, "ct01")
    _close(pipe.segmentation_logits(ct01), vectors, "seg_logits")
    np.testing.assert_array_equal(pipe.attention_map(ct01).numpy(), vectors["attention_map"])
    _close(pipe.attenuation_map(ct01, 140.0), vectors, "attenuation_map")
    attention, attenuation = _t(vectors, "attention_map"), _t(vectors, "attenuation_map")
    _close(pipe.nets.cond_attention(attention), vectors, "context_attention")
    _close(pipe.nets.cond_attenuation(attenuation), vectors, "context_attenuation")
    _close(pipe.context(attention, attenuation), vectors, "context")


@torch.inference_mode()
def test_first_stage(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    _close(pipe.encode(_t(vectors, "ct01")), vectors, "vqgan_encode_ct")
    _close(pipe.encode(_t(vectors, "pet_m11")), vectors, "vqgan_encode_pet")
    quantized, indices = pipe.nets.vqgan.quantize(_t(vectors, "vqgan_encode_pet"))
    _close(quantized, vectors, "vqgan_quantized_pet")
    np.testing.assert_array_equal(
        indices.reshape(2, -1).numpy(), vectors["vqgan_code_indices_pet"].astype(np.int64)
    )
    _close(pipe.decode(_t(vectors, "vqgan_encode_pet")), vectors, "vqgan_decode_pet")


@torch.inference_mode()
def test_denoiser_and_schedule(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    out = pipe.denoise(_t(vectors, "unet_x_t"), _t(vectors, "unet_t").long(), _t(vectors, "context"))
    _close(out, vectors, "unet_out")
    np.testing.assert_array_equal(pipe.schedule.timesteps(), vectors["sample_steps"].astype(np.int64))
    np.testing.assert_allclose(pipe.schedule.m_t, vectors["schedule_m_t"], atol=1e-7)
    np.testing.assert_allclose(pipe.schedule.variance_t, vectors["schedule_variance_t"], atol=1e-7)


@torch.inference_mode()
def test_sampling_end_to_end_in_latent_space(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    latent = pipe.sample_latent(_t(vectors, "vqgan_encode_ct"), _t(vectors, "context"), eta=0.0)
    _close(latent, vectors, "sample_latent")
    _close(pipe.decode(latent), vectors, "sample_pet_m11")


def test_hu_in_pet_out_matches_the_reference(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    ticks: list[tuple[int, int]] = []
    out = pipe(_hu(vectors), eta=0.0, progress=lambda done, total: ticks.append((done, total)))
    expected = (np.clip(vectors["sample_pet_m11"][:, 0], -1.0, 1.0) + 1.0) / 2.0  # linear, scale 1
    assert out.shape == (2, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    assert ticks[-1] == (10, 10)  # 2 slices x 5 sampling steps
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_noise_depends_on_seed_and_slice_not_on_batch_size(
    pipe: Pipeline, vectors: dict[str, np.ndarray]
) -> None:
    hu = _hu(vectors)
    pipe.batch_size = 2
    together = pipe(hu, eta=1.0, seed=7, steps=3)
    again = pipe(hu, eta=1.0, seed=7, steps=3)
    pipe.batch_size = 1
    one_by_one = pipe(hu, eta=1.0, seed=7, steps=3)
    other_seed = pipe(hu, eta=1.0, seed=8, steps=3)
    pipe.batch_size = 4
    np.testing.assert_array_equal(together, again)
    np.testing.assert_allclose(one_by_one, together, atol=1e-5, rtol=0)
    assert np.abs(other_seed - together).max() > 1e-3


def test_a_volume_translated_in_chunks_equals_one_translation(
    pipe: Pipeline, vectors: dict[str, np.ndarray]
) -> None:
    hu = np.concatenate([_hu(vectors)] * 2)  # four slices
    whole = pipe(hu, eta=1.0, steps=4, seed=3)
    first = pipe(hu[:1], eta=1.0, steps=4, seed=3)
    rest = pipe(hu[1:], eta=1.0, steps=4, seed=3, first_slice_index=1)
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, atol=1e-5)
    unshifted = pipe(hu[1:], eta=1.0, steps=4, seed=3)
    assert np.abs(unshifted - whole[1:]).max() > 1e-3


def test_other_sizes_are_resized_in_and_out(pipe: Pipeline, vectors: dict[str, np.ndarray]) -> None:
    hu = np.repeat(np.repeat(_hu(vectors)[:1], 2, axis=1), 2, axis=2)[:, :100, :90]
    out = pipe(hu, eta=0.0, steps=3)
    assert out.shape == (1, 100, 90)
    assert np.isfinite(out).all() and out.std() > 0


def test_kvp_from_ct_policy_reaches_the_attenuation_map(
    pipe: Pipeline, vectors: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    for policy, ct_kvp, expected in (
        ({"mode": "fixed", "kvp": 140.0}, 120.0, 140.0),
        ({"mode": "from_ct", "kvp": 140.0}, 100.0, 100.0),
    ):
        normalisation = {**pipe.manifest.normalisation, "attenuation_kvp": policy}
        manifest = dataclasses.replace(pipe.manifest, normalisation=normalisation)
        other = Pipeline(manifest, pipe.nets, pipe.device)
        original = other.attenuation_map
        monkeypatch.setattr(
            other, "attenuation_map", lambda ct, kvp, f=original: seen.append(kvp) or f(ct, kvp)
        )
        other(_hu(vectors)[:1], kvp=ct_kvp, eta=0.0, steps=3)
        assert seen[-1] == expected


def test_non_finite_output_is_an_engine_error(
    pipe: Pipeline, vectors: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe, "decode", lambda z: torch.full((z.shape[0], 1, 64, 64), float("nan")))
    with pytest.raises(EngineError, match="non-finite"):
        pipe(_hu(vectors), eta=0.0, steps=3)


def test_bad_inputs_devices_and_precisions(pipe: Pipeline, weights_dir: Path) -> None:
    with pytest.raises(EngineError, match=r"\(64, 64\)"):
        pipe(np.zeros((64, 64), dtype=np.float32))
    with pytest.raises(EngineError, match="only offered on CUDA"):
        Pipeline(pipe.manifest, pipe.nets, torch.device("cpu"), precision="float16")
    with pytest.raises(EngineError, match=r"not supported|not a device"):
        load_pipeline(weights_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            load_pipeline(weights_dir, device="cuda")


def test_damaged_weights_are_refused_naming_the_file(weights_dir: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(weights_dir, tmp_path / "w")
    unet = damaged / "unet.safetensors"
    data = bytearray(unet.read_bytes())
    data[len(data) // 2] ^= 0x01
    unet.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"unet\.safetensors does not match its sha256"):
        load_pipeline(damaged, device="cpu")


def test_importing_the_engine_does_not_import_torch() -> None:
    code = "import sys, ct2pet_node.engine; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_translation_log_line_says_how_the_kvp_was_chosen(pipe: Pipeline) -> None:
    from structlog.testing import capture_logs

    hu = np.zeros((1, 64, 64), dtype=np.float32)
    with capture_logs() as logs:
        pipe.translate_region(hu, kvp=100.0, steps=3, seed=0)
    (started,) = [e for e in logs if e["event"] == "translation_started"]
    # The release's policy: 140 kVp whatever the tag says.
    assert (started["kvp"], started["ct_header_kvp"]) == (140.0, 100.0)
    assert started["kvp_rule"] == "model fixes kVp at 140, CT header said 100"

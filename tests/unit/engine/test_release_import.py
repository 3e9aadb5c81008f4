"""Importing a release whose segmenter and schedule are not the tiny reference's.

The segmentation U-Net's constructor is read from the checkpoint's shapes, so
a retrained segmenter (another ResNet, depth or decoder) imports without a
spec; a spec that is given must agree. End to end, a release-format model
with the ``sin`` schedule and 7 sampling steps is imported, loaded, and its
sampling checked against the release's loop written out here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.networks import RELEASE_CONFIG, SegmentationArchitecture, SegmentationUNet
from ct2pet_node.engine.release import import_release_files
from ct2pet_node.engine.weights import load_manifest, load_state_dicts
from ct2pet_node.errors import WeightsError

RESNET18_DEPTH4 = {
    "arch": "Unet",
    "in_channels": 1,
    "classes": 1,
    "encoder_name": "resnet18",
    "encoder_depth": 4,
    "decoder_channels": [48, 24, 16, 8],
}


@pytest.fixture(scope="module")
def tiny(reference_dir: Path) -> Path:
    return reference_dir / "cpdm-tiny"


def _segmentation_checkpoint(
    path: Path, layers: tuple[int, int, int, int], decoder: tuple[int, ...], seed: int
) -> Path:
    """A seeded U-Net saved as the release saves its segmenter: Lightning ``model.`` keys plus mean/std."""
    torch.manual_seed(seed)
    arch = SegmentationArchitecture(
        in_channels=1, classes=1, block="basic", layers=layers, decoder_channels=decoder, head_kernel=3
    )
    net = SegmentationUNet(arch)
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    state = {"model." + key: value for key, value in net.state_dict().items()}
    state["mean"] = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    state["std"] = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    torch.save({"state_dict": state, "epoch": 1}, path)
    return path


def _import(tiny: Path, segmentation: Path, out_dir: Path, spec: Path | None = None, **files: Path) -> Path:
    import_release_files(
        files.get("config", tiny / "config.yaml"),
        files.get("cpdm", tiny / "cpdm.pth"),
        tiny / "vqgan.ckpt",
        segmentation,
        spec,
        out_dir=out_dir,
    )
    return out_dir


# ------------------------------------------------------------------ the segmenter's constructor


@pytest.mark.parametrize(
    "layers",
    [(2, 2, 2, 2), (2, 2, 2, 0)],
    ids=["release-layout-stage-past-depth-kept", "stage-past-depth-left-out"],
)
def test_segmenter_of_another_shape_imports_without_a_spec(
    tiny: Path, tmp_path: Path, layers: tuple[int, int, int, int]
) -> None:
    checkpoint = _segmentation_checkpoint(tmp_path / "seg.ckpt", layers, (48, 24, 16, 8), seed=1)
    out = _import(tiny, checkpoint, tmp_path / "w")
    manifest = load_manifest(out)
    assert manifest.architecture["segmentation"] == RESNET18_DEPTH4
    assert "segmentation_spec" not in manifest.sources
    stored = load_state_dicts(out)["segmentation"]
    assert ("encoder.layer4.1.conv2.weight" in stored) == (layers[3] > 0)
    assert "mean" not in stored


def test_segmenter_matching_no_smp_name_is_recorded_by_its_counts(tiny: Path, tmp_path: Path) -> None:
    checkpoint = _segmentation_checkpoint(tmp_path / "seg.ckpt", (1, 2, 1, 1), (16, 8), seed=2)
    out = _import(tiny, checkpoint, tmp_path / "w")
    spec = load_manifest(out).architecture["segmentation"]
    assert spec["encoder_name"] == "resnet-basic-1-2-1-1"
    assert (spec["encoder_depth"], spec["decoder_channels"]) == (2, [16, 8])


def test_spec_that_disagrees_with_the_checkpoint_is_refused_naming_the_differences(
    tiny: Path, tmp_path: Path
) -> None:
    checkpoint = _segmentation_checkpoint(tmp_path / "seg.ckpt", (2, 2, 2, 2), (48, 24, 16, 8), seed=1)
    spec = tmp_path / "segmentation.json"
    spec.write_text(json.dumps({"segmentation": dict(RELEASE_CONFIG["segmentation"])}))  # resnet34, depth 5
    with pytest.raises(WeightsError) as caught:
        _import(tiny, checkpoint, tmp_path / "w", spec)
    message = str(caught.value)
    assert str(spec) in message and str(checkpoint) in message
    assert "encoder_depth 5 but the weights have depth 4" in message
    assert "decoder_channels [256, 128, 64, 32, 16] but the weights have (48, 24, 16, 8)" in message
    assert "encoder_name 'resnet34'" in message and "the weights are resnet18" in message
    assert not (tmp_path / "w").exists()

    spec.write_text(json.dumps({**RESNET18_DEPTH4, "decoder_channels": [48, 24, 16, 16]}))
    with pytest.raises(WeightsError, match=r"decoder_channels \[48, 24, 16, 16\]") as caught:
        _import(tiny, checkpoint, tmp_path / "w", spec)
    assert "encoder_depth" not in str(caught.value) and "encoder_name" not in str(caught.value)


def test_spec_that_agrees_is_accepted_and_named_in_the_sources(tiny: Path, tmp_path: Path) -> None:
    checkpoint = _segmentation_checkpoint(tmp_path / "seg.ckpt", (2, 2, 2, 0), (48, 24, 16, 8), seed=1)
    spec = tmp_path / "segmentation.json"
    spec.write_text(json.dumps({"segmentation": {"encoder_name": "resnet18", "encoder_depth": 4}}))
    manifest = load_manifest(_import(tiny, checkpoint, tmp_path / "w", spec))
    assert manifest.architecture["segmentation"] == RESNET18_DEPTH4  # completed from the shapes
    assert manifest.sources["segmentation_spec"]["name"] == "segmentation.json"


# ------------------------------------------------------------------ end to end: sin, 7 steps

T = 1000
STEPS = 7


def _release_schedule(num_timesteps: int, max_var: float) -> dict[str, torch.Tensor]:
    """The release's ``register_schedule`` for mt_type ``sin``, its six float32 buffers."""
    m_t = 1.0075 ** np.linspace(0, num_timesteps, num_timesteps)
    m_t = m_t / m_t[-1]
    m_t[-1] = 0.999
    m_tminus = np.append(0, m_t[:-1])
    variance_t = 2.0 * (m_t - m_t**2) * max_var
    variance_tminus = np.append(0.0, variance_t[:-1])
    variance_t_tminus = variance_t - variance_tminus * ((1.0 - m_t) / (1.0 - m_tminus)) ** 2
    posterior_variance_t = variance_t_tminus * variance_tminus / variance_t
    return {
        name: torch.tensor(values, dtype=torch.float32)
        for name, values in (
            ("m_t", m_t),
            ("m_tminus", m_tminus),
            ("variance_t", variance_t),
            ("variance_tminus", variance_tminus),
            ("variance_t_tminus", variance_t_tminus),
            ("posterior_variance_t", posterior_variance_t),
        )
    }


def _release_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    context: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    sample_step: int,
    eta: float,
) -> torch.Tensor:
    """The release's skip steps and ``p_sample_loop``/``p_sample`` (objective grad, no clipping)."""
    midsteps = torch.arange(T - 1, 1, step=-((T - 1) / (sample_step - 2))).long()
    steps = torch.cat((midsteps, torch.Tensor([1, 0]).long()), dim=0)

    def extract(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return table.gather(-1, t).reshape(t.shape[0], 1, 1, 1)

    img = y
    for i in range(len(steps)):
        t = torch.full((y.shape[0],), int(steps[i]), dtype=torch.long)
        x0_recon = img - denoise(img, t, context)
        if steps[i] == 0:
            return x0_recon
        n_t = torch.full((y.shape[0],), int(steps[i + 1]), dtype=torch.long)
        m_t, m_nt = extract(buffers["m_t"], t), extract(buffers["m_t"], n_t)
        var_t, var_nt = extract(buffers["variance_t"], t), extract(buffers["variance_t"], n_t)
        sigma2_t = (var_t - var_nt * (1.0 - m_t) ** 2 / (1.0 - m_nt) ** 2) * var_nt / var_t
        sigma_t = torch.sqrt(sigma2_t) * eta
        noise = torch.randn_like(img)
        mean = (1.0 - m_nt) * x0_recon + m_nt * y
        mean = mean + torch.sqrt((var_nt - sigma2_t) / var_t) * (img - (1.0 - m_t) * x0_recon - m_t * y)
        img = mean + sigma_t * noise
    raise AssertionError("the release's steps always end at 0")


@pytest.fixture(scope="module")
def sin_release(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny release rewritten to mt_type sin, 7 steps, with a segmenter of no smp name, imported."""
    folder = tmp_path_factory.mktemp("sin-release")
    config = (tiny / "config.yaml").read_text()
    assert "mt_type: linear" in config and "sample_step: 5" in config
    (folder / "config.yaml").write_text(
        config.replace("mt_type: linear", "mt_type: sin").replace("sample_step: 5", f"sample_step: {STEPS}")
    )
    cpdm = torch.load(tiny / "cpdm.pth", weights_only=True)
    cpdm["model"].update(_release_schedule(T, max_var=1.0))
    torch.save(cpdm, folder / "cpdm.pth")
    segmentation = _segmentation_checkpoint(folder / "seg.ckpt", (1, 1, 1, 1), (40, 20, 12, 8), seed=3)
    files = {"config": folder / "config.yaml", "cpdm": folder / "cpdm.pth"}
    return _import(tiny, segmentation, folder / "weights", **files)


def test_sin_release_with_another_segmenter_samples_as_the_release_does(sin_release: Path) -> None:
    manifest = load_manifest(sin_release)
    assert manifest.architecture["bridge"]["mt_type"] == "sin"
    assert manifest.architecture["bridge"]["sample_step"] == STEPS
    assert manifest.architecture["segmentation"]["encoder_name"] == "resnet-basic-1-1-1-1"
    assert manifest.architecture["segmentation"]["decoder_channels"] == [40, 20, 12, 8]

    pipeline = load_pipeline(sin_release, device="cpu")
    evaluated: list[tuple[int, int]] = []  # (batch size, timestep) of each UNet call
    pipeline.nets.unet.register_forward_hook(
        lambda module, args, out: evaluated.append((args[0].shape[0], int(args[1][0])))
    )
    reports: list[tuple[int, int]] = []
    rng = np.random.default_rng(7)
    hu = rng.uniform(-1000.0, 1500.0, size=(3, 64, 64)).astype(np.float32)
    hu[:, 20:44, 20:44] = 60.0  # a soft-tissue block, so the attention map is not noise alone
    out = pipeline(hu, eta=0.0, seed=5, progress=lambda done, total: reports.append((done, total)))

    slices = hu.shape[0]
    assert reports[-1] == (STEPS * slices, STEPS * slices)
    assert sum(batch for batch, _ in evaluated) == STEPS * slices
    assert sorted({t for _, t in evaluated}, reverse=True) == [999, 799, 599, 399, 199, 1, 0]

    evaluated.clear()
    buffers = _release_schedule(T, max_var=1.0)
    with torch.inference_mode():
        ct01 = torch.from_numpy(manifest.ct_scaling.to_ct01(hu))[:, None]
        attenuation = pipeline.attenuation_map(ct01, pipeline.kvp_policy.resolve(None))
        context = pipeline.context(pipeline.attention_map(ct01), attenuation)
        y = pipeline.encode(ct01)
        expected_latent = _release_sample(pipeline.denoise, y, context, buffers, STEPS, eta=0.0)
        ours = pipeline.sample_latent(y, context, None, 0.0)
        expected_pet = pipeline.decode(expected_latent)[:, 0].numpy()
    assert [t for _, t in evaluated] == [999, 799, 599, 399, 199, 1, 0] * 2
    assert float(torch.abs(ours - expected_latent).max()) <= 1e-4
    expected = manifest.pet_scaling.to_output(expected_pet)
    assert out.shape == hu.shape
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-4)

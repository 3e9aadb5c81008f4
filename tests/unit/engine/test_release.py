"""Reading the authors' release files safely: YAML tags, weights-only checkpoints, EMA, prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ct2pet_node.engine import release, release_files
from ct2pet_node.errors import WeightsError


class Payload:
    """A class torch's weights-only unpickler does not know: loading it would mean running code."""


@pytest.fixture(scope="module")
def tiny(reference_dir: Path) -> Path:
    return reference_dir / "cpdm-tiny"


def test_config_tuples_become_lists(tiny: Path) -> None:
    config = release_files.read_release_config(tiny / "config.yaml")
    assert config["model"]["BB"]["params"]["UNetParams"]["channel_mult"] == [1, 2]
    assert config["model"]["VQGAN"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 4]


@pytest.mark.parametrize(
    "tag",
    ["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!python/object:x.Y {}"],
)
def test_config_refuses_other_python_tags(tmp_path: Path, tag: str) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f"model:\n  x: {tag}\n")
    with pytest.raises(WeightsError) as caught:
        release_files.read_release_config(path)
    assert str(path) in str(caught.value)
    assert "tag:yaml.org,2002:python/" in str(caught.value)


def test_config_that_is_not_yaml_or_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(WeightsError, match="not valid YAML"):
        release_files.read_release_config(bad)
    with pytest.raises(WeightsError, match="cannot read"):
        release_files.read_release_config(tmp_path / "absent.yaml")


def test_architecture_from_the_tiny_config(tiny: Path) -> None:
    arch = release.architecture_from_config(release_files.read_release_config(tiny / "config.yaml"), tiny)
    assert arch["image_size"] == 64
    assert arch["bridge"] == {
        "num_timesteps": 1000,
        "mt_type": "linear",
        "max_var": 1.0,
        "eta": 0.0,
        "objective": "grad",
        "skip_sample": True,
        "sample_type": "linear",
        "sample_step": 5,
        "clip_denoised": False,
    }
    assert "ckpt_path" not in arch["vqgan"] and arch["vqgan"]["n_embed"] == 64
    assert arch["cond_stage"] == {"in_channels": 1, "n_stages": 2, "out_channels": 3}


def test_cpdm_loads_with_the_ema_shadow_over_the_raw_model(tiny: Path) -> None:
    checkpoint = release_files.load_checkpoint(tiny / "cpdm.pth")
    state = release_files.model_state_dict(checkpoint, tiny / "cpdm.pth")
    key = "denoise_fn.input_blocks.0.0.weight"
    assert torch.equal(state[key], checkpoint["ema"][key])
    assert not torch.equal(state[key], checkpoint["model"][key])  # the raw copy is perturbed on purpose
    networks, buffers = release.split_cpdm(state, tiny / "cpdm.pth")
    assert set(networks) == {"unet", "vqgan", "cond_attention", "cond_attenuation"}
    assert list(networks["cond_attention"]) == ["channel_mapper.weight"]
    assert list(networks["cond_attenuation"]) == ["channel_mapper.weight"]
    assert "input_blocks.0.0.weight" in networks["unet"]
    assert set(buffers) == set(release.SCHEDULE_BUFFERS)


def test_vqgan_and_segmentation_lose_their_prefixes(tiny: Path) -> None:
    vq_state = release_files.model_state_dict(
        release_files.load_checkpoint(tiny / "vqgan.ckpt"), tiny / "vqgan.ckpt"
    )
    vq_state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    vqgan = release.vqgan_from_lightning(vq_state, tiny / "vqgan.ckpt")
    assert "quantize.embedding.weight" in vqgan and not any(k.startswith("loss.") for k in vqgan)
    seg_path = tiny / "segmentation.ckpt"
    seg = release.segmentation_from_lightning(
        release_files.model_state_dict(release_files.load_checkpoint(seg_path), seg_path), seg_path
    )
    assert "encoder.conv1.weight" in seg and "mean" not in seg and "std" not in seg


def test_unknown_cpdm_keys_are_refused() -> None:
    with pytest.raises(WeightsError, match="no network owns"):
        release.split_cpdm({"denoise_fn.a": torch.zeros(1), "surprise": torch.zeros(1)}, Path("x.pth"))


def test_ema_that_does_not_fit_is_refused() -> None:
    checkpoint = {"model": {"denoise_fn.a": torch.zeros(2)}, "ema": {"denoise_fn.a": torch.zeros(3)}}
    with pytest.raises(WeightsError, match="wrong shape"):
        release_files.model_state_dict(checkpoint, Path("c.pth"))


def test_missing_truncated_and_non_checkpoint_files(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(WeightsError, match=r"absent\.pth does not exist"):
        release_files.load_checkpoint(tmp_path / "absent.pth")
    truncated = tmp_path / "cpdm.pth"
    truncated.write_bytes((tiny / "cpdm.pth").read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated") as caught:
        release_files.load_checkpoint(truncated)
    assert str(truncated) in str(caught.value)
    with pytest.raises(WeightsError, match="neither 'model' nor 'state_dict'"):
        release_files.model_state_dict({"epoch": 3}, tmp_path / "odd.pth")


def test_checkpoint_with_arbitrary_objects_is_refused_unexecuted(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(WeightsError, match="objects other than tensors") as caught:
        release_files.load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_config_that_disagrees_with_the_weights_is_refused(tmp_path: Path, tiny: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((tiny / "config.yaml").read_text().replace("mt_type: linear", "mt_type: sin"))
    with pytest.raises(WeightsError, match="disagrees with the config"):
        release.import_release_files(
            config,
            tiny / "cpdm.pth",
            tiny / "vqgan.ckpt",
            tiny / "segmentation.ckpt",
            tiny / "segmentation.json",
            out_dir=tmp_path / "w",
        )
    assert not (tmp_path / "w").exists()

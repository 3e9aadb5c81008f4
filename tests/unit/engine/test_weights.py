"""Our weights format: import, manifest, checksums, damage detection, discovery, scaling."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ct2pet_node.engine.manifest import RELEASE_CALIBRATION, CtScaling, PetScaling, release_normalisation
from ct2pet_node.engine.networks import RELEASE_CONFIG
from ct2pet_node.engine.release import import_release_files as import_release
from ct2pet_node.engine.weights import (
    find_weights,
    load_manifest,
    load_state_dicts,
    save_weights,
    verify_weights,
)
from ct2pet_node.errors import WeightsError


@pytest.fixture(scope="session")
def imported(tiny_weights: Path) -> Path:
    """The tiny release as imported once per session (read-only here; damage tests copy it)."""
    return tiny_weights


def _small(out: Path, **overrides: object) -> Path:
    arguments: dict[str, object] = {
        "architecture": {"image_size": 8},
        "state_dicts": {"unet": {"w": torch.arange(6.0).reshape(2, 3)}},
        "normalisation": release_normalisation(),
        "output_units": "SUVbw",
        "calibration": "test",
        "model_id_prefix": "test",
    }
    arguments.update(overrides)
    save_weights(out, **arguments)  # type: ignore[arg-type]
    return out


def test_import_writes_a_complete_manifest(imported: Path, reference_dir: Path) -> None:
    manifest = load_manifest(imported)
    assert (
        manifest.model_id.startswith("cpdm-release-") and len(manifest.model_id) == len("cpdm-release-") + 8
    )
    assert manifest.output_units == "relative"
    assert manifest.calibration == RELEASE_CALIBRATION
    assert manifest.networks == ("cond_attention", "cond_attenuation", "segmentation", "unet", "vqgan")
    assert manifest.normalisation["attenuation_kvp"] == {"mode": "fixed", "kvp": 140.0}
    assert manifest.architecture["segmentation"]["encoder_name"] == "resnet18"
    assert manifest.architecture["bridge"]["sample_step"] == 5
    cpdm_sha = hashlib.sha256((reference_dir / "cpdm-tiny" / "cpdm.pth").read_bytes()).hexdigest()
    assert manifest.sources["cpdm"] == {"name": "cpdm.pth", "sha256": cpdm_sha}
    assert manifest.created_by.startswith("ct2pet-node")
    assert verify_weights(imported) == []


def test_imported_weights_carry_the_ema_and_contiguous_unused_stages(
    imported: Path, reference_dir: Path
) -> None:
    states = load_state_dicts(imported)
    ema = torch.load(reference_dir / "cpdm-tiny" / "cpdm.pth", weights_only=True)["ema"]
    key = "input_blocks.0.0.weight"
    assert torch.equal(states["unet"][key], ema["denoise_fn." + key])
    seg = torch.load(reference_dir / "cpdm-tiny" / "segmentation.ckpt", weights_only=True)["state_dict"]
    unused = "encoder.layer3.0.conv1.weight"
    assert torch.equal(states["segmentation"][unused], seg["model." + unused])


def test_truncated_file_is_named(imported: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(imported, tmp_path / "w")
    unet = damaged / "unet.safetensors"
    unet.write_bytes(unet.read_bytes()[:1000])
    problems = verify_weights(damaged)
    assert len(problems) == 1 and str(unet) in problems[0] and "truncated" in problems[0]
    with pytest.raises(WeightsError, match=r"unet\.safetensors is truncated"):
        load_state_dicts(damaged)


def test_tampered_file_is_named(imported: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(imported, tmp_path / "w")
    vqgan = damaged / "vqgan.safetensors"
    data = bytearray(vqgan.read_bytes())
    data[-5] ^= 0xFF
    vqgan.write_bytes(bytes(data))
    problems = verify_weights(damaged)
    assert problems == [f"{vqgan} does not match its sha256 in the manifest (tampered or corrupted)"]
    with pytest.raises(WeightsError, match=r"vqgan\.safetensors does not match its sha256"):
        load_state_dicts(damaged)


def test_missing_file_and_unreadable_manifest(tmp_path: Path) -> None:
    out = _small(tmp_path / "w")
    (out / "unet.safetensors").unlink()
    assert verify_weights(out) == [f"{out / 'unet.safetensors'} is missing"]
    (out / "manifest.json").write_text("{not json")
    problems = verify_weights(out)
    assert len(problems) == 1 and "manifest.json is unreadable" in problems[0]
    assert "does not exist" in verify_weights(tmp_path / "nowhere")[0]


def test_save_round_trip_copies_views_to_contiguous_memory(tmp_path: Path) -> None:
    view = torch.ones(3).expand(4, 3)  # zero stride, as the tiny segmentation file stores unused stages
    out = _small(tmp_path / "w", state_dicts={"unet": {"w": view, "t": view.t()}})
    states = load_state_dicts(out)
    assert torch.equal(states["unet"]["w"], torch.ones(4, 3)) and states["unet"]["w"].is_contiguous()
    assert torch.equal(states["unet"]["t"], torch.ones(3, 4))


def test_model_id_follows_tensors_and_normalisation_not_time(tmp_path: Path) -> None:
    first = load_manifest(_small(tmp_path / "a")).model_id
    assert load_manifest(_small(tmp_path / "b")).model_id == first
    other = _small(
        tmp_path / "c", normalisation={**release_normalisation(), "pet": {"kind": "log1p", "scale": 20}}
    )
    assert load_manifest(other).model_id != first
    changed = _small(tmp_path / "d", state_dicts={"unet": {"w": torch.zeros(2, 3)}})
    assert load_manifest(changed).model_id != first


def test_existing_directory_is_not_overwritten_by_default(tmp_path: Path) -> None:
    out = _small(tmp_path / "w")
    with pytest.raises(WeightsError, match="already exists"):
        _small(out)
    _small(out, overwrite=True, output_units="relative")
    assert load_manifest(out).output_units == "relative"
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no staging folder left behind


def test_find_weights_lists_good_and_broken_directories(tmp_path: Path) -> None:
    good = _small(tmp_path / "good")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format_version": 1}))
    (tmp_path / "unrelated").mkdir()
    found = dict(find_weights([tmp_path, tmp_path / "missing"]))
    assert set(found) == {good, broken}
    assert load_manifest(good) == found[good]
    assert isinstance(found[broken], str) and "not a ct2pet-node weights manifest" in found[broken]
    assert [p for p, _ in find_weights([good])] == [good]


def test_pet_scaling_linear_and_log1p() -> None:
    linear = PetScaling("linear", 10.0)
    np.testing.assert_allclose(linear.to_output(np.array([-1.0, 0.0, 1.0, 3.0])), [0.0, 5.0, 10.0, 10.0])
    log1p = PetScaling("log1p", 30.0)
    values = np.array([0.0, 0.5, 4.0, 30.0])
    np.testing.assert_allclose(log1p.to_output(log1p.to_m11(values)), values, rtol=1e-5, atol=1e-6)
    assert log1p.to_m11(np.array([0.0]))[0] == -1.0
    with pytest.raises(WeightsError, match="'sqrt'"):
        PetScaling("sqrt")  # type: ignore[arg-type]


def test_ct_scaling_clips_to_the_stored_range() -> None:
    np.testing.assert_allclose(
        CtScaling().to_ct01(np.array([-3000.0, -1024.0, 0.0, 1023.0, 5000.0])),
        [0.0, 0.0, 1024 / 2047, 1.0, 1.0],
        rtol=1e-6,
    )


def test_import_without_the_vqgan_file_uses_the_copy_inside_cpdm(
    imported: Path, reference_dir: Path, tmp_path: Path
) -> None:
    tiny = reference_dir / "cpdm-tiny"
    manifest = import_release(
        tiny / "config.yaml",
        tiny / "cpdm.pth",
        None,
        tiny / "segmentation.ckpt",
        {"segmentation": json.loads((tiny / "segmentation.json").read_text())["segmentation"]},
        out_dir=tmp_path / "w",
    )
    assert manifest.model_id == load_manifest(imported).model_id
    assert "vqgan" not in manifest.sources


def test_import_with_the_wrong_segmentation_spec_is_refused(reference_dir: Path, tmp_path: Path) -> None:
    tiny = reference_dir / "cpdm-tiny"
    with pytest.raises(WeightsError, match="encoder_depth 5 but the weights have depth 3"):
        import_release(
            tiny / "config.yaml",
            tiny / "cpdm.pth",
            tiny / "vqgan.ckpt",
            tiny / "segmentation.ckpt",
            RELEASE_CONFIG["segmentation"],  # the full-size release's resnet34 does not fit the tiny resnet18
            out_dir=tmp_path / "w",
        )
    assert not (tmp_path / "w").exists()


def test_import_without_a_segmentation_spec_reads_it_from_the_weights(
    imported: Path, reference_dir: Path, tmp_path: Path
) -> None:
    tiny = reference_dir / "cpdm-tiny"
    manifest = import_release(
        tiny / "config.yaml",
        tiny / "cpdm.pth",
        tiny / "vqgan.ckpt",
        tiny / "segmentation.ckpt",
        None,
        out_dir=tmp_path / "w",
    )
    given = json.loads((tiny / "segmentation.json").read_text())["segmentation"]
    assert manifest.architecture["segmentation"] == given
    assert manifest.model_id == load_manifest(imported).model_id


def test_an_imported_release_states_its_assumed_training_geometry(
    tmp_path: Path, reference_dir: Path
) -> None:
    tiny = reference_dir / "cpdm-tiny"
    files = (tiny / "config.yaml", tiny / "cpdm.pth", tiny / "vqgan.ckpt", tiny / "segmentation.ckpt")
    assumed = import_release(*files, out_dir=tmp_path / "assumed")
    assert assumed.frame.assumed and assumed.frame.field_of_view_mm == pytest.approx(500.0)
    assert load_manifest(tmp_path / "assumed").geometry == assumed.frame
    stated = import_release(*files, out_dir=tmp_path / "stated", field_of_view_mm=400.0)
    assert not stated.frame.assumed
    assert stated.frame.pixel_spacing_mm == pytest.approx(400.0 / stated.frame.matrix)
    assert stated.frame.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # Geometry describes the data, not the weights: the model id stays the weights'.
    assert stated.model_id == assumed.model_id
    with pytest.raises(WeightsError, match="field of view"):
        import_release(*files, out_dir=tmp_path / "bad", field_of_view_mm=float("nan"))

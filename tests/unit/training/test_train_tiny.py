"""A tiny end-to-end train-then-evaluate on a synthetic dataset, and exact resume after interruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ct2pet_node.domain.model_grid import HEAD_FIRST_SUPINE, ModelFrame
from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.weights import load_manifest
from ct2pet_node.errors import ConfigError, InputError
from ct2pet_node.training.dataset import ARRAY_NAMES, MANIFEST_NAME, DatasetStudy, SuvRecord
from ct2pet_node.training.evaluate import METRIC_NAMES, evaluate_dataset
from ct2pet_node.training.train import train

SIZE = 32
SLICES = 12
PIXEL_MM = 3.9
STUDY = "1.2.826.0.1.3680043.8.498.1"

TINY_TOML = """
seed = 3
device = "cpu"
checkpoint_every = 1
model_id_prefix = "tiny-test"
[data]
image_size = 32
pet_normalisation = "log1p"
pet_scale_suv = 10.0
hot_suv_threshold = 2.5
[data.holdout]
slices = "5:7"
margin = 1
[vqgan]
n_embed = 16
steps = 2
batch_size = 2
lr = 1e-3
dead_code_every = 1
[vqgan.ddconfig]
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
z_channels = 3
[segmentation]
encoder = "resnet18"
depth = 1
decoder_channels = [16]
steps = 2
batch_size = 2
[bridge]
steps = 3
batch_size = 2
lr = 1e-3
ema_decay = 0.5
[bridge.unet]
model_channels = 32
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [2]
num_head_channels = 32
[bridge.schedule]
num_timesteps = 50
sample_step = 4
"""
TOTAL_STEPS = 2 + 2 + 3


def _write_dataset(root: Path) -> Path:
    """A one-study dataset in the builder's on-disk format: an ellipse body with a hot spot."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = ((yy - 16) ** 2 / 100 + (xx - 16) ** 2 / 144) < 1
    hu = np.full((SLICES, SIZE, SIZE), -1000.0, np.float32)
    hu[:, body] = 40.0
    hu[:, 12:16, 12:16] = 600.0
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    suv = np.where(body, 1.0, 0.0).astype(np.float32)[None].repeat(SLICES, 0)
    suv[:, 18:21, 14:18] = 6.0
    folder = root / "studies" / STUDY
    folder.mkdir(parents=True)
    arrays = {
        "ct_hu": hu,
        "pet_suv": suv,
        "pet_fov": np.ones_like(hu, np.uint8),
        "body_mask": body[None].repeat(SLICES, 0).astype(np.uint8),
    }
    for name in ARRAY_NAMES:
        np.save(folder / f"{name}.npy", arrays[name])
    affine = (
        (PIXEL_MM, 0.0, 0.0, -60.0),
        (0.0, PIXEL_MM, 0.0, -60.0),
        (0.0, 0.0, 3.27, 0.0),
        (0.0, 0.0, 0.0, 1.0),
    )
    entry = DatasetStudy(
        study_uid="1.2.3",
        ct_series_uid=STUDY,
        pet_series_uid="1.2.4",
        frame_of_reference_uid="1.2.5",
        n_slices=SLICES,
        size=SIZE,
        grid_mapping="in the model's orientation; field of view 125 mm as the model's",
        affine=affine,
        z_positions_mm=tuple(3.27 * i for i in range(SLICES)),
        ct_sop_uids=tuple(f"1.2.6.{i}" for i in range(SLICES)),
        pet_sop_uids=(),
        ct_kvp=120.0,
        suv_factor=1.0,
        suv_inputs=SuvRecord("BQML", "START", "x", 70.0, 3e8, 6588.0, 3600.0),
        suv_max_source=6.0,
        suv_max_paired=6.0,
        pet_fov_fraction=1.0,
        files=tuple((n, f"studies/{STUDY}/{n}.npy") for n in ARRAY_NAMES),
    )
    manifest = {
        "format_version": 2,
        "size": SIZE,
        "field_of_view_mm": SIZE * PIXEL_MM,
        "pixel_spacing_mm": PIXEL_MM,
        "studies": [entry.to_json()],
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    config = root / "train.toml"
    config.write_text(TINY_TOML)
    data = _write_dataset(root / "dataset")
    weights = root / "weights"
    outcome = train(config, data, weights, progress=False)
    assert outcome.finished and outcome.steps_run == TOTAL_STEPS
    return config, data, weights


def test_trained_weights_load_through_the_pipeline_in_suv(tiny_setup: tuple[Path, Path, Path]) -> None:
    _, _, weights = tiny_setup
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["output_units"] == "SUVbw"
    assert manifest["normalisation"]["pet"] == {"kind": "log1p", "scale": 10.0}
    pipeline = load_pipeline(weights, device="cpu")
    hu = np.full((2, SIZE, SIZE), 40.0, np.float32)
    pet = pipeline(hu, seed=0)
    assert pet.shape == (2, SIZE, SIZE) and pet.dtype == np.float32
    assert pipeline.output_units == "SUVbw"
    assert np.all(pet >= 0) and np.all(pet <= 10.0)


def test_the_weights_state_the_dataset_s_geometry(tiny_setup: tuple[Path, Path, Path]) -> None:
    _, _, weights = tiny_setup
    geometry = load_manifest(weights).geometry
    # Head-first supine at the dataset's pixel size: what the node maps every CT to.
    assert geometry == ModelFrame(SIZE, PIXEL_MM, HEAD_FIRST_SUPINE, assumed=False)
    assert json.loads((weights / "manifest.json").read_text())["geometry"]["field_of_view_mm"] == (
        pytest.approx(SIZE * PIXEL_MM)
    )


def test_evaluating_on_a_dataset_of_another_field_of_view_is_refused(
    tiny_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, data, weights = tiny_setup
    other = tmp_path / "other"
    shutil.copytree(data, other)
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["field_of_view_mm"], manifest["pixel_spacing_mm"] = 500.0, 500.0 / SIZE
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"--field-of-view-mm 124\.8"):
        evaluate_dataset(weights, other, "4:8", tmp_path / "report", device="cpu", progress=False)


def test_training_never_sees_the_held_out_block(tiny_setup: tuple[Path, Path, Path]) -> None:
    _, _, weights = tiny_setup
    record = json.loads((weights / "training.json").read_text())
    used = {index for _, index in record["training_slices"]}
    assert used == set(range(SLICES)) - {4, 5, 6, 7}
    baseline = json.loads((weights / "hu_baseline.json").read_text())
    assert sum(baseline["pixel_counts"]) == len(used) * SIZE * SIZE


def test_evaluate_writes_metrics_and_panels(tiny_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, data, weights = tiny_setup
    report = evaluate_dataset(weights, data, "4:8", tmp_path, device="cpu", progress=False)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["slices"] == [4, 8] and written["output_units"] == "SUVbw"
    for who in ("model", "baseline"):
        assert set(METRIC_NAMES) <= set(written[who]["mean"])
        assert [s["slice"] for s in written[who]["per_slice"]] == [4, 5, 6, 7]
        assert written[who]["volume"]["suv_max_real"] == pytest.approx(6.0, abs=0.1)
    # The baseline knows the body is ~1 SUV: its MAE must be well under the hot spot's error scale.
    assert written["baseline"]["mean"]["mae_suv"] < 0.5
    for name in written["panels"]:
        assert (tmp_path / name).stat().st_size > 0
    assert "panels/mip_coronal.png" in written["panels"]


def test_resume_after_interruptions_matches_an_uninterrupted_run(
    tiny_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, data, reference = tiny_setup
    weights = tmp_path / "weights"
    first = train(config, data, weights, progress=False, stop_after=1)  # inside the VQGAN stage
    assert not first.finished and not (weights / "manifest.json").exists()
    second = train(config, data, weights, progress=False, stop_after=4)  # inside the bridge stage
    assert not second.finished and second.steps_run == 4
    last = train(config, data, weights, progress=False)
    assert last.finished and last.steps_run == TOTAL_STEPS - 5
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    new_manifest = json.loads((weights / "manifest.json").read_text())
    for name in ref_manifest["files"]:
        expected, got = load_file(reference / name), load_file(weights / name)
        assert expected.keys() == got.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}:{key}")
    assert new_manifest["model_id"] == ref_manifest["model_id"]


def test_resume_with_other_settings_is_refused(tiny_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    config, data, _ = tiny_setup
    weights = tmp_path / "weights"
    train(config, data, weights, progress=False, stop_after=1)
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY_TOML.replace("lr = 1e-3\ndead_code_every", "lr = 2e-3\ndead_code_every"))
    with pytest.raises(ConfigError, match="different settings"):
        train(changed, data, weights, progress=False)


def test_raising_a_stage_s_steps_continues_from_where_it_finished(
    tiny_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, data, reference = tiny_setup
    weights = tmp_path / "weights"
    shutil.copytree(reference, weights)
    longer = tmp_path / "longer.toml"
    longer.write_text(TINY_TOML.replace("[bridge]\nsteps = 3", "[bridge]\nsteps = 5"))
    outcome = train(longer, data, weights, progress=False)
    assert outcome.finished and outcome.steps_run == 2
    assert outcome.model_id != json.loads((reference / "manifest.json").read_text())["model_id"]

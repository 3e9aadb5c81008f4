"""TRAIN.toml parsing: the demo file is valid, and every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.errors import ConfigError
from ct2pet_node.training.config import load_train_config, parse_train_config

DEMO = Path(__file__).resolve().parents[3] / "config" / "train-demo.toml"


def test_the_demo_config_is_valid_and_holds_out_forty_slices_plus_margins() -> None:
    config = load_train_config(DEMO)
    holdout = config.data.holdout
    assert holdout.stop - holdout.first >= 40 and holdout.margin >= 5
    assert holdout.excluded == range(holdout.first - holdout.margin, holdout.stop + holdout.margin)
    assert config.bridge.unet["in_channels"] == 3 * config.vqgan.embed_dim
    assert config.data.pet_normalisation in ("linear", "log1p")


def test_all_problems_are_listed_together() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_train_config(
            {
                "device": "tpu",
                "data": {"image_size": 100, "pet_normalisation": "max", "holdout": {"slices": "9:3"}},
                "vqgan": {"ddconfig": {"ch": 48}, "steps": 0},
                "segmentation": {"depth": 3, "decoder_channels": [8, 4], "encoder": "resnet50"},
                "bridge": {"unet": {"model_channels": 40}, "schedule": {"objective": "x0"}},
                "typo": 1,
            }
        )
    text = str(caught.value)
    for fragment in (
        "device",
        "data.image_size",
        "data.pet_normalisation",
        "data.holdout.slices",
        "vqgan.ddconfig.ch",
        "vqgan.steps",
        "segmentation.decoder_channels",
        "segmentation.encoder",
        "bridge.unet.model_channels",
        "bridge.schedule",
        "typo",
    ):
        assert fragment in text, fragment


def test_defaults_need_no_file_content() -> None:
    config = parse_train_config({})
    assert config.data.holdout.excluded == range(0)
    assert config.data.hot_suv_threshold == 2.5


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "nope.toml")

"""The ``[retention]`` table: days per kind of file, "forever", the pass interval and the disk warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.config import RetentionConfig, load_config, parse_config
from ct2pet_node.config.load import DEFAULT_CONFIG_PATH, _read_toml
from ct2pet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_the_embedded_default_is_what_the_dataclass_says() -> None:
    retention = load_config().retention
    assert retention == RetentionConfig()
    assert (retention.spool_days, retention.results_days, retention.refused_days) == (7, 30, 7)
    assert retention.warn_free_mb > load_config().node.min_free_mb


def test_zero_forever_and_fractions_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[retention]\nspool_days = 0\nresults_days = "forever"\nrefused_days = 0.5\n'
            "interval_minutes = 5\nwarn_free_mb = 0\n",
        )
    )
    assert config.retention == RetentionConfig(
        spool_days=0, results_days=None, refused_days=0.5, interval_minutes=5, warn_free_mb=0
    )


def test_every_bad_value_is_listed_with_its_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                '[retention]\nspool_days = -1\nresults_days = "never"\nrefused_days = true\n'
                "interval_minutes = 0\nkeep = 1\n",
            )
        )
    text = str(caught.value)
    for key in ("spool_days", "results_days", "refused_days", "interval_minutes", "keep: unknown key"):
        assert f"[retention] {key}" in text
    assert '"forever"' in text


def test_a_warning_level_at_or_below_the_watermark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"warn_free_mb: 1024 is not above \[node\] min_free_mb"):
        load_config(write(tmp_path, "[node]\nmin_free_mb = 2048\n[retention]\nwarn_free_mb = 1024\n"))


def test_a_configuration_without_the_table_gets_the_defaults() -> None:
    raw = _read_toml(DEFAULT_CONFIG_PATH)
    del raw["retention"]
    assert parse_config(raw).retention == RetentionConfig()

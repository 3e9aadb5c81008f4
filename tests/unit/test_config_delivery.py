"""The ``[delivery]`` table: retry schedule and SCU timeouts, and how the node wires them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.app import scu_timeouts
from ct2pet_node.config import load_config
from ct2pet_node.errors import ConfigError
from ct2pet_node.routing.delivery import DEFAULT_SCHEDULE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_the_embedded_default_is_the_delivery_modules_schedule_and_node_timeout() -> None:
    config = load_config()
    assert config.delivery.retry_delays_seconds == DEFAULT_SCHEDULE.delays_seconds
    assert config.delivery.max_attempts == DEFAULT_SCHEDULE.max_attempts
    timeouts = scu_timeouts(config)
    network = config.node.network_timeout_seconds
    assert (timeouts.connect_seconds, timeouts.acse_seconds, timeouts.dimse_seconds) == (network,) * 3


def test_a_short_schedule_and_timeouts_are_read_and_wired(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[node]\nnetwork_timeout_seconds = 4\n"
            "[delivery]\nretry_delays_seconds = [0.5, 2]\nmax_attempts = 3\n"
            "connect_timeout_seconds = 1\nacse_timeout_seconds = 2\ndimse_timeout_seconds = 1.5\n",
        )
    )
    assert config.delivery.retry_delays_seconds == (0.5, 2.0)
    assert config.delivery.max_attempts == 3
    timeouts = scu_timeouts(config)
    assert (timeouts.connect_seconds, timeouts.acse_seconds, timeouts.dimse_seconds) == (1.0, 2.0, 1.5)
    assert timeouts.network_seconds == 4.0


def test_every_bad_delivery_key_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[delivery]\nretry_delays_seconds = [1, -2, "x"]\nmax_attempts = 0\ndimse_timeout_seconds = 0\nretries = 3\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    assert "[delivery] retry_delays_seconds: -2" in text and "[delivery] retry_delays_seconds: 'x'" in text
    assert "[delivery] max_attempts" in text and "[delivery] dimse_timeout_seconds" in text
    assert "[delivery] retries: unknown key" in text
    assert len(caught.value.problems) == 5
    with pytest.raises(ConfigError, match=r"\[delivery\] retry_delays_seconds"):
        load_config(write(tmp_path, "[delivery]\nretry_delays_seconds = []\n"))


def test_stow_batches_are_read_and_wired_with_the_http_timeouts(tmp_path: Path) -> None:
    from ct2pet_node.app import stow_limits

    default = stow_limits(load_config())
    assert (default.batch_instances, default.batch_bytes) == (50, 64 * 1024 * 1024)
    config = load_config(
        write(
            tmp_path,
            "[node]\nnetwork_timeout_seconds = 4\n"
            "[delivery]\nstow_batch_instances = 5\nstow_batch_mb = 2\nconnect_timeout_seconds = 1\n",
        )
    )
    limits = stow_limits(config)
    assert (limits.batch_instances, limits.batch_bytes) == (5, 2 * 1024 * 1024)
    assert (limits.connect_seconds, limits.answer_seconds) == (1.0, 4.0)
    with pytest.raises(ConfigError, match=r"\[delivery\] stow_batch_instances: 0 is not allowed"):
        load_config(write(tmp_path, "[delivery]\nstow_batch_instances = 0\n"))

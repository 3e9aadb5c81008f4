"""The admin endpoint's listener: loopback by default, and never beyond it without a token."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from ct2pet_node.cli import main
from ct2pet_node.config import load_config
from ct2pet_node.errors import ConfigError

pytestmark = pytest.mark.usefixtures("restore_logging")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("listen", ["0.0.0.0:18080", "[::]:18080", "192.0.2.7:11180", "admin.example:11180"])
def test_admin_beyond_loopback_without_a_token_is_refused_naming_the_fix(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f'[admin]\nlisten = "{listen}"\ntoken = ""\n'))
    (problem,) = caught.value.problems
    assert "[admin] listen:" in problem and "beyond loopback with no token" in problem
    assert "[admin] token" in problem and "TLS" in problem and "SSH tunnel" in problem


@pytest.mark.parametrize("listen", ["127.0.0.1:11180", "127.0.0.2:11180", "[::1]:11180", "localhost:11180"])
def test_admin_on_loopback_needs_no_token(tmp_path: Path, listen: str) -> None:
    assert load_config(write(tmp_path, f'[admin]\nlisten = "{listen}"\n')).admin.token == ""


def test_admin_beyond_loopback_with_a_token_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[admin]\nlisten = "0.0.0.0:18080"\ntoken = "long-random-secret"\n'))
    assert (config.admin.listen_host, config.admin.listen_port) == ("0.0.0.0", 18080)


def test_config_check_refuses_an_open_admin_endpoint_and_says_how_to_close_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[admin]\nlisten = "0.0.0.0:18080"\n')
    result = CliRunner().invoke(main, ["config", "check", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "configuration OK" not in result.output
    assert "[admin] listen: '0.0.0.0:18080' reaches beyond loopback with no token" in result.output
    assert "SSH tunnel" in result.output

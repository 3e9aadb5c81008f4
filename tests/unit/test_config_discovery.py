"""Where a command finds its configuration, and what `config check` checks before `start` would fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ct2pet_node.cli import main
from ct2pet_node.config.load import CONFIG_ENV, find_config

pytestmark = pytest.mark.usefixtures("restore_logging")


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_the_flag_then_the_environment_then_the_system_file_then_the_default(tmp_path: Path) -> None:
    system = tmp_path / "etc.toml"
    flag, env = tmp_path / "flag.toml", {CONFIG_ENV: str(tmp_path / "env.toml")}
    assert find_config(flag, env, system) == (flag, "--config")
    assert find_config(None, env, system) == (tmp_path / "env.toml", f"${CONFIG_ENV}")
    assert find_config(None, {}, system) == (None, "the embedded default")
    system.write_text("")
    assert find_config(None, {}, system) == (system, "the system configuration")
    assert find_config(None, {CONFIG_ENV: "  "}, system) == (system, "the system configuration")


def test_commands_use_the_file_the_environment_names(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nae_title = "FROMENV"\ndata_dir = {json.dumps(str(tmp_path / "data"))}\n')
    result = _run("config", "check", env={CONFIG_ENV: str(config)})
    assert result.exit_code == 0, result.output
    assert f"({config}, from ${CONFIG_ENV})" in result.output and "AE FROMENV" in result.output
    listed = _run("jobs", "list", env={CONFIG_ENV: str(config)})
    assert listed.exit_code == 0 and (tmp_path / "data").is_dir()
    missing = _run("config", "check", env={CONFIG_ENV: str(tmp_path / "nope.toml")})
    assert missing.exit_code == 1 and "file not found" in missing.output


def test_config_check_refuses_weights_that_do_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[engine]\nweights = "nosuchmodel"\n')
    result = _run("config", "check", "--config", str(config))
    assert result.exit_code == 1
    assert "[engine] weights" in result.output and "nosuchmodel" in result.output


def test_config_check_finds_a_missing_and_with_verify_a_damaged_weights_file(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[2] / "weights" / "demo"
    copy = tmp_path / "weights"
    copy.mkdir()
    for path in demo.glob("*.json"):
        (copy / path.name).write_bytes(path.read_bytes())
    for path in demo.glob("*.safetensors"):
        (copy / path.name).symlink_to(path)
    config = tmp_path / "node.toml"
    config.write_text(f"[engine]\nweights = {json.dumps(str(copy))}\n")
    assert _run("config", "check", "--config", str(config)).exit_code == 0
    (copy / "unet.safetensors").unlink()
    (copy / "unet.safetensors").write_bytes(b"not the weights")
    assert _run("config", "check", "--config", str(config)).exit_code == 0  # present: checksums need --verify
    verified = _run("config", "check", "--verify", "--config", str(config))
    assert verified.exit_code == 1 and "unet.safetensors" in verified.output
    (copy / "vqgan.safetensors").unlink()
    result = _run("config", "check", "--config", str(config))
    assert result.exit_code == 1 and "vqgan.safetensors is missing" in result.output


def test_a_device_that_is_not_there_is_a_problem(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[engine]\ndevice = "cuda:7"\n')
    result = _run("config", "check", "--config", str(config))
    assert result.exit_code == 1 and "[engine] device" in result.output


def test_admin_commands_answer_without_log_lines_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f"[node]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n")
    command = [sys.executable, "-m", "ct2pet_node", "jobs", "list", "--config", str(config)]
    quiet = subprocess.run(command, capture_output=True, text=True, check=True)
    assert quiet.stdout.strip() == "no jobs" and quiet.stderr == ""
    loud = subprocess.run([*command[:3], "-v", *command[3:]], capture_output=True, text=True, check=True)
    assert "configuration_loaded" in loud.stderr


def test_the_other_kinds_of_config_file_have_names_that_say_so() -> None:
    weights_help = _run("weights", "import", "--help").output
    train_help = _run("train", "--help").output
    assert "--release-config, --config" in weights_help
    assert "--train-config, --config" in train_help

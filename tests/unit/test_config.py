from pathlib import Path

import pytest

from ct2pet_node.config import DEFAULT_CONFIG_PATH, load_config
from ct2pet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_embedded_default_is_valid_and_listens_for_admin_on_loopback_only() -> None:
    config = load_config()
    assert DEFAULT_CONFIG_PATH.is_file()
    assert config.admin.listen_host == "127.0.0.1"
    assert config.security.allowed_calling_ae_titles == ()
    assert config.output.series == ("secondary-capture",)
    assert config.destinations == ()


def test_user_file_is_merged_over_the_default_key_by_key(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[node]\nport = 4242\n[security]\nallowed_calling_ae_titles = ["CT1", "PACS"]\n'
            '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4243\n',
        )
    )
    assert config.node.port == 4242
    assert config.node.ae_title == "CT2PET"  # untouched keys keep the default
    assert config.security.allowed_calling_ae_titles == ("CT1", "PACS")
    assert config.destination("pacs").port == 4243


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\nport = 0\nae_title = "A-TITLE-LONGER-THAN-16"\n[engine]\ndevice = "tpu"\nsteps = 1\n'
        '[output]\nseries = ["pet", "movie"]\n[admin]\nlisten = "nowhere"\n[typo]\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    for key in (
        "[node] port",
        "[node] ae_title",
        "[engine] device",
        "[engine] steps",
        "[output] series",
        "[admin] listen",
        "typo: unknown table",
    ):
        assert key in text
    assert len(caught.value.problems) == 7


def test_types_are_checked_not_coerced(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[routing\] min_slices: must be int"):
        load_config(write(tmp_path, '[routing]\nmin_slices = "20"\n'))
    with pytest.raises(ConfigError, match=r"\[routing\] series_quiet_seconds: must be int or float"):
        load_config(write(tmp_path, "[routing]\nseries_quiet_seconds = true\n"))


def test_duplicate_destination_names_and_unknown_destination(tmp_path: Path) -> None:
    block = '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "127.0.0.1"\nport = 104\n'
    with pytest.raises(ConfigError, match="used twice"):
        load_config(write(tmp_path, block + block))
    config = load_config(write(tmp_path, block))
    with pytest.raises(ConfigError, match="no destination named 'other'"):
        config.destination("other")


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"))


@pytest.mark.parametrize("precision", ["float16", "tf32"])
def test_cuda_only_precisions_on_cpu_are_refused(tmp_path: Path, precision: str) -> None:
    with pytest.raises(ConfigError, match="needs CUDA"):
        load_config(write(tmp_path, f'[engine]\ndevice = "cpu"\nprecision = "{precision}"\n'))


def test_other_sop_classes_are_accepted_by_default_and_may_be_refused(tmp_path: Path) -> None:
    assert load_config().node.other_sop_classes == "accept"
    assert (
        load_config(write(tmp_path, '[node]\nother_sop_classes = "refuse"\n')).node.other_sop_classes
        == "refuse"
    )
    with pytest.raises(ConfigError, match=r'\[node\] other_sop_classes: .* "accept" .* or "refuse"'):
        load_config(write(tmp_path, '[node]\nother_sop_classes = "drop"\n'))


def test_listener_limits_have_defaults_and_are_checked(tmp_path: Path) -> None:
    config = load_config()
    assert (config.node.max_associations, config.node.max_waiting_connections) == (10, 64)
    assert config.node.association_request_timeout_seconds == 5.0
    assert config.security.max_associations_per_peer == 8
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                "[node]\nmax_associations = 0\nassociation_request_timeout_seconds = 0\n"
                "max_waiting_connections = -1\n[security]\nmax_associations_per_peer = 0\n",
            )
        )
    text = "\n".join(caught.value.problems)
    for key in (
        "[node] max_associations",
        "[node] association_request_timeout_seconds",
        "[node] max_waiting_connections",
        "[security] max_associations_per_peer",
    ):
        assert key in text
    assert len(caught.value.problems) == 4


def test_settle_after_release_defaults_to_a_few_seconds_and_zero_turns_it_off(tmp_path: Path) -> None:
    assert load_config().routing.settle_after_release_seconds == 3.0
    off = load_config(write(tmp_path, "[routing]\nsettle_after_release_seconds = 0\n"))
    assert off.routing.settle_after_release_seconds == 0.0
    with pytest.raises(ConfigError, match=r"\[routing\] settle_after_release_seconds: -1 is not allowed"):
        load_config(write(tmp_path, "[routing]\nsettle_after_release_seconds = -1\n"))

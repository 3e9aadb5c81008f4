"""``[[destinations]]`` and ``[[sources]]`` of both types, and the ``[dicomweb]`` receiver."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.config import DicomwebEndpoint, load_config
from ct2pet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    return str(raised.value)


def test_a_dimse_destination_needs_no_type_and_a_dicomweb_one_reads_its_secret_at_use(tmp_path: Path) -> None:
    token = tmp_path / "cloud.token"
    token.write_text("s3cret\n")
    config = load_config(
        write(
            tmp_path,
            '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
            f'[[destinations]]\nname = "cloud"\ntype = "dicomweb"\nurl = "https://pacs.example/dicom-web/"\n'
            f'token_file = "{token}"\n',
        )
    )
    pacs, cloud = config.destinations
    assert (pacs.type, pacs.ae_title, pacs.dicomweb) == ("dimse", "ORTHANC", None)
    assert cloud.type == "dicomweb" and cloud.dicomweb is not None
    assert cloud.dicomweb.url == "https://pacs.example/dicom-web"
    assert "s3cret" not in repr(cloud)
    assert cloud.dicomweb.token() == "s3cret"


def test_basic_authentication_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CT2PET_TEST_PASSWORD", "pw")
    config = load_config(
        write(
            tmp_path,
            '[[sources]]\nname = "web"\ntype = "dicomweb"\nurl = "http://127.0.0.1:8042/dicom-web"\n'
            'username = "orthanc"\npassword_env = "CT2PET_TEST_PASSWORD"\n',
        )
    )
    (source,) = config.sources
    assert isinstance(source.dicomweb, DicomwebEndpoint)
    assert (source.dicomweb.username, source.dicomweb.password()) == ("orthanc", "pw")
    assert config.source_named("web") is source


def test_a_dimse_source_retrieves_by_c_move_unless_told_c_get(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[[sources]]\nname = "a"\nae_title = "A"\nhost = "127.0.0.1"\nport = 104\n'
            '[[sources]]\nname = "b"\nae_title = "B"\nhost = "127.0.0.1"\nport = 105\nretrieve = "c-get"\n',
        )
    )
    assert [s.retrieve for s in config.sources] == ["c-move", "c-get"]
    with pytest.raises(ConfigError, match="no source named 'c'"):
        config.source_named("c")


def test_peer_tables_name_each_problem(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        '[[destinations]]\nname = "x"\ntype = "ftp"\n'
        '[[destinations]]\nname = "w"\ntype = "dicomweb"\nurl = "pacs.example"\nusername = "u"\n'
        '[[sources]]\nname = "s"\nae_title = "S"\nhost = "h"\nport = 1\nretrieve = "c-find"\n'
        '[[sources]]\nname = "s"\nae_title = "S"\nhost = "h"\nport = 1\n',
    )
    assert "[[destinations]] #1 type: 'ftp' is not one of dimse, dicomweb" in text
    assert "[[destinations]] #2 url" in text and "http(s)://" in text
    assert "needs both username and password_file" in text
    assert "[[sources]] #1 retrieve" in text
    assert "[[sources]] #2 name: 's' is used twice" in text


def test_the_stow_receiver_is_off_by_default_and_refused_beyond_loopback_without_a_token(
    tmp_path: Path,
) -> None:
    assert not load_config().dicomweb.enabled
    assert (
        load_config(write(tmp_path, '[dicomweb]\nlisten = "127.0.0.1:8042"\n')).dicomweb.listen_port == 8042
    )
    text = problems(tmp_path, '[dicomweb]\nlisten = "0.0.0.0:8042"\n')
    assert "[dicomweb] listen: '0.0.0.0:8042' reaches beyond loopback with no token" in text
    token = tmp_path / "stow.token"
    token.write_text("t\n")
    open_one = load_config(write(tmp_path, f'[dicomweb]\nlisten = "0.0.0.0:8042"\ntoken_file = "{token}"\n'))
    assert open_one.dicomweb.token() == "t"


def test_a_destination_shows_its_address_without_credentials() -> None:
    from ct2pet_node.config import Destination, DicomwebEndpoint

    dimse = Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104)
    assert dimse.address == "PACS@10.0.0.5:104"
    endpoint = DicomwebEndpoint(url="https://user:pw@pacs.example:8443/dicom-web?key=abc")
    assert Destination(name="cloud", type="dicomweb", dicomweb=endpoint).address == (
        "https://pacs.example:8443/dicom-web"
    )


def test_the_dashboard_names_the_receiver_and_the_sources(tmp_path: Path) -> None:
    from ct2pet_node.app import node_facts

    quiet = node_facts(load_config())
    assert (quiet.stow, quiet.sources) == ("", ())
    config = load_config(
        write(
            tmp_path,
            '[dicomweb]\nlisten = "127.0.0.1:8042"\n'
            '[[sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n',
        )
    )
    facts = node_facts(config)
    assert facts.stow == "127.0.0.1:8042, no token (loopback)"
    assert facts.sources == ("pacs (dimse)",)

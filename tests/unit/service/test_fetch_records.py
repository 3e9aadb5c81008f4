"""The fetcher remembers each fetch, failed ones with their reason, and tells its counter."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ct2pet_node.app import scu_timeouts
from ct2pet_node.config import load_config
from ct2pet_node.domain.fetch import FetchRecord, FetchRequest
from ct2pet_node.domain.uids import StudyUid
from ct2pet_node.errors import ConfigError, SourceError
from ct2pet_node.net.intake import Intake
from ct2pet_node.service.fetch import RECENT_FETCHES, Fetcher
from ct2pet_node.spool.instances import InstanceSpool
from ct2pet_node.spool.jobstore import JobStore

STUDY = StudyUid("1.2.826.0.1.3680043.10.11")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe goes


def test_failed_fetches_are_remembered_with_their_reason_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[delivery]\nconnect_timeout_seconds = 2\n'
        f'[[sources]]\nname = "down"\nae_title = "DOWN"\nhost = "127.0.0.1"\nport = {closed_port()}\n'
    )
    config = load_config(path)
    with JobStore.open(tmp_path / "data") as store:
        intake = Intake(InstanceSpool(tmp_path / "data", 0), store, lambda _record: None, 1 << 20)
        told: list[FetchRecord] = []
        fetcher = Fetcher(config, intake, store, scu_timeouts(config), on_record=told.append)
        with pytest.raises(SourceError):
            fetcher.fetch(FetchRequest("down", STUDY))
        with pytest.raises(ConfigError):
            fetcher.fetch(FetchRequest("nowhere", STUDY))
        down, unknown = fetcher.recent()
        assert told == [down, unknown]
        assert (down.source, down.method, down.instances) == ("down", "C-MOVE", 0)
        assert down.error is not None and "cannot connect" in down.error
        assert (
            unknown.method == "?"
            and unknown.error is not None
            and "no source named 'nowhere'" in unknown.error
        )
        for _ in range(RECENT_FETCHES):
            with pytest.raises(ConfigError):
                fetcher.fetch(FetchRequest("nowhere", STUDY))
        assert len(fetcher.recent()) == RECENT_FETCHES and down not in fetcher.recent()

"""The node runs from its checkout: without the embedded default it says so instead of half-starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2pet_node.config import load
from ct2pet_node.errors import ConfigError


def test_a_missing_embedded_default_names_itself_and_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a built wheel sees: the package without the checkout's config/ beside it.
    missing = tmp_path / "config" / "ct2pet-node.toml"
    monkeypatch.setattr(load, "DEFAULT_CONFIG_PATH", missing)
    with pytest.raises(ConfigError, match="embedded default configuration is missing") as caught:
        load.load_config()
    assert str(missing) in str(caught.value)
    assert "pip install -e" in str(caught.value)


def test_the_checkout_holds_the_embedded_default() -> None:
    assert load.DEFAULT_CONFIG_PATH.is_file()
    load.load_config()

"""The [engine] table: model defaults left open, fast-path switches, and their checks."""

from pathlib import Path

import pytest

from ct2pet_node.config import load_config
from ct2pet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_embedded_default_leaves_eta_and_every_fast_path_to_the_model_and_device() -> None:
    engine = load_config().engine
    assert engine.steps == 0
    assert engine.eta is None
    assert engine.precision == "float32"
    open_choices = (
        engine.channels_last,
        engine.compile,
        engine.cuda_graphs,
        engine.overlap,
        engine.batch_size,
        engine.decode_batch_size,
        engine.threads,
    )
    assert open_choices == (None,) * 7


def test_fast_path_switches_and_sizes_are_read(tmp_path: Path) -> None:
    engine = load_config(
        write(
            tmp_path,
            "[engine]\neta = 0\nchannels_last = true\ncompile = false\ncuda_graphs = false\n"
            'overlap = true\nbatch_size = 8\ndecode_batch_size = 4\nthreads = 2\nprecision = "bfloat16"\n',
        )
    ).engine
    assert engine.eta == 0.0
    assert (engine.channels_last, engine.compile, engine.cuda_graphs, engine.overlap) == (
        True,
        False,
        False,
        True,
    )
    assert (engine.batch_size, engine.decode_batch_size, engine.threads) == (8, 4, 2)
    # bfloat16 autocast is offered on CPUs (never their default), so "auto" devices accept it.
    assert engine.precision == "bfloat16"


def test_bfloat16_is_allowed_on_an_explicit_cpu(tmp_path: Path) -> None:
    engine = load_config(write(tmp_path, '[engine]\ndevice = "cpu"\nprecision = "bfloat16"\n')).engine
    assert engine.precision == "bfloat16"


def test_bad_fast_path_values_are_each_reported_with_their_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[engine]\nchannels_last = "yes"\nbatch_size = 0\nthreads = 1.5\neta = 2\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    for key in ("[engine] channels_last", "[engine] batch_size", "[engine] threads", "[engine] eta"):
        assert key in text
    assert 'or "auto"' in text

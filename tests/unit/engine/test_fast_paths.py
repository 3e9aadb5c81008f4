"""Fast paths: the choice per device, and each CPU-runnable path against the exact float32 path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch

from ct2pet_node.config import ENGINE_COUNTS, ENGINE_SWITCHES, load_config
from ct2pet_node.engine import Pipeline, fast_paths, load_pipeline
from ct2pet_node.engine.fast_paths import CompiledOrEager, GraphedCall, cuda_math
from ct2pet_node.engine.options import (
    CPU_BATCH,
    CPU_MAX_BATCH,
    ERROR_BUDGET,
    MAX_BATCH,
    EngineOptions,
    ErrorBudget,
    Footprint,
    choose_batch_sizes,
    cpu_batch_size,
    estimate_footprint,
    resolve_options,
)
from ct2pet_node.errors import EngineError

EXACT = EngineOptions(channels_last=False, compile=False, cuda_graphs=False, overlap=False)


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    """Three 64x64 CT slices in HU (an odd count, so the last batch of two is short)."""
    rng = np.random.default_rng(5)
    return rng.uniform(-1000, 1500, (3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def exact_out(tiny_weights: Path, hu: np.ndarray) -> np.ndarray:
    pipe = load_pipeline(tiny_weights, "cpu", None, options=EngineOptions(batch_size=2))
    out: np.ndarray = pipe(hu, eta=1.0, steps=3, seed=11)
    return out


def _translate(tiny_weights: Path, hu: np.ndarray, options: EngineOptions) -> np.ndarray:
    out: np.ndarray = load_pipeline(tiny_weights, device="cpu", options=options)(
        hu, eta=1.0, steps=3, seed=11
    )
    return out


def test_cpu_defaults_are_the_exact_path_and_cuda_defaults_only_reorder_work() -> None:
    cpu = resolve_options(EngineOptions(), "cpu")
    assert cpu.exact and not (cpu.channels_last or cpu.compile or cpu.cuda_graphs or cpu.overlap)
    cuda = resolve_options(EngineOptions(), "cuda")
    assert cuda.exact and cuda.cuda_graphs and cuda.overlap and cuda.precision == "float32"
    chosen = resolve_options(EngineOptions(precision="bfloat16", compile=True, overlap=False), "cuda")
    assert not chosen.exact and chosen.compile and not chosen.overlap and chosen.fixed_shapes


def test_cuda_only_paths_on_the_cpu_are_refused_or_switched_off() -> None:
    assert resolve_options(EngineOptions(precision="bfloat16"), "cpu").precision == "bfloat16"
    for precision in ("float16", "tf32"):
        with pytest.raises(EngineError, match="only offered on CUDA"):
            resolve_options(EngineOptions(precision=precision), "cpu")
    with structlog.testing.capture_logs() as logs:
        resolved = resolve_options(EngineOptions(cuda_graphs=True), "cpu")
    assert not resolved.cuda_graphs
    assert any(e["event"] == "fast_path_unavailable" and e["path"] == "cuda_graphs" for e in logs)


def test_engine_table_maps_to_options_by_name() -> None:
    fields = {f.name for f in dataclasses.fields(EngineOptions)}
    assert fields == {"precision", *ENGINE_SWITCHES, *ENGINE_COUNTS}  # what from_config relies on
    engine = load_config().engine
    assert EngineOptions.from_config(engine) == EngineOptions()  # the default leaves all to the device
    chosen = dataclasses.replace(
        engine, precision="bfloat16", channels_last=True, overlap=False, decode_batch_size=4, threads=2
    )
    assert EngineOptions.from_config(chosen) == EngineOptions(
        precision="bfloat16", channels_last=True, overlap=False, decode_batch_size=4, threads=2
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"precision": "int8"}, "int8"), ({"batch_size": 0}, "batch_size 0"), ({"threads": -1}, "threads -1")],
)
def test_bad_options_name_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        EngineOptions(**kwargs)  # type: ignore[arg-type]


def test_batch_sizes_follow_free_memory() -> None:
    footprint = Footprint(sample_bytes=100e6, decode_bytes=400e6)
    assert choose_batch_sizes(1e9, footprint) == (6, 1)
    assert choose_batch_sizes(10e9, footprint) == (60, 15)
    assert choose_batch_sizes(1e12, footprint) == (MAX_BATCH, MAX_BATCH)
    assert choose_batch_sizes(0.0, footprint) == (1, 1)
    release = estimate_footprint(256, 512, 128, 4)
    half = estimate_footprint(256, 512, 128, 2)
    assert half.sample_bytes == release.sample_bytes / 2 and half.decode_bytes == release.decode_bytes
    assert estimate_footprint(512, 512, 128, 4).decode_bytes == 4 * release.decode_bytes


def test_cpu_batch_grows_as_the_latent_shrinks() -> None:
    assert cpu_batch_size(64) == CPU_BATCH  # the release architecture, as measured
    assert cpu_batch_size(32) == 8  # the demo model
    assert cpu_batch_size(16) == CPU_MAX_BATCH  # the tiny reference model: capped
    assert cpu_batch_size(128) == 1
    with pytest.raises(EngineError, match="latent side 0"):
        cpu_batch_size(0)


def test_cpu_pipeline_decodes_as_wide_as_it_samples(tiny_weights: Path) -> None:
    pipe = load_pipeline(tiny_weights, device="cpu")
    assert pipe.latent_side == 16  # 64x64 images, two VQGAN downsamplings
    assert pipe.batch_size == pipe.decode_batch_size == CPU_MAX_BATCH


def test_error_budget() -> None:
    assert ERROR_BUDGET.admits(0.001, 50.0)
    assert not ERROR_BUDGET.admits(0.02, 50.0)
    assert not ERROR_BUDGET.admits(0.001, 39.0)
    assert ErrorBudget(0.1, 20.0).admits(0.05, 25.0)


def test_overlap_gives_the_exact_output(tiny_weights: Path, hu: np.ndarray, exact_out: np.ndarray) -> None:
    ticks: list[tuple[int, int]] = []
    pipe = load_pipeline(tiny_weights, device="cpu", options=EngineOptions(overlap=True, batch_size=2))
    out = pipe(hu, eta=1.0, steps=3, seed=11, progress=lambda d, t: ticks.append((d, t)))
    np.testing.assert_array_equal(out, exact_out)
    assert ticks[-1] == (9, 9)


def test_channels_last_and_small_decode_batches_stay_exact(
    tiny_weights: Path, hu: np.ndarray, exact_out: np.ndarray
) -> None:
    for options in (EngineOptions(channels_last=True, batch_size=2), EngineOptions(decode_batch_size=1)):
        np.testing.assert_allclose(_translate(tiny_weights, hu, options), exact_out, atol=1e-4, rtol=0)


def test_cpu_bfloat16_autocast_takes_effect(
    tiny_weights: Path, hu: np.ndarray, exact_out: np.ndarray
) -> None:
    out = _translate(tiny_weights, hu, EngineOptions(precision="bfloat16", batch_size=2))
    assert np.isfinite(out).all()
    diff = np.abs(out - exact_out)
    assert diff.max() > 0 and diff.mean() < 0.05, diff.mean()  # rounded differently, still the same image


def test_failed_compile_falls_back_to_eager_and_pads_batches(
    tiny_weights: Path, hu: np.ndarray, exact_out: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    shapes: list[int] = []
    with structlog.testing.capture_logs() as logs:
        pipe = load_pipeline(tiny_weights, device="cpu", options=EngineOptions(compile=True, batch_size=2))
        original = pipe.nets.unet.forward
        monkeypatch.setattr(
            pipe.nets.unet, "forward", lambda x, t: shapes.append(x.shape[0]) or original(x, t)
        )
        out = pipe(hu, eta=1.0, steps=3, seed=11)
    assert [e["network"] for e in logs if e["event"] == "compile_failed"] == [
        "vqgan_encode",
        "unet",
        "vqgan_decode",
    ]
    assert set(shapes) == {2}  # the last, single-slice batch was padded to the compiled shape
    np.testing.assert_allclose(out, exact_out, atol=1e-5, rtol=0)


def test_compile_unavailable_at_construction_falls_back() -> None:
    wrapped = CompiledOrEager("unet", lambda x: x + 1, mode="no-such-mode")
    assert not wrapped.active
    assert torch.equal(wrapped(torch.zeros(2)), torch.ones(2))


def test_out_of_memory_halves_the_batch_and_keeps_the_output(
    tiny_weights: Path, hu: np.ndarray, exact_out: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = load_pipeline(tiny_weights, device="cpu", options=EngineOptions(batch_size=2))
    original = Pipeline.translate_ct01

    def tight(self: Pipeline, ct01: torch.Tensor, *args: object) -> torch.Tensor:
        if ct01.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, ct01, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Pipeline, "translate_ct01", tight)
    with structlog.testing.capture_logs() as logs:
        out = pipe(hu[:2], eta=1.0, steps=3, seed=11)
    np.testing.assert_allclose(out, exact_out[:2], atol=1e-5, rtol=0)
    assert pipe.batch_size == pipe.decode_batch_size == 1  # kept for later calls, and said so
    assert [e["was"] for e in logs if e["event"] == "batch_size_lowered"] == [2]
    monkeypatch.setattr(
        Pipeline, "translate_ct01", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError())
    )
    with pytest.raises(EngineError, match="one slice per batch"):
        pipe(hu[:1], eta=1.0, steps=3, seed=11)


def test_lower_batch_size_only_lowers(tiny_weights: Path) -> None:
    pipe = load_pipeline(tiny_weights, device="cpu", options=EngineOptions(batch_size=4, decode_batch_size=2))
    pipe.lower_batch_size(8)
    assert (pipe.batch_size, pipe.decode_batch_size) == (4, 2)
    pipe.lower_batch_size(3)
    assert (pipe.batch_size, pipe.decode_batch_size) == (3, 2)
    pipe.lower_batch_size(1)
    assert (pipe.batch_size, pipe.decode_batch_size) == (1, 1)
    with pytest.raises(EngineError, match="batch size 0"):
        pipe.lower_batch_size(0)


def test_threads_option_and_cpu_math_context(tiny_weights: Path) -> None:
    before = torch.get_num_threads()
    try:
        load_pipeline(tiny_weights, device="cpu", options=EngineOptions(threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with cuda_math(torch.device("cpu"), "bfloat16", benchmark=True):
        assert fast_paths.torch.get_num_threads() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_equal_eager_calls() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).cuda().eval()
    graphed = GraphedCall(lambda x: conv(x).float())
    with torch.inference_mode():
        for seed in (0, 1):
            x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).cuda()
            assert torch.equal(graphed(x), conv(x))
    assert len(graphed.graphs) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_stay_within_budget_and_16_bit_paths_run(tiny_weights: Path, hu: np.ndarray) -> None:
    exact = load_pipeline(tiny_weights, "cuda", options=EXACT)(hu, eta=1.0, steps=3, seed=11)
    out = load_pipeline(tiny_weights, "cuda", options=EngineOptions())(hu, eta=1.0, steps=3, seed=11)
    mae = float(np.abs(out - exact).mean())
    psnr = 10 * np.log10(1.0 / max(float(np.mean((out - exact) ** 2)), 1e-20))
    assert ERROR_BUDGET.admits(mae, psnr), (mae, psnr)
    # The tiny model's random weights say nothing about 16-bit error (the benchmark does):
    # these paths must run, pad, capture and stay finite.
    for options in (
        EngineOptions(precision="bfloat16", channels_last=True, batch_size=2),
        EngineOptions(precision="float16", compile=True, cuda_graphs=True, batch_size=2),
    ):
        fast = load_pipeline(tiny_weights, "cuda", options=options)(hu, eta=1.0, steps=3, seed=11)
        assert fast.shape == exact.shape and np.isfinite(fast).all()

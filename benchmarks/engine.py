"""The exact float32 path against each fast path, on the full-size CPDM release architecture.

One run builds the release architecture with seeded random weights once per
path (identical weights), and for every path measures on the same inputs:

- parts, per slice: guide maps, VQGAN encode, VQGAN decode, one UNet step;
- a study: seconds and slices per second for ``--slices`` slices at
  ``--total-steps`` sampling steps, MEASURED with ``--full-run``, else
  EXTRAPOLATED from the parts (guides + encode + decode + evaluations x step);
- peak memory: CUDA max allocated, or the process's peak RSS (reset per path);
- error against the exact path with the same noise (same seed, eta 1): mean
  absolute error in output units and PSNR (peak = output range), on
  ``--error-slices`` slices at ``--error-steps`` steps (the whole study with
  ``--full-run``);
- ratios to the exact path, and the achieved FLOP/s as a fraction of an
  assumed dense bfloat16 peak (FLOPs counted by torch's FlopCounterMode).

With ``--weights DIR`` a trained weights directory (e.g. ``weights/demo``) is
loaded for every path instead, steps default to the model's own, and the CPU
catalogue adds the batch sizes that suit a small model; ``--ct-dir`` feeds
real CT slices (the project's reader, resized to the model and back inside
the pipeline, as ``convert`` does); ``--json`` writes every figure.

CPU (short, extrapolated): ``python benchmarks/engine.py --device cpu``
GPU (the issue's figures): ``python benchmarks/engine.py --device cuda --full-run``
The demo model converting the sample on the CPU:
``python benchmarks/engine.py --device cpu --weights weights/demo --ct-dir SAMPLE/CT --full-run``
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ct2pet_node.engine import load_pipeline
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.device import resolve_device
from ct2pet_node.engine.manifest import RELEASE_CALIBRATION, WeightsManifest, release_normalisation
from ct2pet_node.engine.networks import (
    RELEASE_CONFIG,
    VQGAN,
    Networks,
    SegmentationUNet,
    SpatialRescaler,
    UNet,
)
from ct2pet_node.engine.networks.segmentation import SegmentationArchitecture
from ct2pet_node.engine.options import ERROR_BUDGET, EngineOptions, cpu_batch_size, latent_side
from ct2pet_node.engine.pipeline import Pipeline
from ct2pet_node.engine.weights import load_manifest
from ct2pet_node.errors import Ct2PetError

# Dense bfloat16 peak of an H200 (SXM) from NVIDIA's data sheet (1979 TFLOP/s is with sparsity);
# the issue text assumed 790 TFLOP/s. Both are printed; --peak-tflops overrides the first.
H200_BF16_DENSE_TFLOPS = 989.5
ISSUE_BF16_TFLOPS = 790.0

EXACT = EngineOptions(channels_last=False, compile=False, cuda_graphs=False, overlap=False)
CPU_PATHS: dict[str, EngineOptions] = {
    "exact": EXACT,
    "threads=1": replace(EXACT, threads=1),
    "batch=1": replace(EXACT, batch_size=1),
    "batch=2": replace(EXACT, batch_size=2),
    "channels_last": replace(EXACT, channels_last=True),
    "bf16": replace(EXACT, precision="bfloat16"),
    "compile": replace(EXACT, compile=True),
    "default": EngineOptions(),
}
# A small trained model (--weights) on the CPU: its latent is small (32x32 for the demo), so
# per-call overheads weigh more and larger batches pay. "exact" runs at the pipeline's CPU
# batch for the model (options.cpu_batch_size: 8 for the demo), decoding as wide; "batch=2"
# is the release architecture's CPU batch, for comparison.
CPU_SMALL_MODEL_PATHS: dict[str, EngineOptions] = {
    "exact": EXACT,
    "batch=1": replace(EXACT, batch_size=1),
    "batch=2": replace(EXACT, batch_size=2, decode_batch_size=2),
    "batch=4": replace(EXACT, batch_size=4),
    "batch=8": replace(EXACT, batch_size=8),
    "batch=16": replace(EXACT, batch_size=16),
    "batch=8+decode=8": replace(EXACT, batch_size=8, decode_batch_size=8),
    "batch=16+decode=16": replace(EXACT, batch_size=16, decode_batch_size=16),
    "threads=1": replace(EXACT, threads=1),
    "threads=1+batch=8": replace(EXACT, threads=1, batch_size=8),
    "channels_last": replace(EXACT, channels_last=True),
    "channels_last+batch=8": replace(EXACT, channels_last=True, batch_size=8),
    "bf16": replace(EXACT, precision="bfloat16"),
    "bf16+batch=8": replace(EXACT, precision="bfloat16", batch_size=8),
    "compile": replace(EXACT, compile=True),
    "default": EngineOptions(),
}
# Minutes of compilation per batch shape: measured only when named in --paths.
NOT_BY_DEFAULT = {"compile"}
CUDA_PATHS: dict[str, EngineOptions] = {
    "exact": EXACT,
    "exact+graphs+overlap": replace(EXACT, cuda_graphs=True, overlap=True),
    "tf32": replace(EXACT, precision="tf32"),
    "bf16": replace(EXACT, precision="bfloat16"),
    "fp16": replace(EXACT, precision="float16"),
    "bf16+channels_last": replace(EXACT, precision="bfloat16", channels_last=True),
    "bf16+graphs+overlap": replace(EXACT, precision="bfloat16", cuda_graphs=True, overlap=True),
    "bf16+compile": replace(EXACT, precision="bfloat16", compile=True, overlap=True),
    "bf16+all": EngineOptions(precision="bfloat16", channels_last=True, compile=True, cuda_graphs=True),
    "default": EngineOptions(),
}


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return [_plain(v) for v in tree]
    return tree


def release_manifest() -> WeightsManifest:
    """The manifest of the full-size release architecture (no files: the weights are random)."""
    config = _plain(RELEASE_CONFIG)
    architecture = {
        "image_size": config["image_size"],
        "vqgan": config["VQGAN"],
        "unet": config["UNetParams"],
        "cond_stage": config["CondStageParams"],
        "segmentation": config["segmentation"],
        "bridge": {"num_timesteps": 1000, "mt_type": "linear", "eta": 1.0, "sample_step": 200},
    }
    return WeightsManifest(
        format_version=1,
        model_id="benchmark-random",
        architecture=architecture,
        normalisation=release_normalisation(),
        output_units="relative",
        calibration=RELEASE_CALIBRATION,
        files={},
    )


def release_pipeline(
    device: torch.device,
    precision: str | None = None,
    batch_size: int | None = None,
    options: EngineOptions | None = None,
) -> Pipeline:
    """The release architecture at full size with seeded random weights, as a Pipeline."""
    torch.manual_seed(0)
    manifest = release_manifest()
    arch = manifest.architecture
    seg, cond = arch["segmentation"], arch["cond_stage"]
    networks = Networks(
        vqgan=VQGAN.from_config(arch["vqgan"]),
        unet=UNet.from_config(arch["unet"]),
        cond_attention=SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
        cond_attenuation=SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
        segmentation=SegmentationUNet(
            SegmentationArchitecture(
                in_channels=seg["in_channels"],
                classes=seg["classes"],
                block="basic",
                layers=(3, 4, 6, 3),
                decoder_channels=tuple(seg["decoder_channels"]),
                head_kernel=3,
            )
        ),
    )
    for _, net in networks.named():
        net.eval().requires_grad_(False)
    return Pipeline(manifest, networks, device, precision, batch_size, options)


def make_pipeline(weights: Path | None, device: torch.device, options: EngineOptions) -> Pipeline:
    """The pipeline a path measures: the weights directory when given, else the random release."""
    if weights is None:
        return release_pipeline(device, options=options)
    return load_pipeline(weights, str(device), options=options)


def latent_geometry(architecture: Mapping[str, Any]) -> tuple[int, int, int]:
    """(latent channels, context channels, latent side in pixels) of an architecture.

    The UNet reads the latent and the context concatenated on channels.
    """
    latent = int(architecture["vqgan"]["embed_dim"])
    return latent, int(architecture["unet"]["in_channels"]) - latent, latent_side(architecture)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, flops: list[int] | None = None
) -> float:
    """Seconds per call after one warm-up call (whose FLOPs are counted into ``flops``)."""
    if flops is not None:
        with FlopCounterMode(display=False) as counter:
            fn()
        flops.append(counter.get_total_flops())
    else:
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_matmul_gflops(side: int = 2048, repeats: int = 4) -> float:
    """GFLOP/s of a float32 ``side`` x ``side`` matmul now: the practical limit of this CPU."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    return 2 * side**3 / _timed(lambda: a @ b, torch.device("cpu"), repeats) / 1e9


def parts(
    pipe: Pipeline, steps_measured: int, flops: list[int] | None, input_shape: tuple[int, int]
) -> dict[str, float]:
    """Per-slice seconds of the guide maps, encode, decode, one UNet step and the resizes.

    At the pipe's batch size and the latent shape its architecture gives;
    ``resize`` (input grid -> model size -> input grid) is 0 when ``input_shape``
    is the model size.
    """
    device, size, batch = pipe.device, pipe.image_size, pipe.batch_size
    latent, context_channels, side = latent_geometry(pipe.manifest.architecture)
    gen = torch.Generator().manual_seed(1)
    ct01 = torch.rand(batch, 1, size, size, generator=gen).to(device)
    x = torch.randn(batch, latent, side, side, generator=gen).to(device)
    context = torch.randn(batch, context_channels, side, side, generator=gen).to(device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    with torch.inference_mode():
        guide = _timed(
            lambda: pipe.context(pipe.attention_map(ct01), pipe.attenuation_map(ct01, 140.0)),
            device,
            1,
            flops,
        )
        encode = _timed(lambda: pipe.encode(ct01), device, 1, flops)
        decode = _timed(lambda: pipe.decode(x), device, 1, flops)
        step = _timed(lambda: pipe.denoise(x, t, context), device, steps_measured, flops)
        resize = 0.0
        if input_shape != (size, size):
            grid = torch.rand(batch, 1, *input_shape, generator=gen).to(device)
            resize = _timed(lambda: pipe.resize(pipe.resize(grid, (size, size)), input_shape), device, 1)
    return {
        "guide": guide / batch,
        "encode": encode / batch,
        "decode": decode / batch,
        "step": step / batch,
        "resize": resize / batch,
    }


def errors(got: np.ndarray, exact: np.ndarray, output_range: float) -> tuple[float, float]:
    """(mean absolute error in output units, PSNR in dB with the output range as peak)."""
    diff = got.astype(np.float64) - exact.astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(output_range**2 / mse)
    return float(np.mean(np.abs(diff))), psnr


def run_path(
    name: str,
    options: EngineOptions,
    args: argparse.Namespace,
    device: torch.device,
    inputs: dict[str, Any],
    reference: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of one path; fills ``reference`` when the path is the exact one."""
    default_threads = torch.get_num_threads()
    _reset_peak(device)
    pipe = make_pipeline(args.weights, device, options)
    flops: list[int] | None = [] if "flops" not in reference else None
    row: dict[str, Any] = {
        "path": name,
        "batch": pipe.batch_size,
        "decode_batch": pipe.decode_batch_size,
        "threads": torch.get_num_threads(),
        **parts(pipe, args.steps_measured, flops, inputs["error"].shape[1:]),
    }
    evaluations = len(pipe.schedule.timesteps(args.total_steps))
    if flops is not None:
        per_slice = flops[0] + flops[1] + flops[2] + flops[3] * evaluations
        reference["flops"] = np.array([per_slice / pipe.batch_size, flops[3] / pipe.batch_size])
    per_slice = row["guide"] + row["encode"] + row["decode"] + row["resize"] + evaluations * row["step"]
    row["study_s"], row["how"] = per_slice * args.slices, "extrapolated"
    hu = inputs["study"] if args.full_run else inputs["error"]
    err_steps = args.total_steps if args.full_run else args.error_steps
    _sync(device)
    start = time.perf_counter()
    out = pipe(hu, kvp=inputs["kvp"], steps=err_steps, eta=args.eta, seed=0)
    _sync(device)
    if args.full_run:
        row["study_s"], row["how"] = time.perf_counter() - start, "measured"
    row["slices_per_s"] = args.slices / row["study_s"]
    row["peak_mib"] = _peak_mib(device)
    if name == "exact":
        reference["out"] = out
    scale = pipe.manifest.pet_scaling.scale
    row["mae"], row["psnr"] = (
        errors(out, reference["out"], scale) if "out" in reference else (float("nan"),) * 2
    )
    row["within_budget"] = ERROR_BUDGET.admits(row["mae"] / scale, row["psnr"])
    row["compiled"] = getattr(pipe._unet_fn, "active", None)
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.set_num_threads(default_threads)
    return row


def report(rows: list[dict[str, Any]], facts: dict[str, Any], args: argparse.Namespace) -> None:
    """The table, the ratios to the exact path, the fraction of the bf16 peak and (CPU) GFLOP/s."""
    exact, cpu = rows[0], facts["device_type"] == "cpu"
    header = (
        f"{'path':>22} {'batch':>7} {'thr':>3} {'unet s/sl/step':>14} {'enc s/sl':>8} {'dec s/sl':>8} "
        f"{'s/study':>9} {'how':>12} {'slices/s':>8} {'x exact':>7} {'peak MiB':>8} "
        f"{'MAE':>9} {'PSNR dB':>7} {'budget':>6} {'%peak990':>8} {'%peak790':>8}"
        + (f" {'GFLOP/s':>7} {'%matmul':>7}" if cpu else "")
    )
    print(header)
    print("-" * len(header))
    study_flops = facts["flops_per_slice"] * args.slices
    for r in rows:
        achieved = study_flops / r["study_s"]
        r["gflops_per_s"] = achieved / 1e9
        note = " (compile fell back to eager)" if r["compiled"] is False else ""
        cpu_columns = (
            f" {achieved / 1e9:>7.1f} {100 * achieved / 1e9 / facts['matmul_gflops']:>7.1f}" if cpu else ""
        )
        print(
            f"{r['path']:>22} {str(r['batch']) + '/' + str(r['decode_batch']):>7} {r['threads']:>3} "
            f"{r['step']:>14.4f} {r['encode']:>8.3f} {r['decode']:>8.3f} "
            f"{r['study_s']:>9.1f} {r['how']:>12} {r['slices_per_s']:>8.4f} "
            f"{exact['study_s'] / r['study_s']:>7.2f} {r['peak_mib']:>8.0f} {r['mae']:>9.2e} {r['psnr']:>7.1f} "
            f"{'yes' if r['within_budget'] else 'NO':>6} {100 * achieved / (args.peak_tflops * 1e12):>8.3f} "
            f"{100 * achieved / (ISSUE_BF16_TFLOPS * 1e12):>8.3f}{cpu_columns}{note}"
        )
    print(
        f"\nFLOPs counted (FlopCounterMode): {facts['flops_per_slice'] / 1e12:.4f} TFLOP per slice at "
        f"{args.total_steps} steps (UNet {facts['flops_per_step'] / 1e12:.5f} per step), "
        f"{study_flops / 1e15:.4f} PFLOP per {args.slices}-slice study."
    )
    print(
        f"%peak990 = achieved FLOP/s / {args.peak_tflops:g} TFLOP/s (assumed dense bf16 peak, H200 data sheet); "
        f"%peak790 = the same against the issue's assumption of {ISSUE_BF16_TFLOPS:g} TFLOP/s."
    )
    if cpu:
        print(
            f"CPU: GFLOP/s = counted FLOPs / s/study; %matmul = that against a float32 2048x2048 matmul "
            f"measured now ({facts['matmul_gflops']:.1f} GFLOP/s, {facts['threads']} threads). "
            "Resizes, attenuation maps and noise are not counted as FLOPs."
        )
    what = "the whole study" if args.full_run else f"{args.error_slices} slices at {args.error_steps} steps"
    print(
        f"MAE ({facts['output_units']}, range {facts['output_range']:g}) and PSNR against the exact path, "
        f"same seed, eta {args.eta:g} (the model's own eta is {facts['model_eta']:g}), on {what}; "
        f"budget: MAE <= {ERROR_BUDGET.max_mae_fraction:.0%} of the range and PSNR >= "
        f"{ERROR_BUDGET.min_psnr_db:g} dB. 'x exact' = exact s/study / path s/study; batch = sampling/decode; "
        "thr = CPU threads. CPU peak = peak RSS of the process during the path (includes building the networks)."
    )


def _finite(tree: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_finite(v) for v in tree]
    if isinstance(tree, np.generic):
        tree = tree.item()
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _inputs(args: argparse.Namespace, image_size: int) -> tuple[dict[str, Any], str]:
    """The HU slices (z, y, x) of the error and study runs, their kVp, and a line saying what they are."""
    if args.ct_dir is not None:
        # The training dataset's reader: the node's own folder scan, qualification and HU decode.
        from ct2pet_node.training.dataset import read_ct_volume

        volume = read_ct_volume(args.ct_dir)
        hu = np.ascontiguousarray(volume.hu[: args.slices])
        args.slices = hu.shape[0]
        inputs = {"error": hu[: args.error_slices], "study": hu, "kvp": volume.kvp}
        what = (
            f"{hu.shape[0]} of {volume.hu.shape[0]} CT slices {hu.shape[1]}x{hu.shape[2]} from {args.ct_dir} "
            f"(series {volume.series_uid}, kVp {volume.kvp})"
        )
        return inputs, what
    side = 256 if args.weights is None else image_size
    rng = np.random.default_rng(2)
    inputs = {
        "error": rng.uniform(-1000, 1500, (args.error_slices, side, side)).astype(np.float32),
        "study": rng.uniform(-1000, 1500, (args.slices, side, side)).astype(np.float32)
        if args.full_run
        else None,
        "kvp": None,
    }
    return inputs, f"random HU {side}x{side} slices"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--paths",
        default=None,
        help="comma list of path names (default: all for the device and model, but compile with --weights)",
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="a weights directory (default: random release weights)"
    )
    parser.add_argument(
        "--ct-dir", type=Path, default=None, help="a CT series folder as input (default: random HU)"
    )
    parser.add_argument("--slices", type=int, default=250, help="slices of a study (at most the CT's)")
    parser.add_argument(
        "--total-steps", type=int, default=None, help="sampling steps of a study (default: the model's)"
    )
    parser.add_argument("--eta", type=float, default=1.0, help="noise scale of the measured runs")
    parser.add_argument("--full-run", action="store_true", help="translate the whole study on every path")
    parser.add_argument(
        "--error-slices", type=int, default=2, help="slices of the error run without --full-run"
    )
    parser.add_argument(
        "--error-steps", type=int, default=10, help="steps of the error run without --full-run"
    )
    parser.add_argument("--steps-measured", type=int, default=None, help="UNet calls timed (CPU 2, CUDA 20)")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS, help="dense bf16 peak")
    parser.add_argument("--json", type=Path, default=None, help="also write the header facts and rows here")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    manifest = release_manifest() if args.weights is None else load_manifest(args.weights)
    schedule = BridgeSchedule.from_config(manifest.architecture["bridge"])
    args.total_steps = args.total_steps or schedule.sample_step
    args.steps_measured = args.steps_measured or (20 if cuda else 2)
    catalogue = CUDA_PATHS if cuda else CPU_PATHS if args.weights is None else CPU_SMALL_MODEL_PATHS
    names = args.paths.split(",") if args.paths else [n for n in catalogue if n not in NOT_BY_DEFAULT]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {', '.join(catalogue)}")
    if names[0] != "exact":
        names = ["exact", *[n for n in names if n != "exact"]]
    image_size = int(manifest.architecture["image_size"])
    inputs, what = _inputs(args, image_size)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    latent, context_channels, side = latent_geometry(manifest.architecture)
    model = (
        "CPDM release architecture, random weights"
        if args.weights is None
        else f"model {manifest.model_id} from {args.weights}"
    )
    print(
        f"{model}: {image_size}x{image_size}, latent {latent}x{side}x{side}, output {manifest.output_units}; "
        f"device {device} ({name}), torch {torch.__version__}"
    )
    print(f"input: {what}")
    print(
        f"study: {args.slices} slices x {args.total_steps} steps (model default {schedule.sample_step}, "
        f"eta {schedule.eta:g}; measured with eta {args.eta:g}); "
        f"UNet timed over {args.steps_measured} calls after 1 warm-up; CPU batch default {cpu_batch_size(side)}"
    )
    facts: dict[str, Any] = {
        "model": model,
        "model_id": manifest.model_id,
        "weights": None if args.weights is None else str(args.weights),
        "image_size": image_size,
        "latent": [latent, side, side],
        "context_channels": context_channels,
        "output_units": manifest.output_units,
        "output_range": manifest.pet_scaling.scale,
        "model_steps": schedule.sample_step,
        "model_eta": schedule.eta,
        "input": what,
        "device": str(device),
        "device_type": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": None if cuda else cpu_matmul_gflops(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    reference: dict[str, Any] = {}
    rows = []
    for path in names:
        rows.append(run_path(path, catalogue[path], args, device, inputs, reference))
        print(f"  measured {path}", flush=True)
    facts["flops_per_slice"], facts["flops_per_step"] = (float(v) for v in reference["flops"])
    report(rows, facts, args)
    if args.json is not None:
        args.json.write_text(json.dumps(_finite({"facts": facts, "rows": rows}), indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except Ct2PetError as exc:
        sys.exit(f"error: {exc}")

"""Speed and memory of the full-size CPDM release architecture (random weights).

Measures, per precision and batch size: seconds per slice per sampling step
(the UNet), VQGAN encode and decode seconds per slice, the guide maps
(segmentation + attenuation + conditioners) per slice, and slices per second
for a whole translation of ``--total-steps`` sampling steps. The whole
translation is EXTRAPOLATED from the measured parts (guide maps + encode +
decode + timesteps x UNet step) unless ``--full-run`` runs it for real.

Run: ``python benchmarks/engine.py --device cpu --batch-sizes 1,2 --steps-measured 2``
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ct2pet_node.engine.networks import RELEASE_CONFIG, VQGAN, SegmentationUNet, SpatialRescaler, UNet
from ct2pet_node.engine.networks.segmentation import SegmentationArchitecture
from ct2pet_node.engine.pipeline import Pipeline, resolve_device
from ct2pet_node.engine.weights import RELEASE_CALIBRATION, WeightsManifest, release_normalisation


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return [_plain(v) for v in tree]
    return tree


def release_pipeline(device: torch.device, precision: str | None, batch_size: int) -> Pipeline:
    """The release architecture at full size with seeded random weights, as a Pipeline."""
    torch.manual_seed(0)
    config = _plain(RELEASE_CONFIG)
    seg = config["segmentation"]
    cond = config["CondStageParams"]
    networks = {
        "vqgan": VQGAN.from_config(config["VQGAN"]),
        "unet": UNet.from_config(config["UNetParams"]),
        "cond_attention": SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
        "cond_attenuation": SpatialRescaler(cond["n_stages"], cond["in_channels"], cond["out_channels"]),
        "segmentation": SegmentationUNet(
            SegmentationArchitecture(
                in_channels=seg["in_channels"],
                classes=seg["classes"],
                block="basic",
                layers=(3, 4, 6, 3),
                decoder_channels=tuple(seg["decoder_channels"]),
                head_kernel=3,
            )
        ),
    }
    for net in networks.values():
        net.eval().requires_grad_(False)
    architecture = {
        "image_size": config["image_size"],
        "vqgan": config["VQGAN"],
        "unet": config["UNetParams"],
        "cond_stage": cond,
        "segmentation": seg,
        "bridge": {"num_timesteps": 1000, "mt_type": "linear", "eta": 0.0, "sample_step": 200},
    }
    manifest = WeightsManifest(
        format_version=1,
        model_id="benchmark-random",
        architecture=architecture,
        normalisation=release_normalisation(),
        output_units="relative",
        calibration=RELEASE_CALIBRATION,
        files={},
    )
    return Pipeline(manifest, networks, device, precision, batch_size)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(
    pipe: Pipeline, batch: int, steps_measured: int, total_steps: int, full_run: bool
) -> dict[str, Any]:
    """One row of the table: per-slice seconds of each part and slices per second overall."""
    device, size = pipe.device, pipe.image_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(1)
    ct01 = torch.rand(batch, 1, size, size, generator=gen).to(device)
    latent = size // 4
    x = torch.randn(batch, 3, latent, latent, generator=gen).to(device)
    context = torch.randn(batch, 6, latent, latent, generator=gen).to(device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    with torch.inference_mode():
        guide = _timed(
            lambda: pipe.context(pipe.attention_map(ct01), pipe.attenuation_map(ct01, 140.0)), device, 1
        )
        encode = _timed(lambda: pipe.encode(ct01), device, 1)
        decode = _timed(lambda: pipe.decode(x), device, 1)
        step = _timed(lambda: pipe.denoise(x, t, context), device, steps_measured)
    evaluations = len(pipe.schedule.timesteps(total_steps))
    whole = guide + encode + decode + evaluations * step
    row = {
        "precision": pipe.precision or "float32",
        "batch": batch,
        "unet_s_per_slice_step": step / batch,
        "encode_s_per_slice": encode / batch,
        "decode_s_per_slice": decode / batch,
        "guide_s_per_slice": guide / batch,
        "evaluations": evaluations,
        "slices_per_s": batch / whole,
        "how": "extrapolated",
    }
    if full_run:
        hu = np.random.default_rng(2).uniform(-1000, 1500, (batch, size, size)).astype(np.float32)
        pipe.batch_size = batch
        start = time.perf_counter()
        pipe(hu, steps=total_steps, eta=0.0, seed=0)
        row["slices_per_s"] = batch / (time.perf_counter() - start)
        row["how"] = "measured"
    row["peak_mib"] = _peak_memory_mib(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma list; default 1,2 on CPU, 1,4,8,16 on CUDA"
    )
    parser.add_argument("--steps-measured", type=int, default=None, help="UNet calls timed (CPU 2, CUDA 10)")
    parser.add_argument("--total-steps", type=int, default=200, help="sampling steps of a whole translation")
    parser.add_argument("--precisions", default=None, help="comma list; default float32 (+bfloat16 on CUDA)")
    parser.add_argument(
        "--full-run", action="store_true", help="run whole translations instead of extrapolating"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batches = [int(b) for b in (args.batch_sizes or ("1,4,8,16" if cuda else "1,2")).split(",")]
    steps_measured = args.steps_measured or (10 if cuda else 2)
    precisions = (args.precisions or ("float32,bfloat16" if cuda else "float32")).split(",")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"CPDM release architecture, random weights, 256x256 slices, device {device} ({name})")
    print(f"torch {torch.__version__}; UNet timed over {steps_measured} calls after 1 warm-up")
    header = (
        f"{'precision':>9} {'batch':>5} {'unet s/slice/step':>17} {'encode s/slice':>14} "
        f"{'decode s/slice':>14} {'guides s/slice':>14} {'evals':>5} {'slices/s':>9} "
        f"{'how':>12} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for precision in precisions:
        pipe = release_pipeline(device, None if precision == "float32" else precision, max(batches))
        for batch in batches:
            r = measure(pipe, batch, steps_measured, args.total_steps, args.full_run)
            print(
                f"{r['precision']:>9} {r['batch']:>5} {r['unet_s_per_slice_step']:>17.4f} "
                f"{r['encode_s_per_slice']:>14.4f} {r['decode_s_per_slice']:>14.4f} "
                f"{r['guide_s_per_slice']:>14.4f} {r['evaluations']:>5} {r['slices_per_s']:>9.4f} "
                f"{r['how']:>12} {r['peak_mib']:>9.0f}"
            )
    print(
        f"'evals' = UNet evaluations of a {args.total_steps}-step translation (the release's linear "
        "skip schedule adds the two end steps). 'extrapolated' = guides + encode + decode + evals x UNet "
        "step; pass --full-run to measure whole translations. CPU peak = process max RSS (monotonic)."
    )


if __name__ == "__main__":
    main()

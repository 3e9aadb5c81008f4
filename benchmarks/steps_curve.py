"""Quality against sampling steps: MAE (SUV), PSNR and SSIM of one model at several step counts and etas.

The held-out CT/PET pair is prepared once by the code of ``ct2pet-node
evaluate`` (:func:`ct2pet_node.training.evaluation_pair.load_evaluation_pair`: the
dataset builder pairs the DICOM series at the model's size, then slices A:B in
position order are kept, with the builder's body mask); the model is loaded
once; then :func:`ct2pet_node.training.evaluate.score` runs the pipeline for
every (steps, eta, seed) on the same inputs. The figures are those of the
model card and ``metrics.json`` (means over slices; definitions in
``ct2pet_node/training/metrics.py``). As in ``evaluate``, the noise of study
slice i derives from (seed, i), as the node seeds it, so seed 0 at the
weights' own steps and eta reproduces ``metrics.json``.

With eta > 0 the sampler draws noise: every seed is a run, and the table shows
the mean over seeds with its [min, max]. With eta 0 the sampler is
deterministic, so it runs once (the first seed). The HU-lookup baseline saved
beside the weights is evaluated once (the dashed line). Seconds are the
pipeline call alone; s/slice grows with the network evaluations (the linear
schedule visits S + 2 timesteps for S steps).

Writes into --out: ``steps_curve.json`` (every figure, the command, model id,
slices, torch version, seconds), ``steps_curve.md`` (the table) and
``steps_curve.png`` (MAE, SSIM, PSNR against steps on a log axis; Pillow).

Run (the issue's figures): ``python benchmarks/steps_curve.py --seeds 0,1,2``
Tiny check: ``python benchmarks/steps_curve.py --slices 130:132 --steps 4,3 --out /tmp/sc``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

TABLE = (  # metric, column heading, format
    ("mae_suv", "MAE (SUV)", "{:.4f}"),
    ("psnr_db", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("suv_mean_error", "SUVmean err", "{:+.3f}"),
    ("suv_max_error", "SUVmax err", "{:+.3f}"),
)
PANELS = (("mae_suv", "MAE (SUV), lower is better"), ("ssim", "SSIM"), ("psnr_db", "PSNR (dB)"))


def default_sample_dir() -> Path:
    """The test suite's sample: ``$CT2PET_SAMPLE_DIR`` or ``~/.cache/ct2pet-node/ctpet-sample``."""
    explicit = os.environ.get("CT2PET_SAMPLE_DIR")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "ct2pet-node" / "ctpet-sample"


def _numbers(text: str, kind: type, name: str) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sys.exit(f"{name} {text!r} must be a comma list of numbers, e.g. {name} 200,100,50")
    if not values or any(v < 0 for v in values):
        sys.exit(f"{name} {text!r} must name at least one number, none negative")
    return values


def plan(steps: Sequence[int], etas: Sequence[float], seeds: Sequence[int]) -> list[tuple[int, float, int]]:
    """Every (steps, eta, seed) run, eta by eta; eta 0 is deterministic, so only the first seed."""
    return [(s, e, seed) for e in etas for s in steps for seed in (seeds if e > 0 else seeds[:1])]


def aggregate(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One curve point per (steps, eta): mean, min, max and std over its seeds of every mean metric."""
    groups: dict[tuple[int, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["steps"], run["eta"]), []).append(run)
    points = []
    for (steps, eta), group in groups.items():
        point: dict[str, Any] = {
            "steps": steps,
            "eta": eta,
            "seeds": [r["seed"] for r in group],
            "seconds_per_slice": float(np.mean([r["seconds_per_slice"] for r in group])),
        }
        for stat in ("mean", "min", "max", "std"):
            point[stat] = {}
        for name in group[0]["mean"]:
            values = [r["mean"][name] for r in group if r["mean"][name] is not None]
            point["mean"][name] = float(np.mean(values)) if values else None
            point["min"][name] = float(np.min(values)) if values else None
            point["max"][name] = float(np.max(values)) if values else None
            point["std"][name] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        points.append(point)
    return points


def _cell(fmt: str, value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None:
        return "n/a"
    text = fmt.format(value)
    if low is not None and high is not None and low != high:
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def markdown(report: Mapping[str, Any]) -> str:
    """The table: one row per (steps, eta), [min, max] over seeds when several, then the baseline."""
    first, stop = report["slices"]
    lines = [
        f"# Sampling steps: model `{report['model_id']}`",
        "",
        f"Held-out slices {first}:{stop} ({stop - first} slices) of study `{report['study']}` at "
        f"{report['image_size']}x{report['image_size']}; means over slices as in `metrics.json` "
        "(definitions: `ct2pet_node/training/metrics.py`). eta > 0: mean over seeds "
        f"{report['seeds']} with [min, max]; eta 0 is deterministic (one run). "
        f"s/slice: pipeline only, {report['device']}, torch {report['torch']}. The weights' own "
        f"default: {report['weights_default']['steps']} steps, eta {report['weights_default']['eta']:g}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| steps | eta | " + " | ".join(h for _, h, _ in TABLE) + " | s/slice |",
        "| ---: | ---: | " + " | ".join("---:" for _ in TABLE) + " | ---: |",
    ]
    for p in report["curve"]:
        cells = [_cell(fmt, p["mean"][m], p["min"][m], p["max"][m]) for m, _, fmt in TABLE]
        lines.append(
            f"| {p['steps']} | {p['eta']:g} | " + " | ".join(cells) + f" | {p['seconds_per_slice']:.2f} |"
        )
    if report["baseline"] is not None:
        cells = [_cell(fmt, report["baseline"][m]) for m, _, fmt in TABLE]
        lines.append("| HU lookup | - | " + " | ".join(cells) + " | - |")
    return "\n".join(lines) + "\n"


# --- the chart (ct2pet_node.training.charts: Pillow only) -----------------------------------------
def draw_chart(report: Mapping[str, Any], path: Path) -> Path:
    """Three panels (MAE, SSIM, PSNR against steps), one line per eta, baseline dashed; a PNG at ``path``."""
    from ct2pet_node.training.charts import Reference, Series, compose, line_chart

    curve = report["curve"]
    etas = list(dict.fromkeys(p["eta"] for p in curve))
    steps = sorted({p["steps"] for p in curve})
    baseline = report["baseline"] or {}
    panels = []
    for metric, title in PANELS:
        series = []
        for eta in etas:
            line = sorted((p for p in curve if p["eta"] == eta and p["mean"][metric] is not None), key=_steps)
            values = {stat: tuple(p[stat][metric] for p in line) for stat in ("mean", "min", "max")}
            series.append(
                Series(tuple(_steps(p) for p in line), values["mean"], values["min"], values["max"])
            )
        reference = None if baseline.get(metric) is None else Reference("HU baseline", baseline[metric])
        panels.append(
            line_chart(
                series,
                title=title,
                x_label="sampling steps (log scale)",
                log_x=True,
                x_ticks=steps,
                reference=reference,
            )
        )
    labels = []
    for eta in etas:
        seeds = len(next(p["seeds"] for p in curve if p["eta"] == eta))
        labels.append(f"eta {eta:g}" + (f" (mean of {seeds} seeds, bar min-max)" if seeds > 1 else ""))
    first, stop = report["slices"]
    chart = compose(
        panels,
        title=f"{report['model_id']}: held-out slices {first}:{stop}, means over slices",
        labels=labels,
        reference_label=None if report["baseline"] is None else "HU-lookup baseline",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(path)
    return path


def _steps(point: Mapping[str, Any]) -> int:
    return int(point["steps"])


# --- the measurement -------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every run and curve point, and the baseline, as written to ``steps_curve.json``."""
    import torch

    from ct2pet_node.engine import load_pipeline
    from ct2pet_node.errors import WeightsError
    from ct2pet_node.training.baseline import load_baseline
    from ct2pet_node.training.evaluate import score
    from ct2pet_node.training.evaluation_pair import load_evaluation_pair

    started = time.monotonic()
    pair = load_evaluation_pair(args.weights, args.ct, args.pet, args.slices)
    hu, indices = pair.hu, pair.indices
    print(f"held-out pair ready: slices {indices[0]}:{indices[-1] + 1}, {time.monotonic() - started:.1f} s")
    pipeline = load_pipeline(args.weights, device=args.device)
    evaluations = {s: len(pipeline.schedule.timesteps(s)) for s in args.steps}  # refuses bad counts early
    tick = time.perf_counter()
    # The first call pays one-off costs (kernel selection, allocations) no configuration should carry.
    pipeline(hu, steps=min(args.steps), eta=0.0, seed=0)
    print(f"warm-up run at {min(args.steps)} steps: {time.perf_counter() - tick:.1f} s (not counted)")
    try:
        baseline = pair.summarise(load_baseline(args.weights).predict(hu))["mean"]
    except WeightsError as exc:
        print(f"no HU-lookup baseline: {exc}")
        baseline = None
    runs = []
    todo = plan(args.steps, args.etas, args.seeds)
    for n, (steps, eta, seed) in enumerate(todo, 1):
        print(f"[{n}/{len(todo)}] steps {steps} eta {eta:g} seed {seed} ...", end=" ", flush=True)
        scored = score(pipeline, pair, steps=steps, eta=eta, seed=seed)
        seconds, mean = scored["seconds"], scored["mean"]
        runs.append(
            {
                "steps": steps,
                "eta": eta,
                "seed": seed,
                "network_evaluations": evaluations[steps],
                "seconds": round(seconds, 3),
                "seconds_per_slice": seconds / hu.shape[0],
                "mean": mean,
                "volume": scored["volume"],
            }
        )
        print(
            f"MAE {mean['mae_suv']} SUV, PSNR {mean['psnr_db']} dB, SSIM {mean['ssim']}; "
            f"{seconds:.1f} s ({seconds / hu.shape[0]:.2f} s/slice)",
            flush=True,
        )
    return {
        "command": shlex.join(["python", *sys.argv]),
        "model_id": pipeline.model_id,
        "weights": str(args.weights),
        "study": pair.study,
        "slices": [indices[0], indices[-1] + 1],
        "image_size": pipeline.image_size,
        "data_range_suv": pair.data_range,
        "weights_default": {"steps": pipeline.default_steps, "eta": pipeline.schedule.eta},
        "steps": args.steps,
        "etas": args.etas,
        "seeds": args.seeds,
        "torch": torch.__version__,
        "device": f"{pipeline.device} ({torch.get_num_threads()} threads)"
        if pipeline.device.type == "cpu"
        else f"{pipeline.device} ({torch.cuda.get_device_name(pipeline.device)})",
        "definitions": "ct2pet_node/training/metrics.py; means over slices as in metrics.json",
        "baseline": baseline,
        "curve": aggregate(runs),
        "runs": runs,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample = default_sample_dir()
    parser.add_argument("--weights", type=Path, default=Path("weights/demo"), help="weights folder")
    parser.add_argument(
        "--ct", type=Path, default=sample / "CT", help="CT series folder (default: the sample)"
    )
    parser.add_argument(
        "--pet", type=Path, default=sample / "PT", help="PET series folder (default: the sample)"
    )
    parser.add_argument("--slices", default="120:160", help="held-out CT slices A:B in position order")
    parser.add_argument("--steps", default="200,100,50,20,10", help="comma list of sampling steps")
    parser.add_argument("--etas", default="1,0", help="comma list of etas (noise scales)")
    parser.add_argument("--seeds", default="0", help="comma list of noise seeds (used when eta > 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("docs/steps-curve"), help="output folder")
    args = parser.parse_args()
    # The engine's info events would interleave with the progress lines; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    args.steps = _numbers(args.steps, int, "--steps")
    args.etas = _numbers(args.etas, float, "--etas")
    args.seeds = _numbers(args.seeds, int, "--seeds")
    for folder in (args.ct, args.pet):
        if not folder.is_dir():
            sys.exit(
                f"{folder} is not a folder: pass --ct DIR --pet DIR, or set CT2PET_SAMPLE_DIR to a folder "
                "holding CT/ and PT/ (the test suite unpacks the shared sample to ~/.cache/ct2pet-node/ctpet-sample)"
            )
    from ct2pet_node.errors import Ct2PetError

    try:
        report = measure(args)
    except Ct2PetError as exc:
        sys.exit(f"steps_curve: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps_curve.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (args.out / "steps_curve.md").write_text(markdown(report), encoding="utf-8")
    draw_chart(report, args.out / "steps_curve.png")
    print(markdown(report))
    print(
        f"wrote {args.out}/steps_curve.json, steps_curve.md, steps_curve.png ({report['seconds']} s in all)"
    )


if __name__ == "__main__":
    main()

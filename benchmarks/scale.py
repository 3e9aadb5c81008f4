"""Throughput of the Ray backend against its number of actors: studies per hour, slices per second, efficiency.

For each actor count N (``--actors 1,2,4``) the script starts a Ray head in
this process on loopback (``ray.init``, N CPUs, no dashboard), has the node's
own :class:`~ct2pet_node.cluster.translator.RayTranslator` start its driver
and N actors against it, warms every actor up with one chunk (loading the
pipeline and its first call are not counted), then times ``--studies``
studies, ``--jobs-in-flight`` of them at once, each spread over the actors in
chunks of ``--chunk`` slices as the engine worker spreads a job. The study is
a CT series turned into the model's grid as the worker does it: the shared
sample's first ``--slices`` slices when present, else a synthetic series from
tests/ctfactory.py. Speed-up is against the smallest N measured, per-actor
efficiency is speed-up / (N / smallest N); per-actor slices per second are
the node's own ``ct2pet_cluster_slices_per_second`` (its ClusterSnapshot).

Writes into --out (default: a new temporary folder): ``scale.json`` (every
figure, the command, host, CPU count), ``scale.md`` (the table) and
``scale.png`` (slices per second beside the ideal line, and efficiency,
against actors; Pillow, as the other benchmarks' charts).

Run: ``python benchmarks/scale.py --actors 1,2 --out docs/scale-cpu`` (CPU actors; a GPU host:
``--gpus-per-actor 1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import structlog

REPO_ROOT = Path(__file__).resolve().parents[1]
# Measure the checkout this script lives in, here and in the Ray workers (they inherit PYTHONPATH),
# not whichever ct2pet-node happens to be installed.
sys.path.insert(0, str(REPO_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
COLUMNS = (  # key, heading, format
    ("actors", "actors", "{:d}"),
    ("seconds_per_study", "s / study", "{:.1f}"),
    ("studies_per_hour", "studies / h", "{:.1f}"),
    ("slices_per_second", "slices / s", "{:.2f}"),
    ("speedup", "speed-up", "{:.2f}x"),
    ("efficiency", "efficiency", "{:.0%}"),
)


# --- the pure parts (tests/unit/benchmarks/test_scale.py) ------------------------------------------
def parse_actors(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4], sorted and without repeats; exits with a message on anything else."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sys.exit(f"--actors {text!r} must be a comma list of whole numbers, e.g. --actors 1,2,4")
    if not counts or counts[0] < 1:
        sys.exit(f"--actors {text!r} must name at least one actor count, each 1 or more")
    return counts


def scaling(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each point with its speed-up over the fewest actors measured and its per-actor efficiency.

    A point has ``actors``, ``studies``, ``slices_per_study`` and ``seconds``
    (wall time for all its studies). Efficiency is speed-up divided by the
    growth in actors: 100 % means every added actor was worth a whole one.
    """
    if not points:
        return []
    ordered = sorted(points, key=lambda point: int(point["actors"]))
    rates = [point["studies"] / point["seconds"] for point in ordered]
    base_actors, base_rate = int(ordered[0]["actors"]), rates[0]
    scaled = []
    for point, rate in zip(ordered, rates, strict=True):
        speedup = rate / base_rate
        scaled.append(
            {
                **point,
                "seconds_per_study": point["seconds"] / point["studies"],
                "studies_per_hour": rate * 3600.0,
                "slices_per_second": rate * point["slices_per_study"],
                "speedup": speedup,
                "efficiency": speedup / (int(point["actors"]) / base_actors),
            }
        )
    return scaled


def markdown(report: Mapping[str, Any]) -> str:
    """The table of ``report["points"]`` (from :func:`scaling`), under a line saying what was measured."""
    study = report["study"]
    lines = [
        f"{report['model_id']} on {report['machine']}: studies of {study['slices']} slices "
        f"({study['chunks']} chunks of {study['chunk_slices']}), {report['steps']} steps, "
        f"{report['studies']} studies per point, {report['jobs_in_flight']} in flight",
        "",
        "| " + " | ".join(heading for _, heading, _ in COLUMNS) + " | per-actor slices / s |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for point in report["points"]:
        cells = [fmt.format(point[key]) for key, _, fmt in COLUMNS]
        per_actor = ", ".join(f"{rate:.2f}" for rate in point.get("actor_slices_per_second", ()))
        lines.append("| " + " | ".join(cells) + f" | {per_actor or '–'} |")
    return "\n".join(lines) + "\n"


def draw_chart(report: Mapping[str, Any], path: Path) -> Path:
    """Two panels against actors: slices per second beside the ideal line, and per-actor efficiency."""
    from ct2pet_node.training.charts import Series, compose, line_chart

    points = report["points"]
    actors = tuple(float(point["actors"]) for point in points)
    measured = tuple(float(point["slices_per_second"]) for point in points)
    base = points[0]
    ideal = tuple(base["slices_per_second"] * n / base["actors"] for n in actors)
    efficiency = tuple(100.0 * point["efficiency"] for point in points)
    panels = [
        line_chart(
            [Series(actors, measured), Series(actors, ideal)],
            title="slices per second",
            x_label="actors",
            x_ticks=actors,
        ),
        line_chart([Series(actors, efficiency)], title="efficiency (%)", x_label="actors", x_ticks=actors),
    ]
    study = report["study"]
    chart = compose(
        panels,
        title=f"Ray backend on {report['machine']}: {study['slices']}-slice studies, {report['steps']} steps",
        labels=["measured", "ideal (linear from the fewest actors)"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(path)
    return path


# --- the measurement -------------------------------------------------------------------------------
def load_study(config: Any, sample_ct: Path, slices: int, work: Path) -> tuple[np.ndarray, str]:
    """The study's region on the model's grid (z, S, S) in HU, as the worker builds it, and where it came from."""
    from ct2pet_node.dicom.headers import read_slice_header
    from ct2pet_node.dicom.volume import build_ct_volume
    from ct2pet_node.engine.weights import load_manifest
    from ct2pet_node.routing.qualify import qualify_series
    from ct2pet_node.service.synthesis import map_to_model

    if sample_ct.is_dir():
        paths, source = sorted(sample_ct.rglob("*.dcm")), f"the shared sample's CT ({sample_ct})"
    else:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from ctfactory import make_ct_series

        paths, source = (
            make_ct_series(work / "ct", n=slices, rows=128, cols=128),
            "a synthetic series (ctfactory)",
        )
    ct = build_ct_volume(qualify_series([read_slice_header(path) for path in paths], config.routing))
    mapping = map_to_model(ct, load_manifest(config.engine.weights_dir).frame)
    region = mapping.to_region(ct.hu)[:slices]
    return np.ascontiguousarray(region, dtype=np.float32), source


def measure_point(config: Any, region: np.ndarray, args: argparse.Namespace, actors: int) -> dict[str, Any]:
    """Start a head and ``actors`` actors, warm them up, then time ``args.studies`` studies."""
    import ray

    from ct2pet_node.cluster.translator import RayTranslator

    ray.init(
        # A head of our own even where another Ray cluster runs on this machine, with its own
        # session folder (short: Ray's socket paths must fit 107 bytes).
        address="local",
        _temp_dir=tempfile.mkdtemp(prefix="ct2scale-", dir="/tmp"),
        num_cpus=max(1, round(actors * args.cpus_per_actor)),
        num_gpus=actors * args.gpus_per_actor or None,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    address = ray.get_runtime_context().gcs_address
    engine = config.engine
    ray_settings = dataclasses.replace(engine.ray, address=address, actors=actors)
    translator = RayTranslator(
        dataclasses.replace(config, engine=dataclasses.replace(engine, ray=ray_settings))
    )
    try:
        deadline = time.monotonic() + 600
        while not (translator.ready() and translator.state == "ready"):
            if translator.state == "refused" or time.monotonic() > deadline:
                sys.exit(f"scale: the cluster did not come up: {translator.cluster_status(0)}")
            time.sleep(0.5)
        chunk = args.chunk
        chunks = [
            range(start, min(start + chunk, region.shape[0])) for start in range(0, region.shape[0], chunk)
        ]
        sampling = {"kvp": 120.0, "steps": args.steps, "eta": None, "seed": 0}
        # One chunk per actor, not counted: each actor's first call pays one-off costs.
        for _ in translator.translate_chunks(region[: chunk * actors], chunks[:actors], **sampling):
            pass

        def one_study(_: int) -> int:
            return sum(len(done) for done, _ in translator.translate_chunks(region, chunks, **sampling))

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs_in_flight) as pool:
            translated = sum(pool.map(one_study, range(args.studies)))
        seconds = time.perf_counter() - started
        snapshot = translator.cluster_snapshot(time.time())
        assert translated == args.studies * region.shape[0], "a study came back incomplete"
        return {
            "actors": actors,
            "studies": args.studies,
            "slices_per_study": int(region.shape[0]),
            "seconds": round(seconds, 3),
            "devices": sorted({actor.device for actor in snapshot.actors}),
            "actor_slices_per_second": [actor.slices_per_second for actor in snapshot.actors],
            "chunk_retries": snapshot.chunk_retries,
        }
    finally:
        translator.close()
        ray.shutdown()


def build_config(args: argparse.Namespace, work: Path) -> Any:
    from ct2pet_node.config import load_config

    config = load_config()
    engine = dataclasses.replace(
        config.engine,
        weights=str(args.weights.resolve()),
        device="cpu",
        steps=args.steps,
        threads=args.threads,
        backend="ray",
        ray=dataclasses.replace(
            config.engine.ray,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            namespace="ct2pet-scale",
        ),
    )
    return dataclasses.replace(config, engine=engine, node=dataclasses.replace(config.node, data_dir=work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample = Path(
        os.environ.get("CT2PET_SAMPLE_DIR") or Path.home() / ".cache" / "ct2pet-node" / "ctpet-sample"
    )
    parser.add_argument("--actors", default="1,2,4", help="comma list of actor counts")
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights" / "demo", help="weights folder")
    parser.add_argument("--ct", type=Path, default=sample / "CT", help="CT series folder (else synthetic)")
    parser.add_argument("--slices", type=int, default=32, help="slices per study")
    parser.add_argument("--chunk", type=int, default=8, help="slices per chunk (the node's is 16)")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps (few: the figures are relative)")
    parser.add_argument("--studies", type=int, default=2, help="studies timed per actor count")
    parser.add_argument("--jobs-in-flight", type=int, default=1, help="studies translated at once")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor (CPU)")
    parser.add_argument("--machine", default=None, help="how the report names this machine")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary one)")
    args = parser.parse_args()
    counts = parse_actors(args.actors)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = args.out or Path(tempfile.mkdtemp(prefix="ct2pet-scale-"))
    work = Path(tempfile.mkdtemp(prefix="ct2pet-scale-work-"))
    config = build_config(args, work)
    region, source = load_study(config, args.ct, args.slices, work)
    print(f"study: {region.shape[0]} slices of {region.shape[1]}x{region.shape[2]} from {source}", flush=True)
    points = []
    for actors in counts:
        print(f"{actors} actors ...", end=" ", flush=True)
        point = measure_point(config, region, args, actors)
        print(f"{point['seconds']:.1f} s for {args.studies} studies", flush=True)
        points.append(point)
    from ct2pet_node.engine.weights import load_manifest

    chunks = -(-region.shape[0] // args.chunk)
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": args.machine or f"{socket.gethostname()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "cpu_count": os.cpu_count(),
        "model_id": load_manifest(config.engine.weights_dir).model_id,
        "study": {
            "source": source,
            "slices": int(region.shape[0]),
            "chunk_slices": args.chunk,
            "chunks": chunks,
        },
        "steps": args.steps,
        "studies": args.studies,
        "jobs_in_flight": args.jobs_in_flight,
        "points": scaling(points),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "scale.md").write_text(markdown(report), encoding="utf-8")
    draw_chart(report, out / "scale.png")
    print(markdown(report))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

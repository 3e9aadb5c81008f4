"""Load: eight senders each push a whole-body CT series at once while the engine is busy.

Starts Orthanc and the node (tiny reference model, few steps, secondary
capture output) in a private network namespace, makes the engine busy with
a first series, then ``--senders`` threads each send their own copy of the
shared sample's CT series (fresh Study/Series/SOP Instance UIDs per copy,
rewritten with pydicom into a temporary folder) over their own association.
Prints ingest and end-to-end instances per second, the node's peak RSS
(VmHWM) and the deepest queues sampled from ``/status``; exits 1 when an
instance is not acknowledged, a job is not DONE or an output series is not
at Orthanc whole and once, 2 when it cannot run here.

Run: ``python benchmarks/load.py [--senders 8] [--slices 247] [--steps 3] [--max-seconds 1200]``
(``--source factory`` sends 64x64 series made by code instead of the sample;
the short form runs in CI: ``tests/integration/test_load.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import _unpacked_sample  # noqa: E402
from ctfactory import make_ct_series  # noqa: E402
from soak.harness import environment_problem, import_tiny_weights  # noqa: E402
from soak.load import copy_with_new_uids, run_load  # noqa: E402

from ct2pet_node.logging_setup import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders (default 8)")
    parser.add_argument("--slices", type=int, default=0, help="slices per series; 0: the whole sample (247)")
    parser.add_argument("--source", choices=("sample", "factory"), default="sample")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps of the tiny model (default 3)")
    parser.add_argument("--max-seconds", type=float, default=1200, help="bound on the whole run")
    args = parser.parse_args(argv)
    if reason := environment_problem():
        print(f"cannot run the load benchmark here: {reason}", file=sys.stderr)
        return 2
    sample_ct: list[Path] = []
    if args.source == "sample":
        sample = _unpacked_sample()
        if sample is None:
            print("the shared sample is missing: set CT2PET_SAMPLE_DIR", file=sys.stderr)
            return 2
        sample_ct = sorted((sample / "CT").glob("*"))
        sample_ct = sample_ct[: args.slices] if args.slices else sample_ct

    def series(directory: Path, tag: str) -> list[Path]:
        if args.source == "sample":
            return copy_with_new_uids(sample_ct, directory, tag)
        n = args.slices or 247
        return make_ct_series(directory, n=n, name=f"load-{tag}", images_in_acquisition=n)

    configure_logging("warning", False)  # our own SCU's per-batch lines would drown the summary
    with tempfile.TemporaryDirectory(prefix="ct2pet-load-") as scratch:
        weights = import_tiny_weights(Path(scratch) / "weights")
        report = run_load(
            weights=weights,
            work=Path(scratch) / "run",
            senders=args.senders,
            series_maker=series,
            max_seconds=args.max_seconds,
            steps=args.steps,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    print(report.summary())
    for violation in report.violations():
        print(f"VIOLATION: {violation}")
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())

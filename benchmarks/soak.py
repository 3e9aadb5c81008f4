"""The kill soak: SIGKILL the node at random moments while series arrive, translate and leave.

Starts Orthanc and the node (tiny reference model, few steps) in a private
network namespace, pushes ``--series`` CT series of ``--slices`` slices with
our storage SCU (which knows exactly which instances were acknowledged),
kills the node ``--kills`` times with SIGKILL, restarting it each time, then
lets it drain and checks: nothing acknowledged lost, every finished series
at Orthanc exactly once (distinct SOP Instance UIDs per output series), no
job stuck or failed, no crash. Prints a summary; exits 1 on any violation,
2 when it cannot run here. Needs root (network namespaces), Orthanc, and the
CPDM reference (``../shared/reference/cpdm-tiny`` or ``$CT2PET_SHARED_DIR``).

Run: ``python benchmarks/soak.py --kills 20 --seed 7 --series 12 --slices 40 --max-seconds 900``
(the short form runs in CI: ``tests/soak/test_soak.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from soak.campaign import run_soak  # noqa: E402
from soak.harness import environment_problem, import_tiny_weights  # noqa: E402

from ct2pet_node.logging_setup import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for batch sizes and kill moments")
    parser.add_argument("--series", type=int, default=12, help="CT series to send (default 12)")
    parser.add_argument("--slices", type=int, default=40, help="slices per series (default 40)")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps of the tiny model (default 3)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900,
        help="bound on the whole run; 70%% for kills, the rest to drain",
    )
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (logs, stores)")
    args = parser.parse_args(argv)
    if reason := environment_problem():
        print(f"cannot run the soak here: {reason}", file=sys.stderr)
        return 2
    configure_logging("warning", False)  # our own SCU's per-batch lines would drown the summary
    with tempfile.TemporaryDirectory(prefix="ct2pet-soak-") as scratch:
        work = args.keep or Path(scratch)
        weights = import_tiny_weights(Path(scratch) / "weights")
        report = run_soak(
            weights=weights,
            work=work / "run",
            kills=args.kills,
            seed=args.seed,
            series=args.series,
            slices=args.slices,
            max_seconds=args.max_seconds,
            steps=args.steps,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    print(report.summary())
    for violation in report.violations():
        print(f"VIOLATION: {violation}")
    if report.kills < args.kills:
        print(
            f"VIOLATION: only {report.kills} of {args.kills} kills fit in --max-seconds {args.max_seconds:g}"
        )
        return 1
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())

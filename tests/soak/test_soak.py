"""The kill soak, short form for CI: a few SIGKILLs while small series arrive, translate and leave.

The long form is ``python benchmarks/soak.py --kills 20`` (see docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .campaign import PHASES, run_soak
from .harness import environment_problem

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(
    tiny_weights: Path, tmp_path: Path
) -> None:
    if reason := environment_problem():
        pytest.skip(reason)
    report = run_soak(
        weights=tiny_weights, work=tmp_path, kills=4, seed=1, series=3, slices=12, max_seconds=150, say=print
    )
    print("\n" + report.summary())
    assert report.violations() == []
    assert report.kills == 4
    # The kills landed while work was under way, not only on an idle node.
    assert sum(report.kills_by_phase[phase] for phase in PHASES) >= 3
    assert report.series_done == 3 and report.acknowledged == 3 * 12

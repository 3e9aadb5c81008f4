"""Load, short form for CI: eight senders push a 20-slice series each, at once, while the engine is busy.

The long form (eight copies of the shared 247-slice sample) is ``python benchmarks/load.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ctfactory import make_ct_series
from soak.harness import environment_problem
from soak.load import run_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENDERS = 8
SLICES = 20


def test_eight_concurrent_senders_are_all_acknowledged_processed_and_delivered_once(
    tiny_weights: Path, tmp_path: Path
) -> None:
    if reason := environment_problem():
        pytest.skip(reason)

    def series(directory: Path, tag: str) -> list[Path]:
        return make_ct_series(directory, n=SLICES, name=f"load-{tag}", images_in_acquisition=SLICES)

    report = run_load(
        weights=tiny_weights, work=tmp_path, senders=SENDERS, series_maker=series, max_seconds=150, say=print
    )
    print("\n" + report.summary())
    assert report.violations() == []
    assert report.acknowledged == SENDERS * SLICES
    assert report.status_samples > 0
    # Bounded: the engine queue holds job ids only, at most one per series; memory stays that of one node.
    assert report.max_engine_queue <= SENDERS + 1
    assert 0 < report.peak_rss_mib < 2048

"""Line charts for reports: tick choice, value range, where points and the reference line land."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ct2pet_node.errors import InputError
from ct2pet_node.training.charts import (
    COLOURS,
    GREY,
    PANEL_SIZE,
    PLOT_BOX,
    Reference,
    Series,
    compose,
    line_chart,
    nice_ticks,
    y_range,
)

LEFT, TOP, RIGHT, BOTTOM = PLOT_BOX


def _columns_of(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    return np.nonzero(np.all(pixels == colour, axis=-1))[1]


def test_ticks_are_round_and_inside_the_range() -> None:
    assert nice_ticks(0.0883, 0.0906) == pytest.approx([0.0885, 0.089, 0.0895, 0.09, 0.0905])
    assert nice_ticks(0.0, 10.0) == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])


def test_far_reference_stays_off_the_axis_and_near_one_on_it() -> None:
    low, high = y_range([0.090, 0.095], reference=0.13)
    assert high < 0.13
    low, high = y_range([0.090, 0.095], reference=0.099)
    assert low < 0.090 and high > 0.099


def test_a_point_lands_at_its_log_or_linear_position() -> None:
    point = [Series((100.0,), (2.0,))]
    log_chart = line_chart(point, title="t", x_label="x", log_x=True, x_ticks=(10, 100, 1000))
    assert log_chart.size == PANEL_SIZE
    # 100 is halfway between 10 and 1000 on a log axis, so mid-box.
    assert _columns_of(log_chart, COLOURS[0]).mean() == pytest.approx((LEFT + RIGHT) / 2, abs=1)
    linear = line_chart(point, title="t", x_label="x", x_ticks=(10, 100, 1000))
    assert _columns_of(linear, COLOURS[0]).mean() < LEFT + (RIGHT - LEFT) / 5


def test_bars_span_low_to_high_and_each_series_has_its_colour() -> None:
    series = [
        Series((10.0, 20.0), (1.0, 2.0), low=(0.0, 2.0), high=(3.0, 2.0)),
        Series((10.0, 20.0), (1.5, 1.5)),
    ]
    image = line_chart(series, title="t", x_label="x")
    pixels = np.asarray(image)
    rows = np.nonzero(np.all(pixels == COLOURS[0], axis=-1))[0]
    # Bars cover the whole value range, 0 to 3, i.e. nearly the whole box height.
    assert rows.max() - rows.min() > 0.8 * (BOTTOM - TOP)
    assert _columns_of(image, COLOURS[1]).size > 0


def _grey_in_row_band(image: Image.Image, y: int, x0: int, x1: int) -> int:
    band = np.asarray(image)[y - 1 : y + 2, x0:x1]
    return int(np.all(band == GREY, axis=-1).sum())


def test_near_reference_is_dashed_across_and_far_one_is_a_stub_at_the_edge() -> None:
    series = [Series((10.0, 20.0), (1.0, 1.1))]
    near = Reference("baseline", 1.2)
    image = line_chart(series, title="t", x_label="x", reference=near)
    low, high = y_range([1.0, 1.1], 1.2)
    y = round(BOTTOM - (1.2 - low) / (high - low) * (BOTTOM - TOP))
    assert _grey_in_row_band(image, y, LEFT, RIGHT - 40) > 100
    far = line_chart(series, title="t", x_label="x", reference=Reference("baseline", 5.0))
    top_edge = TOP + 6  # off scale above: drawn at the top of the box
    assert _grey_in_row_band(far, top_edge, LEFT, RIGHT - 31) == 0
    assert _grey_in_row_band(far, top_edge, RIGHT - 30, RIGHT) > 10


def test_series_must_be_whole_and_log_x_positive() -> None:
    with pytest.raises(InputError, match="x, y and both bar ends"):
        Series((1.0, 2.0), (1.0,))
    with pytest.raises(InputError, match="x, y and both bar ends"):
        Series((1.0,), (1.0,), low=(0.5,))
    with pytest.raises(InputError, match="must be positive"):
        line_chart([Series((0.0, 1.0), (1.0, 2.0))], title="t", x_label="x", log_x=True)
    with pytest.raises(InputError, match="no x values"):
        line_chart([Series((), ())], title="t", x_label="x")


def test_compose_puts_panels_in_a_row_with_a_legend() -> None:
    panel = line_chart([Series((1.0, 2.0), (1.0, 2.0))], title="t", x_label="x")
    chart = compose([panel, panel], title="both", labels=["eta 1", "eta 0"], reference_label="baseline")
    assert chart.size == (2 * PANEL_SIZE[0], 30 + PANEL_SIZE[1] + 30)
    legend = np.asarray(chart)[30 + PANEL_SIZE[1] :]
    for colour in (COLOURS[0], COLOURS[1], GREY):
        assert np.all(legend == colour, axis=-1).any()

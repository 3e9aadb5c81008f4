"""Small line charts for reports (Pillow only: matplotlib is not a dependency, and one renderer keeps PNGs identical).

A chart is one panel of ``PANEL_SIZE`` pixels: one or more series (markers
joined by a line, optional min-max bars), an optional dashed reference line
(e.g. a baseline), x linear or logarithmic. :func:`compose` lays panels out
in a row under a title, with one legend for all of them. Series ``i`` has the
same colour and marker in every panel (``COLOURS[i]``; circles for even
``i``, squares for odd), so the legend is given by position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ct2pet_node.errors import InputError

RGB = tuple[int, int, int]
PANEL_SIZE = (400, 300)
PLOT_BOX = (66, 34, 386, 250)  # left, top, right, bottom of the axes inside a panel, pixels
COLOURS: tuple[RGB, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
GREY: RGB = (110, 110, 110)
LIGHT: RGB = (225, 225, 225)
BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)
LOG_MARGIN = 0.12  # decades left free at either end of a log x axis


@dataclass(frozen=True, slots=True)
class Series:
    """One line: values ``y`` at ``x``, with optional bars from ``low`` to ``high`` (e.g. min-max over seeds).

    All sequences have the same length; a series may be empty (it keeps its
    colour slot). ``x`` must be positive on a log axis.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        lengths = {len(self.x), len(self.y)} | {len(b) for b in (self.low, self.high) if b is not None}
        if len(lengths) != 1 or (self.low is None) != (self.high is None):
            raise InputError(
                f"chart series with {len(self.x)} x and {len(self.y)} y values (bars: low "
                f"{self.low is not None}, high {self.high is not None}): give x, y and both bar ends "
                "for every point"
            )

    def extent(self) -> list[float]:
        """The values the y axis must show: the bar ends where there are bars, else ``y``."""
        if self.low is None or self.high is None:
            return list(self.y)
        return [*self.low, *self.high]


@dataclass(frozen=True, slots=True)
class Reference:
    """A horizontal dashed line at ``value``, labelled ``"{label} {value:.4g}"``."""

    label: str
    value: float


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels, or its small bitmap font where sizes are unsupported."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or without FreeType
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 x 10^k apart) covering [low, high]."""
    span = (high - low) or abs(high) or 1.0
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    ticks, value = [], math.ceil(low / step) * step
    while value <= high + 1e-9 * span:
        ticks.append(round(value, 12))
        value += step
    return ticks


def y_range(values: Sequence[float], reference: float | None) -> tuple[float, float]:
    """Value range of a panel: the values, padded; the reference too when it is near (within 2 spans).

    A far reference would squash the differences the chart is read for; it is
    then drawn at the panel's edge and labelled off scale.
    """
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = high - low
    if reference is not None and low - 2 * span <= reference <= high + 2 * span:
        low, high = min(low, reference), max(high, reference)
    # At least 1 % of the level: noise alone should not fill the panel.
    pad = max((high - low) * 0.08, abs(high + low) * 0.005, 1e-6)
    return low - pad, high + pad


def _decimals(ticks: Sequence[float]) -> int:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0
    return max(0, -math.floor(math.log10(step)))


def _dashed(draw: ImageDraw.ImageDraw, y: float, x0: float, x1: float, colour: RGB) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + 7, x1), y)], fill=colour, width=2)
        x += 12


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, colour: RGB, square: bool) -> None:
    box = [x - 3.5, y - 3.5, x + 3.5, y + 3.5]
    (draw.rectangle if square else draw.ellipse)(box, fill=colour)


def _x_scale(xs: Sequence[float], log_x: bool) -> Callable[[float], float]:
    """Data x -> pixel x across ``PLOT_BOX``, with a margin at either end."""
    left, _, right, _ = PLOT_BOX
    if log_x:
        if min(xs) <= 0:
            raise InputError(f"log x axis with x values {sorted(xs)}: all must be positive")
        lo, hi = math.log10(min(xs)) - LOG_MARGIN, math.log10(max(xs)) + LOG_MARGIN
        return lambda x: left + (math.log10(x) - lo) / (hi - lo) * (right - left)
    pad = (max(xs) - min(xs)) * 0.06 or 1.0
    lo, hi = min(xs) - pad, max(xs) + pad
    return lambda x: left + (x - lo) / (hi - lo) * (right - left)


def _series(
    draw: ImageDraw.ImageDraw,
    series: Series,
    to_x: Callable[[float], float],
    to_y: Callable[[float], float],
    colour: RGB,
    dodge: float,
    square: bool,
) -> None:
    """One line, its bars (where low != high) and markers, ``dodge`` pixels sideways."""
    xy = [(to_x(x) + dodge, to_y(y)) for x, y in zip(series.x, series.y, strict=True)]
    if len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
    bars = zip(series.low or series.y, series.high or series.y, strict=True)
    for (x, y), (low, high) in zip(xy, bars, strict=True):
        if low != high:
            y0, y1 = to_y(low), to_y(high)
            draw.line([(x, y0), (x, y1)], fill=colour, width=1)
            draw.line([(x - 4, y0), (x + 4, y0)], fill=colour)
            draw.line([(x - 4, y1), (x + 4, y1)], fill=colour)
        _marker(draw, x, y, colour, square)


def _reference(draw: ImageDraw.ImageDraw, reference: Reference, y: float, low: float, high: float) -> None:
    """The dashed line across the panel, or, off scale, a labelled dashed stub at the near edge."""
    left, top, right, bottom = PLOT_BOX
    value = reference.value
    where = "above" if value > high else "below" if value < low else ""
    y = min(max(y, top + 6), bottom - 6)
    _dashed(draw, y, right - 30 if where else left + 1, right - 4, GREY)
    text = f"{reference.label} {value:.4g}" + (f", off scale ({where})" if where else "")
    under = y < top + 20  # near the top a label above the line would run into the title
    x = right - 36 if where else right - 4
    draw.text((x, y + 4 if under else y - 3), text, fill=GREY, font=font(11), anchor="rt" if under else "rb")


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    log_x: bool = False,
    x_ticks: Sequence[float] | None = None,
    reference: Reference | None = None,
) -> Image.Image:
    """One ``PANEL_SIZE`` RGB panel: the series, y gridlines with round ticks, x ticks, the reference.

    Parameters
    ----------
    series : sequence of Series
        Drawn in order; series ``i`` gets ``COLOURS[i % len(COLOURS)]`` and is
        shifted ``4 * (i - (len(series) - 1) / 2)`` pixels sideways, so that
        equal values of two series both stay visible.
    x_ticks : sequence of float, optional
        Where the x axis is labelled (``{:g}``); default every x of any series.
        They also set the x extent.
    reference : Reference, optional
        Kept on the y axis only when near the series (see :func:`y_range`).
    """
    ticks_x = sorted(set(x_ticks if x_ticks is not None else (x for s in series for x in s.x)))
    if not ticks_x:
        raise InputError(f"chart {title!r} has no x values: give at least one point or x_ticks")
    image = Image.new("RGB", PANEL_SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = PLOT_BOX
    low, high = y_range(
        [v for s in series for v in s.extent()], None if reference is None else reference.value
    )
    to_x = _x_scale(ticks_x, log_x)

    def to_y(value: float) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    small = font(12)
    ticks_y = nice_ticks(low, high)
    for tick in ticks_y:
        y = to_y(tick)
        draw.line([(left, y), (right, y)], fill=LIGHT)
        draw.text((left - 6, y), f"{tick:.{_decimals(ticks_y)}f}", fill=BLACK, font=small, anchor="rm")
    for tick in ticks_x:
        x = to_x(tick)
        draw.line([(x, bottom), (x, bottom + 4)], fill=BLACK)
        draw.text((x, bottom + 6), f"{tick:g}", fill=BLACK, font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=BLACK)
    if reference is not None:
        _reference(draw, reference, to_y(reference.value), low, high)
    for i, line in enumerate(series):
        dodge = 4.0 * (i - (len(series) - 1) / 2)
        _series(draw, line, to_x, to_y, COLOURS[i % len(COLOURS)], dodge, square=i % 2 == 1)
    draw.text(((left + right) / 2, top - 8), title, fill=BLACK, font=font(14), anchor="mb")
    draw.text(((left + right) / 2, bottom + 24), x_label, fill=BLACK, font=small, anchor="mt")
    return image


def compose(
    panels: Sequence[Image.Image], *, title: str, labels: Sequence[str], reference_label: str | None = None
) -> Image.Image:
    """Panels side by side under ``title``, with a legend: ``labels[i]`` names series ``i``.

    ``reference_label``, when given, adds a dashed grey entry for the reference line.
    """
    header, legend_height = 30, 30
    width = PANEL_SIZE[0] * len(panels)
    chart = Image.new("RGB", (width, header + PANEL_SIZE[1] + legend_height), WHITE)
    for i, panel in enumerate(panels):
        chart.paste(panel, (i * PANEL_SIZE[0], header))
    draw = ImageDraw.Draw(chart)
    draw.text((width / 2, 8), title, fill=BLACK, font=font(15), anchor="mt")
    entries = [(COLOURS[i % len(COLOURS)], text, False) for i, text in enumerate(labels)]
    if reference_label is not None:
        entries.append((GREY, reference_label, True))
    x, y, legend_font = 40.0, header + PANEL_SIZE[1] + legend_height / 2, font(13)
    for i, (colour, text, dashed) in enumerate(entries):
        if dashed:
            _dashed(draw, y, x, x + 28, colour)
        else:
            draw.line([(x, y), (x + 28, y)], fill=colour, width=2)
            _marker(draw, x + 14, y, colour, square=i % 2 == 1)
        draw.text((x + 36, y), text, fill=BLACK, font=legend_font, anchor="lm")
        x += 36 + draw.textlength(text, font=legend_font) + 30
    return chart

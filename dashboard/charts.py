"""Server-rendered SVG charts: line charts of series over time and bar charts.

Pure functions from numbers and labels to an SVG document. The dashboard
serves them as `image/svg+xml` and pages show them with `<img>`, so the
strict CSP (no inline style or script) holds and nothing is marked safe:
colours are presentation attributes, never `style=`, and every label (a job,
project or node name) is XML-escaped here, with the characters XML 1.0
cannot carry removed. No JavaScript, no library, works offline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# Colour-blind-safe palette (Okabe & Ito), one colour per series in turn.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
FONT = "system-ui, sans-serif"
# XML 1.0 allows TAB, LF, CR and U+0020 on, but no surrogates, U+FFFE or U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_LABEL = 60


@dataclass(frozen=True)
class Tick:
    """A labelled position on the x axis, in the series' x units."""

    x: float
    label: str


def text(value: str) -> str:
    """Untrusted text as SVG character data."""
    return escape(_NOT_XML.sub("", value)[:MAX_LABEL])


def attr(value: str) -> str:
    """Untrusted text as a quoted SVG attribute value."""
    return quoteattr(_NOT_XML.sub("", value)[:MAX_LABEL])


def _document(title: str, width: int, height: int, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label={attr(title)} '
        f'font-family="{FONT}" font-size="11">',
        f"<title>{text(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="16" font-size="13" font-weight="600" fill="#1d232a">{text(title)}</text>',
        *body,
        "</svg>",
    ])


def nice_max(value: float) -> float:
    """A round axis top at or above value (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 5, 10):
        if value <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
               x_ticks: Sequence[Tick], x_range: tuple[float, float],
               y_format: Callable[[float], str], y_max: float | None = None,
               integer: bool = False, dots: bool = True, width: int = 720, height: int = 260,
               empty: str = "no data in this window") -> str:
    """Each series as a polyline (with a dot per point unless `dots` is False: a dense
    series), a legend, and four y intervals labelled by y_format (whole numbers
    each when `integer`: counts)."""
    left, right, top, bottom = 56, 170, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [y for points in series.values() for _, y in points]
    top_y = y_max if y_max is not None else 4 * nice_max(max(values, default=0.0) / 4)
    if integer:
        top_y = 4 * max(1.0, math.ceil(top_y / 4))
    x0, x1 = x_range
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return round(left + (x - x0) / span * plot_w, 1)

    def py(y: float) -> float:
        return round(top + plot_h - (y / top_y) * plot_h, 1)

    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f6f8fa" '
            f'stroke="#d9dee3"/>']
    for i in range(5):
        y = top_y * i / 4
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y)}" y2="{py(y)}" '
                    f'stroke="#d9dee3"/>')
        body.append(f'<text x="{left - 4}" y="{py(y) + 4}" text-anchor="end" '
                    f'fill="#68717c">{text(y_format(y))}</text>')
    for tick in x_ticks:
        body.append(f'<text x="{px(tick.x)}" y="{top + plot_h + 16}" text-anchor="middle" '
                    f'fill="#68717c">{text(tick.label)}</text>')
    if not values:
        body.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                    f'text-anchor="middle" fill="#68717c">{text(empty)}</text>')
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in points)
        body.append(f'<g class="series" data-series={attr(name)}>')
        if len(points) > 1:
            body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                        f'stroke-width="2"/>')
        for x, y in points if dots else ():
            body.append(f'<circle cx="{px(x)}" cy="{py(y)}" r="2.5" fill="{colour}">'
                        f"<title>{text(name)}: {text(y_format(y))}</title></circle>")
        legend_y = top + 12 + index * 16
        body.append(f'<rect x="{width - right + 12}" y="{legend_y - 8}" width="10" height="10" '
                    f'fill="{colour}"/>')
        body.append(f'<text x="{width - right + 28}" y="{legend_y + 1}" '
                    f'fill="#1d232a">{text(name)}</text>')
        body.append("</g>")
    return _document(title, width, height, body)


def bar_chart(title: str, bars: Sequence[tuple[str, float, float]], *,
              value_format: Callable[[float], str], width: int = 720,
              empty: str = "no data in this window") -> str:
    """Horizontal bars: (label, total, part) — the part drawn over the total in red."""
    row, left, top = 22, 170, 28
    height = top + max(1, len(bars)) * row + 12
    plot_w = width - left - 80
    top_value = nice_max(max((total for _, total, _ in bars), default=0.0))
    body = []
    if not bars:
        body.append(f'<text x="{width / 2}" y="{top + 14}" text-anchor="middle" '
                    f'fill="#68717c">{text(empty)}</text>')
    for i, (label, total, part) in enumerate(bars):
        y = top + i * row
        total_w = round(total / top_value * plot_w, 1)
        part_w = round(part / top_value * plot_w, 1)
        body.append(f'<g class="bar" data-label={attr(label)}>')
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" '
                    f'fill="#1d232a">{text(label)}</text>')
        body.append(f'<rect x="{left}" y="{y + 3}" width="{total_w}" height="15" '
                    f'fill="#b8d4ee"/>')
        body.append(f'<rect x="{left}" y="{y + 3}" width="{part_w}" height="15" '
                    f'fill="#d55e00"/>')
        body.append(f'<text x="{left + total_w + 6}" y="{y + 14}" '
                    f'fill="#68717c">{text(value_format(part))} / {text(value_format(total))}'
                    f"</text>")
        body.append("</g>")
    return _document(title, width, height, body)

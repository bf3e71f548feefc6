"""dashboard/charts.py: SVG documents that are well-formed whatever the labels say."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dashboard.charts import Tick, bar_chart, line_chart, nice_max

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = 'job <script>alert("x")</script> & \x00\x1b 名前 \ufffe'


def parse(document: str) -> ET.Element:
    return ET.fromstring(document)  # noqa: S314 - our own output; must be well-formed


def test_labels_are_escaped_and_what_xml_cannot_carry_is_dropped() -> None:
    document = line_chart(HOSTILE, {HOSTILE: [(0.0, 1.0), (1.0, 2.0)]},
                          x_ticks=[Tick(0.0, HOSTILE)], x_range=(0.0, 1.0),
                          y_format=lambda v: f"{v:.0f}")
    root = parse(document)
    texts = [e.text for e in root.iter(f"{SVG}text")]
    clean = 'job <script>alert("x")</script> &  名前 '
    assert clean in texts  # the legend reads as the name, minus NUL, ESC and U+FFFE
    assert root.find(f"{SVG}title").text == clean  # type: ignore[union-attr]
    assert list(root.iter(f"{SVG}script")) == []  # text, never an element
    assert [g.get("data-series") for g in root.iter(f"{SVG}g")] == [clean]
    assert not [e for e in root.iter() if "style" in e.attrib]


def test_line_chart_scales_points_into_the_plot() -> None:
    root = parse(line_chart("t", {"a": [(0.0, 0.0), (10.0, 1.0)]}, x_ticks=[],
                            x_range=(0.0, 10.0), y_format=str, y_max=1.0, width=300,
                            height=200))
    line = next(root.iter(f"{SVG}polyline"))
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in
                          line.get("points", "").split())
    assert x0 < x1 and y0 > y1  # left to right, upwards
    assert (x0, y0) == (56.0, 200 - 34)  # the plot's bottom left corner


def test_empty_charts_say_so() -> None:
    for document in (line_chart("t", {}, x_ticks=[], x_range=(0.0, 1.0), y_format=str),
                     bar_chart("t", [], value_format=str)):
        assert "no data in this window" in [e.text for e in parse(document).iter(f"{SVG}text")]


def test_bar_chart_draws_the_part_over_the_total() -> None:
    root = parse(bar_chart("nodes", [("hv-1", 4.0, 1.0), (HOSTILE, 2.0, 2.0)],
                           value_format=lambda v: f"{v:.0f}"))
    widths = [float(r.get("width", "0")) for r in root.iter(f"{SVG}rect")][1:]  # not the page
    assert widths[0] == 4 * widths[1] and widths[2] == widths[3]


def test_nice_max() -> None:
    assert [nice_max(v) for v in (0, 0.3, 1, 3, 7, 11, 4500)] == [1, 0.5, 1, 5, 10, 20, 5000]

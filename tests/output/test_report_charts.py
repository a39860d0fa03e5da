"""Tests of greenmeter.output.charts: well-formed, safe, deterministic SVG, and the energy arithmetic."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from greenmeter._errors import ConfigError
from greenmeter.output.charts import (
    ChartPoint,
    LatencyBar,
    cumulative_energy,
    epoch_energy_svg,
    latency_svg,
    metric_energy_svg,
    power_timeline_svg,
)

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
SCRIPT = "<script>alert(1)</script>"

POINTS = [
    ChartPoint("baseline fp32", 0.912, 0.0120, 0.0110, 0.0130, on_front=True, is_baseline=True),
    ChartPoint(SCRIPT, 0.905, 0.0060, 0.0055, 0.0065, on_front=True, recommended=True),
    ChartPoint("$x$ pruned", 0.850, 0.0090),
]
BARS = [LatencyBar("baseline fp32", 0.010, 0.012, 0.020), LatencyBar("int8 $x$", 0.005, 0.007, 0.009),
        LatencyBar(SCRIPT, 0.004, 0.004, 0.006)]
SERIES = {"cpu": [(2.0, 0.0), (0.0, 0.0), (1.0, 2.0)],  # out of order on purpose
          "_gpu": [(1.0, 1.0), (3.0, 1.0)]}
EPOCHS = [("epoch 1", 100.0), ("epoch 2", 120.0), ("epoch 3", 90.5)]

RENDER = {
    "metric": lambda: metric_energy_svg(POINTS),
    "latency": lambda: latency_svg(BARS),
    "timeline": lambda: power_timeline_svg(SERIES),
    "epochs": lambda: epoch_energy_svg(EPOCHS),
}
NAMES = {
    "metric": [p.name for p in POINTS],
    "latency": [b.name for b in BARS],
    "timeline": list(SERIES),
    "epochs": [label for label, _ in EPOCHS],
}


@pytest.fixture(scope="module")
def svgs() -> dict[str, str]:
    return {kind: render() for kind, render in RENDER.items()}


def _texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(el.itertext()) for el in root.iter(f"{{{SVG_NS}}}text")]


def test_importing_report_charts_does_not_load_matplotlib() -> None:
    code = "import sys, greenmeter.output.charts; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("kind", list(RENDER))
def test_svg_is_an_inlineable_scalable_accessible_svg_element(svgs: dict[str, str], kind: str) -> None:
    svg = svgs[kind]
    assert svg.startswith("<svg ")  # no XML declaration, no DOCTYPE
    assert "<!DOCTYPE" not in svg and "<?xml" not in svg
    root = ET.fromstring(svg)
    assert root.tag == f"{{{SVG_NS}}}svg"
    box = [float(v) for v in root.attrib["viewBox"].split()]
    assert len(box) == 4 and box[:2] == [0.0, 0.0] and box[2] > 300 and box[3] > 200
    assert root.attrib["width"] == "100%" and "height" not in root.attrib
    assert root.attrib["role"] == "img"
    title = root[0]
    assert title.tag == f"{{{SVG_NS}}}title" and title.text == root.attrib["aria-label"]
    assert title.text.startswith("Chart: ")
    # matplotlib's page-wide `*{...}` style rule is gone; its defaults sit on the root instead
    assert "<style" not in svg and root.attrib["stroke-linejoin"] == "round"


@pytest.mark.parametrize("kind", list(RENDER))
def test_every_name_is_drawn_literally_as_text(svgs: dict[str, str], kind: str) -> None:
    texts = _texts(svgs[kind])
    for name in NAMES[kind]:
        assert name in texts, f"{name!r} not drawn in the {kind} chart"


@pytest.mark.parametrize("kind", list(RENDER))
def test_rendering_is_deterministic(svgs: dict[str, str], kind: str) -> None:
    assert RENDER[kind]() == svgs[kind]


def test_rendering_is_identical_in_another_process(svgs: dict[str, str]) -> None:
    code = ("import hashlib, tests.output.test_report_charts as t; "
            "print(*(hashlib.sha256(r().encode()).hexdigest() for r in t.RENDER.values()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
    assert out.split() == [hashlib.sha256(svgs[k].encode()).hexdigest() for k in RENDER]


@pytest.mark.parametrize("kind", ["metric", "latency"])
def test_user_strings_are_escaped_and_not_mathtext(svgs: dict[str, str], kind: str) -> None:
    svg = svgs[kind]
    assert "<script" not in svg.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    texts = _texts(svg)
    assert SCRIPT in texts
    dollar = next(n for n in NAMES[kind] if "$x$" in n)
    assert dollar in texts  # drawn with its dollars, not as italic mathtext "x"
    assert "x" not in texts


@pytest.mark.parametrize("kind", list(RENDER))
def test_no_external_references(svgs: dict[str, str], kind: str) -> None:
    svg = svgs[kind]
    assert set(re.findall(r"https?://[^\"'\s)]*", svg)) <= {SVG_NS, XLINK_NS}
    assert "<image" not in svg and "@import" not in svg and "<script" not in svg
    assert all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', svg))
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", svg))


@pytest.mark.parametrize("kind", list(RENDER))
def test_ids_are_unique_prefixed_and_every_reference_resolves(svgs: dict[str, str], kind: str) -> None:
    root = ET.fromstring(svgs[kind])
    ids = [el.attrib["id"] for el in root.iter() if "id" in el.attrib]
    assert ids and len(ids) == len(set(ids))
    prefix = ids[0].split("-")[0] + "-"
    assert all(i.startswith(prefix) for i in ids)
    refs = set(re.findall(r'href="#([^"]+)"', svgs[kind])) | set(re.findall(r"url\(#([^)]+)\)", svgs[kind]))
    assert refs and refs <= set(ids)
    others = {el.attrib["id"] for k, s in svgs.items() if k != kind
              for el in ET.fromstring(s).iter() if "id" in el.attrib}
    assert not set(ids) & others  # several charts can share one HTML page


def test_metric_chart_labels_axes_and_legend(svgs: dict[str, str]) -> None:
    texts = _texts(svgs["metric"])
    assert {"energy per sample (mJ)", "accuracy (%)", "Pareto front", "not on the front", "baseline (square)",
            "recommended (ringed)"} <= set(texts)
    assert ET.fromstring(svgs["metric"]).attrib["aria-label"] == (
        "Chart: accuracy (%) against energy per sample (mJ) for 3 variants")


def _label_xy(svg: str, names: list[str]) -> dict[str, tuple[float, float]]:
    """The (x, y) of each named <text> element: its anchor in SVG units (points), y growing downwards."""
    root = ET.fromstring(svg)
    return {"".join(el.itertext()): (float(el.attrib["x"]), float(el.attrib["y"]))
            for el in root.iter(f"{{{SVG_NS}}}text") if "".join(el.itertext()) in names}


def _data_markers(svg: str) -> list[tuple[float, float]]:
    """The (x, y) of every marker drawn for a data point: <use> elements outside ticks and the legend."""
    out: list[tuple[float, float]] = []

    def walk(el: ET.Element) -> None:
        if re.search(r"-(xtick|ytick|legend)_\d+$", el.attrib.get("id", "")):
            return
        if el.tag == f"{{{SVG_NS}}}use":
            out.append((float(el.attrib["x"]), float(el.attrib["y"])))
        for child in el:
            walk(child)

    walk(ET.fromstring(svg))
    return out


@pytest.mark.parametrize("energies", [(0.0002382, 0.0002382, 0.0002382), (0.0002382, 0.0002381, 0.0002383)],
                         ids=["coincident", "nearly-coincident"])
def test_metric_chart_stacks_the_names_of_coincident_points(energies: tuple[float, ...]) -> None:
    names = ["prune:0.5", "int8-dynamic", "fp16"]
    points = [ChartPoint(n, 0.9733, e) for n, e in zip(names, energies, strict=True)]
    svg = metric_energy_svg([*points, ChartPoint("fp32", 0.99, 0.0009, on_front=True)])
    where = _label_xy(svg, names)
    assert sorted(where) == sorted(names)
    ys = sorted(y for _, y in where.values())
    assert all(b - a >= 9 for a, b in itertools.pairwise(ys))  # 9 pt text: one line apart at least
    assert max(x for x, _ in where.values()) - min(x for x, _ in where.values()) < 1  # one column
    assert "stroke: #808080" in svg  # the moved names have leader lines to their point
    assert metric_energy_svg([*points, ChartPoint("fp32", 0.99, 0.0009, on_front=True)]) == svg


def test_metric_chart_keeps_separate_names_next_to_their_points() -> None:
    points = [ChartPoint("a", 0.90, 0.001), ChartPoint("b", 0.95, 0.004), ChartPoint("c", 0.92, 0.008)]
    svg = metric_energy_svg(points)
    markers = _data_markers(svg)
    assert len(markers) == len(points)
    for name, (x, y) in _label_xy(svg, ["a", "b", "c"]).items():
        mx, my = min(markers, key=lambda m: math.dist(m, (x, y)))
        assert (x - mx, my - y) == (pytest.approx(8, abs=0.01), pytest.approx(5, abs=0.01)), name
    assert "stroke: #808080" not in svg  # no leader lines


def test_metric_chart_legend_lists_only_present_kinds() -> None:
    svg = metric_energy_svg([ChartPoint("a", 0.5, 0.001), ChartPoint("b", 0.6, 0.002)], "F1 <score>", 1.0)
    texts = _texts(svg)
    assert "not on the front" in texts and "F1 <score>" in texts
    assert not {"Pareto front", "baseline (square)", "recommended (ringed)"} & set(texts)
    assert 'aria-label="Chart: F1 &lt;score&gt; against' in svg


def test_latency_chart_draws_three_bars_per_variant(svgs: dict[str, str]) -> None:
    svg = svgs["latency"]
    n = len(BARS)
    assert svg.count("fill: #56b4e9") == n + 1  # p50 bars + legend swatch
    assert svg.count("fill: #0072b2") == n + 1  # p95
    assert {"p50", "p95", "p99", "latency per batch (ms)"} <= set(_texts(svg))


def test_epoch_chart_draws_one_bar_per_epoch_with_values(svgs: dict[str, str]) -> None:
    svg = svgs["epochs"]
    assert svg.count("fill: #0072b2") == len(EPOCHS)
    assert {"100", "120", "90.5", "energy (J)"} <= set(_texts(svg))
    assert ET.fromstring(svg).attrib["aria-label"] == "Chart: energy per epoch (J) for 3 epochs, total 310.5 J"


def test_epoch_chart_thins_labels_when_there_are_many() -> None:
    svg = epoch_energy_svg([(f"e{i}", 1.0 + i) for i in range(60)])
    texts = set(_texts(svg))
    assert svg.count("fill: #0072b2") == 60
    assert {f"e{i}" for i in range(0, 60, 2)} <= texts and not {f"e{i}" for i in range(1, 60, 2)} & texts
    assert "1" not in texts  # no value labels on 60 bars


def test_cumulative_energy_constant_power() -> None:
    assert cumulative_energy([(0.0, 10.0), (1.0, 10.0), (3.0, 10.0)]) == [(0.0, 0.0), (1.0, 10.0), (3.0, 30.0)]


def test_cumulative_energy_ramp_unsorted_and_step() -> None:
    # P(t) = 2t W: E(t) = t^2 J, exact for the trapezoid rule on a linear ramp
    assert cumulative_energy([(2.0, 4.0), (0.0, 0.0), (1.0, 2.0)]) == [(0.0, 0.0), (1.0, 1.0), (2.0, 4.0)]
    # a step from 1 W to 3 W at t = 1 s, written as two points at one time (their order is kept)
    assert cumulative_energy([(0, 1), (1, 1), (1, 3), (2, 3)]) == [(0, 0.0), (1, 1.0), (1, 1.0), (2, 4.0)]
    assert cumulative_energy([(5.0, 7.0)]) == [(5.0, 0.0)]


def test_timeline_total_sums_domains_on_a_common_time_grid() -> None:
    from greenmeter.output.timeline import summed_cumulative as _summed_cumulative

    # cpu: ramp 0 W -> 2 W over [0, 1] s then back to 0 W at 2 s; _gpu: 1 W over [1, 3] s.
    # cpu cumulative: 0, 1, 2 J at t = 0, 1, 2 (then flat); _gpu: 0, 0, 1, 2 J at t = 0, 1, 2, 3.
    ordered = {k: sorted(v) for k, v in SERIES.items()}
    got = _summed_cumulative(ordered)
    assert [t for t, _ in got] == [0.0, 1.0, 2.0, 3.0]
    assert [e for _, e in got] == pytest.approx([0.0, 1.0, 3.0, 4.0])
    # between a domain's own points its power is linear: cpu at 0.5 s is 0.5 * 0.5 * 1 = 0.25 J
    got = _summed_cumulative({"cpu": ordered["cpu"], "tick": [(0.5, 0.0), (0.6, 0.0)]})
    assert got[1] == (0.5, pytest.approx(0.25))


def test_timeline_writes_the_total_energy(svgs: dict[str, str]) -> None:
    texts = _texts(svgs["timeline"])
    assert {"total 4 J", "power (W)", "cumulative energy (J)", "time since start (s)"} <= set(texts)
    assert ET.fromstring(svgs["timeline"]).attrib["aria-label"].endswith("total 4 J")


def test_long_timelines_are_thinned_for_drawing_but_totalled_in_full() -> None:
    from greenmeter.output.timeline import thin as _thin

    line = [(float(i), 5.0 + (95.0 if i == 12_345 else 0.0) - (5.0 if i == 777 else 0.0)) for i in range(30_000)]
    thin = _thin(line)
    assert len(thin) <= 2000 and thin[0] == line[0] and thin[-1] == line[-1]
    assert (12_345.0, 100.0) in thin and (777.0, 0.0) in thin  # the spike and the dip survive
    assert [t for t, _ in thin] == sorted(t for t, _ in thin)
    assert _thin(line[:50]) == line[:50]
    # 3 domains x 30,000 points: a bounded SVG, and the total over every point. Per domain: 5 W for 29,999 s
    # is 149,995 J; the spike adds 2 x 95 / 2 = 95 J and the dip takes 2 x 5 / 2 = 5 J: 150,085 J.
    svg = power_timeline_svg({"a": line, "b": line, "c": line})
    assert len(svg) < 300_000
    assert "total 450,255 J" in _texts(svg)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metric_energy_svg([]), r"metric_energy_svg\(\) needs at least one point"),
        (lambda: metric_energy_svg([ChartPoint("q8", NAN, 1.0)]), r"metric of variant 'q8' must be finite"),
        (lambda: metric_energy_svg([ChartPoint("q8", 0.9, INF)]), r"energy per sample of variant 'q8' must be finite"),
        (lambda: metric_energy_svg([ChartPoint("q8", 0.9, -1.0)]), r"variant 'q8' is negative \(-1.0 J\)"),
        (lambda: metric_energy_svg([ChartPoint("q8", 0.9, 1.0, 0.5)]), r"variant 'q8' needs both bounds or neither"),
        (lambda: metric_energy_svg([ChartPoint("q8", 0.9, 1.0, 1.1, 1.2)]), r"does not contain its mean"),
        (lambda: metric_energy_svg([ChartPoint("q8", 0.9, 1.0, NAN, 1.2)]), r"low bound of variant 'q8' must be"),
        (lambda: metric_energy_svg([ChartPoint("a", 0.9, 1.0)], metric_scale=0), r"metric_scale must be positive"),
        (lambda: metric_energy_svg([("a", 0.9, 1.0)]), r"takes ChartPoint values, got tuple"),
        (lambda: latency_svg([]), r"latency_svg\(\) needs at least one bar"),
        (lambda: latency_svg([LatencyBar("fp16", 0.1, NAN, 0.3)]), r"p95 latency of variant 'fp16' must be finite"),
        (lambda: latency_svg([LatencyBar("fp16", -0.1, 0.2, 0.3)]), r"variant 'fp16' has a negative latency"),
        (lambda: latency_svg([LatencyBar("fp16", 0.3, 0.2, 0.4)]), r"percentiles of variant 'fp16' are out of order"),
        (lambda: power_timeline_svg({}), r"power_timeline_svg\(\) needs at least one domain"),
        (lambda: power_timeline_svg({"gpu": [(0.0, 5.0)]}), r"domain 'gpu' needs at least two .* got 1"),
        (lambda: power_timeline_svg({"gpu": []}), r"domain 'gpu' needs at least one"),
        (lambda: power_timeline_svg({"gpu": [(0, 1), (1, INF)]}), r"a power in domain 'gpu' must be finite"),
        (lambda: power_timeline_svg({"gpu": [(0, 1), (NAN, 1)]}), r"a time in domain 'gpu' must be finite"),
        (lambda: power_timeline_svg({"gpu": [(0, 1), (1, -2)]}), r"domain 'gpu' has a negative power"),
        (lambda: power_timeline_svg({"gpu": [(1, 1), (1, 2)]}), r"domain 'gpu' has all its points at one time"),
        (lambda: power_timeline_svg({"gpu": [(0, 1, 2), (1, 2, 3)]}), r"must be a \(t_s, power_w\) pair"),
        (lambda: epoch_energy_svg([]), r"epoch_energy_svg\(\) needs at least one epoch"),
        (lambda: epoch_energy_svg([("e1", NAN)]), r"energy of epoch 'e1' must be finite"),
        (lambda: epoch_energy_svg([("e1", -3.0)]), r"energy of epoch 'e1' is negative"),
        (lambda: epoch_energy_svg([("e1", "3 J")]), r"energy of epoch 'e1' must be a number"),
        (lambda: cumulative_energy([]), r"cumulative_energy\(\) needs at least one"),
        (lambda: cumulative_energy([(0, 1), (1, NAN)]), r"must be finite"),
    ],
)
def test_bad_input_raises_config_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        call()


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        epoch_energy_svg([])

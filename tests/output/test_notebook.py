"""The notebook views of the records: ``_repr_html_`` and ``_repr_markdown_`` show every energy figure with its
provenance and band, and escape every piece of user text."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import Meter, measure  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.records.comparison import Comparison  # noqa: E402
from greenmeter.records.distributed import RankInfo, RankResult, combine  # noqa: E402
from greenmeter.records.measurement import Measurement  # noqa: E402
from greenmeter.records.run import RunRecord  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

BACKENDS = ["cpu-estimate", "ram-estimate"]
EVIL = '<script>alert("x")</script> | *a* `b`'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; | *a* `b`"


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _band(low: float, high: float, scale: float = 1.0, unit: str = "J") -> str:
    """A band as the views write it (4 significant digits, the unit after)."""
    return f"{low * scale:.4g}-{high * scale:.4g} {unit}"


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Measurement, RunRecord]:
    """A block measured with the CPU and RAM estimates, under a hostile name, stored as a run."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    with measure(EVIL, samples=250, store=path) as window:
        _spin(0.15)
    m = window.measurement
    assert m is not None
    with Store(path, readonly=True) as store:
        run = store.last_run()
    assert run is not None
    return m, run


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    """A real comparison of two variants, one with a hostile name."""
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return compare({"float": model, EVIL: "prune:0.5"}, (x, y), meter=Meter(BACKENDS, sync=None), repeats=3,
                   min_repeat_s=0.05, progress=False)


def test_a_measurement_shows_each_domain_with_its_band_and_provenance(
        measured: tuple[Measurement, RunRecord]) -> None:
    m, _ = measured
    html, md = m._repr_html_(), m._repr_markdown_()
    band = m.energy_band
    assert band is not None and band.low_j < m.energy_j < band.high_j
    for text in (html, md):
        assert "band" in text and _band(band.low_j, band.high_j) in text
        assert f"{m.energy_j:.4g}" in text and "estimated" in text
        for d in m.domains:
            assert d.key in text and f"{d.energy_j:.4g}" in text and d.band is not None
            assert _band(d.band.low_j, d.band.high_j) in text
        assert f"{m.energy_per_sample_j:.4g} J/sample over 250 samples" in text
    # the table has a row per domain and one for the total, each with its band in the "band" column
    rows = re.findall(r"<tr><td>(.*?)</td><td class=\"num\">(.*?)</td><td>(.*?)</td><td>(.*?)</td>", html)
    assert [r[0] for r in rows] == [d.key for d in m.domains] + ["total"]
    assert rows[-1][1:] == (f"{m.energy_j:.4g}", _band(band.low_j, band.high_j) + " (" +
                            band.describe().split(" (")[1], "estimated")
    assert m.domains[0].provenance.source.replace("'", "&#x27;") in html


def test_a_measurement_escapes_its_name_and_error(measured: tuple[Measurement, RunRecord]) -> None:
    m, _ = measured
    failed = replace(m, status="failed", error=EVIL)
    html, md = failed._repr_html_(), failed._repr_markdown_()
    assert "<script>" not in html and html.count(ESCAPED) == 2  # the title and the FAILED note
    assert "<script>" not in md and "&lt;script&gt;" in md and "\\*a\\*" in md and "\\`b\\`" in md
    assert "FAILED: " in html and "(failed)" in html


def test_a_measurement_without_a_band_says_so(measured: tuple[Measurement, RunRecord]) -> None:
    m, _ = measured
    bare = replace(m, domains=tuple(replace(d, band=None) for d in m.domains))
    html = bare._repr_html_()
    assert "band: not stated (cpu-estimate:cpu, ram-estimate:ram states no band)" in html
    assert re.search(r'<td>total</td><td class="num">[^<]+</td><td>-</td>', html)


def test_a_comparison_shows_bands_ratios_provenance_and_its_chart(comparison: Comparison) -> None:
    html, md = comparison._repr_html_(), comparison._repr_markdown_()
    assert "<script>" not in html and "<script>" not in md
    assert html.count("<svg") == 1 and "</svg>" in html  # the metric-energy chart, inline
    assert "band mJ/sample" in html and "band mJ/sample" in md
    for v in comparison.variants:
        assert v.ok and v.energy_band is not None and v.energy_per_sample_j is not None
        band = _band(v.energy_band.low_j, v.energy_band.high_j, 1e3, "mJ")
        mean = f"{v.energy_per_sample_j.mean * 1e3:.3g}"
        for text in (html, md):
            assert band in text and mean in text and "estimated" in text
    delta = comparison.variant(EVIL).vs_baseline
    assert delta is not None and delta.energy_ratio_band is not None
    ratio = f"x{delta.energy_ratio:.2f} [{delta.energy_ratio_band.low:.2f}, {delta.energy_ratio_band.high:.2f}]"
    assert ratio in html and ratio.replace("[", "\\[").replace("]", "\\]") in md
    assert ESCAPED in html and "systematic bound apart from the run-to-run 95% CI" in html
    assert "<svg" not in md  # the short form has no chart
    assert "<svg" not in comparison_html_without_chart(comparison)


def comparison_html_without_chart(comparison: Comparison) -> str:
    from greenmeter.output.notebook import comparison_html

    return comparison_html(comparison, chart=False)


def test_a_failed_variant_shows_its_escaped_error(comparison: Comparison) -> None:
    broken = replace(comparison, variants=(comparison.variants[0],
                                           replace(comparison.variants[1], status="failed", error=EVIL)))
    html = broken._repr_html_()
    assert f">FAILED: {ESCAPED}</td>" in html and "<script>" not in html


def test_a_run_shows_its_facts_and_its_measurement(tmp_path: Path) -> None:
    from greenmeter.metering.runner import run_command

    path = tmp_path / "runs.db"
    spin = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    result = run_command([sys.executable, "-c", spin], meter=Meter(BACKENDS, sync=None), store=path, name=EVIL,
                         interval_s=0.1)
    with Store(path, readonly=True) as store:
        run = store.get_run(result.run_id)
    assert run.measurement is not None
    html, md = run._repr_html_(), run._repr_markdown_()
    band = run.measurement.energy_band
    assert band is not None and band.low_j < run.measurement.energy_j < band.high_j
    for text in (html, md):
        assert run.id[:12] in text and "status ok" in text.replace("</td><td>", " ")
        assert _band(band.low_j, band.high_j) in text and f"{run.measurement.energy_j:.4g}" in text
    assert "<script>" not in html and ESCAPED in html and "<script>" not in md


def test_a_run_without_a_measurement_says_where_its_figures_are(measured: tuple[Measurement, RunRecord]) -> None:
    _, run = measured  # a block of the Python API: its figures are its windows
    assert run.measurement is None and run.status == "ok"
    assert f"its 1 window(s) are in the store, Store.windows(&#x27;{run.id[:12]}&#x27;)" in run._repr_html_()
    running = replace(run, status="running", ended_at=None, command=("python", EVIL))
    html = running._repr_html_()
    assert "<td>incomplete</td>" in html and "the run has not finished" in html and "<script>" not in html
    assert f"<td>python {ESCAPED}</td>" in html


def test_a_distributed_result_shows_each_window_and_node(measured: tuple[Measurement, RunRecord]) -> None:
    m, _ = measured
    ranks = [RankResult(RankInfo(r, 2, r, 2, 0, "host-a"), (replace(m, name="epoch"),)) for r in range(2)]
    result = combine(ranks)
    html, md = result._repr_html_(), result._repr_markdown_()
    w = result.windows[0]
    band = w.measurement.energy_band
    assert band is not None
    for text in (html, md):
        assert "2 ranks on 1 nodes" in text and f"{w.energy_j:.4g}" in text
        assert _band(band.low_j, band.high_j) in text and "estimated" in text
        assert w.nodes[0].node_id in text

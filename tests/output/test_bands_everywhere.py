"""Every output format shows the band of every energy figure it writes: runs, sets of runs and comparisons."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import Meter  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.metering.runner import run_command  # noqa: E402
from greenmeter.output.export import export_runs  # noqa: E402
from greenmeter.output.formats import format_names  # noqa: E402
from greenmeter.output.report import comparison_report, run_report  # noqa: E402
from greenmeter.records.comparison import Comparison  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

BACKENDS = ["cpu-estimate", "ram-estimate"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A command measured by ``greenmeter run``'s runner: one stored run with its whole-run measurement."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    result = run_command([sys.executable, "-c", spin], meter=Meter(BACKENDS, sync=None), store=path, name="spin",
                         interval_s=0.1)
    return path, result.run_id


def _band_texts(low: float, high: float, spec: str = ".4g") -> tuple[str, str]:
    return format(low, spec), format(high, spec)


def test_every_run_format_shows_each_windows_band(stored: tuple[Path, str]) -> None:
    path, run_id = stored
    with Store(path, readonly=True) as store:
        run, windows = store.get_run(run_id), store.windows(run_id)
    bands = [w.energy_band for w in windows]
    assert all(b is not None and b.low_j < b.value_j < b.high_j for b in bands)
    formats = format_names("run")
    assert set(formats) >= {"html", "md", "csv", "json"}
    for fmt in formats:
        text = run_report(run, windows, fmt=fmt)
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [float(r["energy_band_j_low"]) for r in rows] == pytest.approx([b.low_j for b in bands])
            assert [float(r["energy_band_j_high"]) for r in rows] == pytest.approx([b.high_j for b in bands])
        elif fmt == "json":
            data = json.loads(text)
            assert [w["energy_band"]["high_j"] for w in data["windows"]] == pytest.approx([b.high_j for b in bands])
        else:
            for band in bands:
                low, high = _band_texts(band.low_j, band.high_j)
                assert f"{low} – {high}" in text, fmt
            assert run.measurement is not None and run.measurement.energy_band is not None
            assert "how far off the sources could be" in text, fmt


def test_every_runs_export_shows_the_band(stored: tuple[Path, str]) -> None:
    path, run_id = stored
    with Store(path, readonly=True) as store:
        runs = [store.get_run(run_id)]
    band = runs[0].measurement.energy_band  # type: ignore[union-attr]
    assert band is not None
    for fmt in format_names("runs"):
        text = export_runs(runs, fmt)
        if fmt == "json":
            assert json.loads(text)[0]["measurement"]["energy_band"]["low_j"] == pytest.approx(band.low_j)
        elif fmt == "csv":
            row = next(csv.DictReader(io.StringIO(text)))
            assert float(row["energy_band_low_j"]) == pytest.approx(band.low_j)
            assert "CPU estimate" in row["energy_band_basis"]
        elif fmt == "codecarbon":
            row = next(csv.DictReader(io.StringIO(text)))
            pue = float(row["pue"])
            assert float(row["greenmeter_energy_consumed_high"]) == pytest.approx(band.high_j * pue / 3.6e6)
        elif fmt == "model-card":
            assert f"{band.low_j / 3.6e6:.6g}-{band.high_j / 3.6e6:.6g} kWh" in text
        else:  # a format added later must be checked here too
            pytest.fail(f"no band check for the runs format {fmt!r}")


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    torch.manual_seed(0)
    x, y = torch.randn(256, 32), torch.randint(0, 4, (256,))
    big = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))
    small = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    meter = Meter(BACKENDS)
    try:
        # repeats long enough that the baseline's CPU time is well above the 10 ms ticks its band allows for: at
        # 0.05 s a clean-clone CI run once read a band reaching 0 J, and so a ratio band without a high end
        return compare({"big": big, "small": small}, (x, y), meter=meter, repeats=3, min_repeat_s=0.3,
                       progress=False)
    finally:
        meter.close()


def test_every_comparison_format_shows_each_variants_band_and_the_ratios(comparison: Comparison) -> None:
    small = comparison.variant("small")
    band, ratio = small.energy_band, small.vs_baseline.energy_ratio_band  # type: ignore[union-attr]
    assert band is not None and ratio is not None and ratio.shared and math.isfinite(ratio.high), ratio
    for fmt in format_names("comparison"):
        text = comparison_report(comparison, fmt)
        if fmt == "csv":
            row = next(r for r in csv.DictReader(io.StringIO(text)) if r["variant"] == "small")
            assert float(row["energy_band_j_low"]) == pytest.approx(band.low_j)
            assert float(row["energy_ratio_band_high"]) == pytest.approx(ratio.high)
        elif fmt == "json":
            data = json.loads(text)["comparison"]["variants"][1]
            assert data["energy_band"]["high_j"] == pytest.approx(band.high_j)
            assert data["vs_baseline"]["energy_ratio_band"]["low"] == pytest.approx(ratio.low)
        else:
            assert f"{band.low_j * 1e3:.3g} – {band.high_j * 1e3:.3g}" in text, fmt
            assert f"×{ratio.low:.3g} – ×{ratio.high:.3g}" in text, fmt
            assert "its constants cancel in the energy ratio" in text, fmt
    assert "band mJ" in comparison.table()

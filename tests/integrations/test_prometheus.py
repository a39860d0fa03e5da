"""The Prometheus exporter of a Meter: scraped over loopback, parsed with prometheus_client's own parsers."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.metering.meter import Meter
from tests.fakes.scripted import ConstantPowerBackend, ScriptedBackend

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from greenmeter.integrations.prometheus import (  # noqa: E402
    MeterCollector,
    serve_metrics,
    write_metrics_file,
)

POWER_W = 50.0
INTENSITY = 400.0  # g/kWh, given: the CO2e of each sample is its energy x 400 / 3.6e6
FAMILIES = {"greenmeter_power_watts", "greenmeter_energy_joules", "greenmeter_energy_band_low_joules",
            "greenmeter_energy_band_high_joules", "greenmeter_co2e_grams", "greenmeter_start_time_seconds"}

Samples = dict[str, dict[str, tuple[dict[str, str], float]]]  # metric sample name -> domain -> (labels, value)


@pytest.fixture
def meter() -> Iterator[Meter]:
    """A constant 50 W estimate, a measured counter that steps from 100 J to 107.5 J, and the CPU estimate."""
    m = Meter([ConstantPowerBackend(POWER_W), ScriptedBackend([100.0, 107.5]), "cpu-estimate"], sync=None,
              carbon=CarbonSettings(intensity_g_per_kwh=INTENSITY), calibration=None)
    yield m
    m.close()


def _samples(text: str, parse=text_string_to_metric_families) -> tuple[set[str], Samples]:  # type: ignore[no-untyped-def]
    names, out = set(), {}  # type: ignore[var-annotated]
    for family in parse(text):
        names.add(family.name)
        for s in family.samples:
            out.setdefault(s.name, {})[s.labels.get("domain", "")] = (dict(s.labels), s.value)
    return names, out


def _scrape(url: str, accept: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as answer:  # loopback only
        return answer.read().decode("utf-8")


def _value(samples: Samples, name: str, domain: str) -> float:
    return samples[name][domain][1]


def test_a_scrape_over_loopback_shows_the_meters_figures(meter: Meter) -> None:
    collector = MeterCollector(meter)
    _, e0 = collector.baseline
    with serve_metrics(collector, 0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        time.sleep(0.5)  # power over half a second: the edges' read jitter (ms) is then a small part of it
        _, before = meter.read()
        names, first = _samples(_scrape(server.url))
        _, after = meter.read()
        time.sleep(0.5)
        _, second = _samples(_scrape(server.url))
    assert names == FAMILIES

    # labels: domain, kind, source, provenance kind, and whether the domain counts in the total
    assert first["greenmeter_energy_joules_total"]["constant:dev"][0] == {
        "domain": "constant:dev", "kind": "gpu", "source": "constant power test model", "provenance": "estimated",
        "in_total": "true"}
    assert first["greenmeter_energy_joules_total"]["scripted:dev"][0] == {
        "domain": "scripted:dev", "kind": "package", "source": "scripted test counter", "provenance": "measured",
        "in_total": "true"}
    cpu_labels = first["greenmeter_energy_joules_total"]["cpu-estimate:cpu"][0]
    assert (cpu_labels["kind"], cpu_labels["provenance"]) == ("cpu", "estimated")
    assert cpu_labels["source"] == meter.domains[2].provenance.source

    # energy counts from the collector's baseline, and lies between the meter's own reads around the scrape
    for key in ("constant:dev", "cpu-estimate:cpu"):
        energy = _value(first, "greenmeter_energy_joules_total", key)
        assert before[key] - e0[key] <= energy <= after[key] - e0[key]
    assert _value(first, "greenmeter_energy_joules_total", "scripted:dev") == 107.5 - 100.0
    assert _value(second, "greenmeter_energy_joules_total", "constant:dev") > \
        _value(first, "greenmeter_energy_joules_total", "constant:dev") > 0

    # power: the constant's 50 W; the stepped counter's 7.5 J over the time since the baseline
    assert _value(first, "greenmeter_power_watts", "constant:dev") == pytest.approx(POWER_W, rel=0.1)
    assert _value(second, "greenmeter_power_watts", "constant:dev") == pytest.approx(POWER_W, rel=0.1)
    assert _value(second, "greenmeter_power_watts", "scripted:dev") > 0

    # the band: only where the source states one (the CPU estimate), and it holds the value
    for scrape in (first, second):
        energy = _value(scrape, "greenmeter_energy_joules_total", "cpu-estimate:cpu")
        low = _value(scrape, "greenmeter_energy_band_low_joules", "cpu-estimate:cpu")
        high = _value(scrape, "greenmeter_energy_band_high_joules", "cpu-estimate:cpu")
        assert low <= energy <= high and high > low
        assert set(scrape["greenmeter_energy_band_low_joules"]) == {"cpu-estimate:cpu"}

    # CO2e: the energy times the given intensity
    for key in ("constant:dev", "scripted:dev", "cpu-estimate:cpu"):
        energy = _value(second, "greenmeter_energy_joules_total", key)
        assert _value(second, "greenmeter_co2e_grams_total", key) == pytest.approx(energy / 3.6e6 * INTENSITY,
                                                                                   rel=1e-9, abs=1e-15)
    assert _value(second, "greenmeter_start_time_seconds", "") == pytest.approx(collector.started_at)


def test_openmetrics_is_served_when_asked_for_with_units(meter: Meter) -> None:
    with serve_metrics(meter, 0) as server:
        text = _scrape(server.url, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert text.rstrip().endswith("# EOF")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["greenmeter_energy_joules"].type == "counter"
    assert families["greenmeter_energy_joules"].unit == "joules"
    assert families["greenmeter_power_watts"].unit == "watts"
    assert families["greenmeter_co2e_grams"].unit == "grams"
    (sample,) = [s for s in families["greenmeter_energy_joules"].samples if s.labels["domain"] == "scripted:dev"]
    assert sample.name == "greenmeter_energy_joules_total" and sample.value == 7.5


def test_the_server_uses_its_own_registry_and_stops_on_close(meter: Meter) -> None:
    server = serve_metrics(meter, 0)
    url = server.url
    _samples(_scrape(url))
    # nothing went into prometheus_client's global default registry
    assert prometheus_client.REGISTRY.get_sample_value(
        "greenmeter_start_time_seconds") is None
    server.close()
    server.close()  # a second close does nothing
    with pytest.raises(urllib.error.URLError):
        _scrape(url)


def test_a_port_in_use_is_a_config_error(meter: Meter) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1 port {port}: .*0 picks a free"):
            serve_metrics(meter, port)


def test_bad_arguments_are_config_errors(meter: Meter, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        serve_metrics(meter, 70000)
    with pytest.raises(ConfigError, match="addr"):
        serve_metrics(meter, 0, addr="")
    with pytest.raises(ConfigError, match="greenmeter.Meter"):
        MeterCollector("meter")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="power_window_s"):
        MeterCollector(meter, power_window_s=0)
    with pytest.raises(ConfigError, match="folder"):
        write_metrics_file(meter, tmp_path / "missing" / "greenmeter.prom")
    with pytest.raises(ConfigError, match="interval_s"):
        write_metrics_file(meter, tmp_path / "greenmeter.prom", interval_s=-1)


def test_the_textfile_is_written_atomically_and_parses(meter: Meter, tmp_path: Path) -> None:
    path = tmp_path / "greenmeter.prom"
    handle = write_metrics_file(meter, path)
    names, first = _samples(path.read_text())
    assert FAMILIES - {"greenmeter_power_watts"} <= names <= FAMILIES  # power once time has passed
    assert _value(first, "greenmeter_energy_joules_total", "scripted:dev") == 7.5
    assert "greenmeter_energy_joules_total{" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["greenmeter.prom"]  # the temporary file was renamed over it
    time.sleep(0.5)
    handle.close()  # writes the figures once more
    _, last = _samples(path.read_text())
    assert _value(last, "greenmeter_energy_joules_total", "constant:dev") > \
        _value(first, "greenmeter_energy_joules_total", "constant:dev")
    assert _value(last, "greenmeter_power_watts", "constant:dev") == pytest.approx(POWER_W, rel=0.1)
    assert [p.name for p in tmp_path.iterdir()] == ["greenmeter.prom"]


def test_the_textfile_is_rewritten_every_interval_and_at_the_end(meter: Meter, tmp_path: Path) -> None:
    path = tmp_path / "greenmeter.prom"
    collector = MeterCollector(meter)
    with write_metrics_file(collector, path, interval_s=0.05) as handle:
        written = path.read_text()
        deadline = time.monotonic() + 120  # generous: only a stuck thread would take this long
        while path.read_text() == written:  # the constant's energy grows, so each rewrite differs
            assert time.monotonic() < deadline, "the metrics file was not rewritten"
            time.sleep(0.02)
        assert handle.error is None
        _, at_exit = meter.read()
    _, after = meter.read()
    e0 = collector.baseline[1]["constant:dev"]
    _, last = _samples(path.read_text())
    # the last write came as the block ended: between the meter's reads just before and just after
    energy = _value(last, "greenmeter_energy_joules_total", "constant:dev")
    assert at_exit["constant:dev"] - e0 <= energy <= after["constant:dev"] - e0
    assert energy > _value(_samples(written)[1], "greenmeter_energy_joules_total", "constant:dev")


def test_a_server_and_a_file_sharing_a_collector_agree(meter: Meter, tmp_path: Path) -> None:
    collector = MeterCollector(meter)
    with serve_metrics(collector, 0) as server, write_metrics_file(collector, tmp_path / "g.prom") as handle:
        _, served = _samples(_scrape(server.url))
        handle.write()
        _, written = _samples((tmp_path / "g.prom").read_text())
    assert _value(served, "greenmeter_start_time_seconds", "") == _value(written, "greenmeter_start_time_seconds", "")
    assert _value(served, "greenmeter_energy_joules_total", "scripted:dev") == \
        _value(written, "greenmeter_energy_joules_total", "scripted:dev") == 7.5
    assert _value(written, "greenmeter_energy_joules_total", "constant:dev") > \
        _value(served, "greenmeter_energy_joules_total", "constant:dev")


def test_power_is_averaged_over_at_least_the_power_window() -> None:
    # a counter at 0 J, then 10 J at every later read: all the energy came before the first collection
    meter = Meter([ScriptedBackend([0.0, 10.0])], sync=None, calibration=None)
    try:
        collector = MeterCollector(meter, power_window_s=60.0)
        time.sleep(0.05)
        (first,) = collector.figures()
        (again,) = collector.figures()  # at once: the window reaches back to the start, not to `first`
    finally:
        meter.close()
    assert first.energy_j == again.energy_j == 10.0
    assert first.power_w is not None and again.power_w is not None
    assert 0 < again.power_w < first.power_w  # 10 J over a slightly longer time, never 0 J over microseconds
    assert first.band_low_j is None and first.band_high_j is None  # the scripted source states no band
    assert (first.key, first.provenance, first.in_total) == ("scripted:dev", "measured", True)

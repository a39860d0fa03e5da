"""``greenmeter run --metrics-port / --metrics-file``: the command's figures for Prometheus while it runs."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from greenmeter.cli.main import main

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

BUSY = "sum(i * i for i in range(300_000))"


def _energy(text: str) -> dict[str, tuple[dict[str, str], float]]:
    """``greenmeter_energy_joules_total`` per domain: (labels, joules)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "greenmeter_energy_joules_total":
                out[s.labels["domain"]] = (dict(s.labels), s.value)
    return out


def test_run_writes_a_parsable_metrics_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.prom"
    code = main(["run", "--no-store", "--json", "--metrics-file", str(path), "--metrics-interval", "0.05", "--",
                 sys.executable, "-c", f"{BUSY}; raise SystemExit(3)"])
    assert code == 3  # the command's exit code, as ever
    measurement = json.loads(capsys.readouterr().err)["measurement"]
    energy = _energy(path.read_text())
    assert set(energy) == {d["key"] for d in measurement["domains"]}
    for domain in measurement["domains"]:
        labels, joules = energy[domain["key"]]
        assert labels == {"domain": domain["key"], "kind": domain["kind"],
                          "source": domain["provenance"]["source"], "provenance": domain["provenance"]["kind"],
                          "in_total": "true" if domain["in_total"] else "false"}
        # the file was written a last time after the command ended and counts from before it started
        assert joules >= domain["energy_j"] - 1e-9
    assert energy["cpu-estimate:cpu"][1] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["run.prom"]  # no temporary file left behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_serves_metrics_while_the_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    scraped = tmp_path / "scraped.txt"
    # the measured command scrapes greenmeter's endpoint itself, over loopback, while it runs
    scrape = (f"import urllib.request; {BUSY}; "
              f"body = urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=60).read(); "
              f"open({str(scraped)!r}, 'wb').write(body)")
    assert main(["run", "--no-store", "--metrics-port", str(port), "--", sys.executable, "-c", scrape]) == 0
    assert f"serving metrics at http://127.0.0.1:{port}/metrics" in capsys.readouterr().err
    families = {f.name for f in text_string_to_metric_families(scraped.read_text())}
    assert {"greenmeter_power_watts", "greenmeter_energy_joules", "greenmeter_co2e_grams"} <= families
    energy = _energy(scraped.read_text())
    assert energy["cpu-estimate:cpu"][0]["provenance"] == "estimated" and energy["cpu-estimate:cpu"][1] > 0
    with pytest.raises(OSError):  # the endpoint stopped with the command
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_port_in_use_stops_greenmeter_before_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    store = tmp_path / "runs.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["run", "--store", str(store), "--metrics-port", str(port), "--",
                     sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"greenmeter: error: cannot serve metrics on 127.0.0.1 port {port}" in err
    assert not marker.exists()  # the command never started
    from greenmeter.store.database import Store

    with Store(store, readonly=True) as s:
        assert s.list_runs() == []  # and no run was started


def test_a_metrics_file_in_a_missing_folder_is_refused_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    code = main(["run", "--no-store", "--metrics-file", str(tmp_path / "missing" / "run.prom"), "--",
                 sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    assert code == 1
    assert "--metrics-file" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("option", [["--metrics-port", "70000"], ["--metrics-interval", "0"]])
def test_out_of_range_metrics_options_are_usage_errors(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--no-store", *option, "--", "true"])
    assert exit_.value.code == 2


@pytest.mark.parametrize(("option", "said"), [
    (["--metrics-addr", "0.0.0.0"], "--metrics-addr is the address of --metrics-port"),
    (["--metrics-interval", "5"], "--metrics-interval is how often --metrics-file is rewritten"),
])
def test_a_metrics_option_without_its_output_is_refused(
    option: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "ran"
    assert main(["run", "--no-store", *option, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]) == 1
    assert said in capsys.readouterr().err
    assert not marker.exists()

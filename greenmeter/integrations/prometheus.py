"""Prometheus / OpenMetrics exposition of a :class:`~greenmeter.Meter`: power, energy, its band and CO2e per domain.

::

    from greenmeter.integrations.prometheus import serve_metrics, write_metrics_file

    with serve_metrics(meter, port=9464):               # http://127.0.0.1:9464/metrics while the block runs
        train()
    with write_metrics_file(meter, "/var/lib/node_exporter/textfile/train.prom", interval_s=15):
        train()                                         # rewritten every 15 s, and once more at the end

Every figure is computed when it is collected (a scrape, or a write of the file), from one
:meth:`Meter.read <greenmeter.Meter.read>` of the meter's cumulative counters, so nothing shown is stale.
Energy and CO2e count from the moment the exporter started (:class:`MeterCollector`); power is the mean
since an earlier collection at least ``power_window_s`` ago (since the start while younger than that).

========================================== ======= ====================================================
metric                                     type    meaning
========================================== ======= ====================================================
``greenmeter_power_watts``                 gauge   mean power over the latest ``power_window_s`` or more, W
``greenmeter_energy_joules_total``         counter energy since the exporter started, J
``greenmeter_energy_band_low_joules``      gauge   the lowest that energy may truly be (the source's band), J
``greenmeter_energy_band_high_joules``     gauge   the highest it may truly be, J
``greenmeter_co2e_grams_total``            counter CO2e of that energy (the meter's carbon settings), g
``greenmeter_start_time_seconds``          gauge   Unix time the counters count from (no labels)
========================================== ======= ====================================================

Labels of the per-domain metrics: ``domain`` (the key, ``rapl:package-0``), ``kind`` (``package``, ``gpu``,
``cpu``...), ``source`` (the counter or model), ``provenance`` (``measured`` or ``estimated``) and ``in_total``
(``true``, or ``false`` for a domain inside another one, such as RAPL's core: sum with ``in_total="true"``
to count nothing twice). A domain whose source states no band has no band samples.

Each exporter registers its collector in a registry of its own, never in prometheus_client's global one.
Importing this module without ``prometheus_client`` raises :class:`~greenmeter.ConfigError`:
``pip install greenmeter[metrics]``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from greenmeter._checks import number, output_file, text, whole_number
from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import estimate_carbon
from greenmeter.integrations import import_framework
from greenmeter.metering.meter import Meter

_prometheus = import_framework(("prometheus_client",), "metrics")

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402

__all__ = ["DomainFigures", "MeterCollector", "MetricsFile", "MetricsServer", "serve_metrics", "write_metrics_file"]

log = logging.getLogger(__name__)

#: The labels of every per-domain metric, in order.
LABELS = ("domain", "kind", "source", "provenance", "in_total")


@dataclass(frozen=True)
class DomainFigures:
    """One domain's figures at one collection, as the metrics show them.

    Attributes:
        key, kind, source, provenance, in_total: the domain's labels (``provenance`` is ``"measured"`` or
            ``"estimated"``; ``source`` the counter or model).
        energy_j: energy since the exporter started, in J.
        power_w: mean power over the latest ``power_window_s`` or more, in W; ``None`` while less time than
            the source's update period has passed since the start.
        band_low_j, band_high_j: the band of ``energy_j`` (:meth:`BandModel.band
            <greenmeter.sources.band.BandModel.band>`), in J; ``None`` when the source states none.
        co2e_g: CO2e of ``energy_j``, in g.
    """

    key: str
    kind: str
    source: str
    provenance: str
    in_total: bool
    energy_j: float
    power_w: float | None
    band_low_j: float | None
    band_high_j: float | None
    co2e_g: float

    @property
    def labels(self) -> tuple[str, ...]:
        """The label values, in the order of :data:`LABELS`."""
        return (self.key, self.kind, self.source, self.provenance, "true" if self.in_total else "false")


class MeterCollector:
    """A prometheus_client collector that reads a meter whenever it is collected.

    Creating it starts the meter (if not started) and takes the reading its counters count from. One
    collector can feed several exporters (a server and a file), which then agree on every figure.

    Args:
        meter: the meter to expose.
        power_window_s: the shortest interval power is averaged over, in seconds (longer when the source's
            update period is): power is the mean since the newest earlier collection at least this old.

    Raises:
        ConfigError: ``meter`` is not a :class:`~greenmeter.Meter`, or ``power_window_s`` is not > 0.
    """

    def __init__(self, meter: Meter, *, power_window_s: float = 1.0) -> None:
        if not isinstance(meter, Meter):
            raise ConfigError(f"meter must be a greenmeter.Meter, not {type(meter).__name__}")
        window = number("power_window_s", power_window_s, low=0, low_open=True, unit="seconds")
        self.meter = meter
        self._lock = threading.Lock()
        t0, energy = meter.read()  # starts the meter
        self._baseline = (t0, dict(energy))
        self._history: deque[tuple[float, dict[str, float]]] = deque([self._baseline])
        self._resolution_s = max((d.update_period_s for d in meter.domains), default=0.0)
        self.power_window_s = max(window, self._resolution_s)
        self.started_at = time.time()
        self._co2e_g_per_j = estimate_carbon(1.0, meter.carbon_settings).co2e_g  # CO2e is linear in energy

    @property
    def baseline(self) -> tuple[float, dict[str, float]]:
        """The meter's reading the counters count from: ``(perf_counter s, cumulative J per domain)``."""
        return self._baseline[0], dict(self._baseline[1])

    def figures(self) -> list[DomainFigures]:
        """Read the meter now and return every domain's figures (this is what a scrape shows).

        Raises:
            Exception: whatever the meter's backends raise when they cannot be read.
        """
        with self._lock:  # one collection at a time, so the kept readings stay in time order
            t, energy = self.meter.read()
            ref_t, ref_e = self._reference(t)
            self._history.append((t, dict(energy)))
        t0, e0 = self._baseline
        duration = t - t0
        out = []
        for domain in self.meter.domains:
            if domain.key not in energy:
                continue
            joules = energy[domain.key] - e0[domain.key]
            dt = t - ref_t
            power = None if dt <= 0 or dt < self._resolution_s else (energy[domain.key] - ref_e[domain.key]) / dt
            band = None if domain.band is None else domain.band.band(
                joules, duration, resolved=duration >= domain.update_period_s)
            out.append(DomainFigures(
                domain.key, domain.kind, domain.provenance.source, domain.provenance.kind, domain.in_total, joules,
                power, None if band is None else band.low_j, None if band is None else band.high_j,
                joules * self._co2e_g_per_j))
        return out

    def _reference(self, t: float) -> tuple[float, dict[str, float]]:
        """The newest kept reading at least ``power_window_s`` before ``t`` (else the oldest); older ones are dropped."""
        history = self._history
        while len(history) > 1 and t - history[1][0] >= self.power_window_s:
            history.popleft()
        return history[0]

    def describe(self) -> list[Metric]:
        """Nothing: a registry then never collects (reads the meter) just to learn the metric names."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics, computed from one read of the meter (prometheus_client calls this on every scrape)."""
        figures = self.figures()
        power = GaugeMetricFamily("greenmeter_power_watts", "Mean power over the latest power window, in watts",
                                  labels=LABELS, unit="watts")
        energy = CounterMetricFamily("greenmeter_energy_joules", "Energy since the exporter started, in joules",
                                     labels=LABELS, unit="joules")
        low = GaugeMetricFamily("greenmeter_energy_band_low_joules",
                                "The lowest the energy may truly be under its source's stated ranges, in joules",
                                labels=LABELS, unit="joules")
        high = GaugeMetricFamily("greenmeter_energy_band_high_joules",
                                 "The highest the energy may truly be under its source's stated ranges, in joules",
                                 labels=LABELS, unit="joules")
        co2e = CounterMetricFamily("greenmeter_co2e_grams", "CO2e of the energy since the exporter started, in grams",
                                   labels=LABELS, unit="grams")
        for f in figures:
            if f.power_w is not None:
                power.add_metric(f.labels, f.power_w)
            energy.add_metric(f.labels, f.energy_j)
            if f.band_low_j is not None and f.band_high_j is not None:
                low.add_metric(f.labels, f.band_low_j)
                high.add_metric(f.labels, f.band_high_j)
            co2e.add_metric(f.labels, f.co2e_g)
        yield from (power, energy, low, high, co2e)
        yield GaugeMetricFamily("greenmeter_start_time_seconds", "Unix time the energy and CO2e counters count from",
                                value=self.started_at, unit="seconds")


def _collector(source: Meter | MeterCollector) -> MeterCollector:
    return source if isinstance(source, MeterCollector) else MeterCollector(source)


def _registry(collector: MeterCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # never the global default registry
    registry.register(collector)
    return registry


class _Closing:
    """``with`` support for the handles: the block's end calls :meth:`close`."""

    def close(self) -> None:  # pragma: no cover - every handle defines it
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class MetricsServer(_Closing):
    """A running metrics endpoint (from :func:`serve_metrics`); :meth:`close` or the end of a ``with`` block stops it.

    Attributes:
        collector: what it serves.
        addr: the address it listens on.
        port: the port it listens on (the one the system picked, when 0 was asked).
    """

    def __init__(self, collector: MeterCollector, httpd: Any, thread: threading.Thread, addr: str) -> None:
        self.collector = collector
        self.addr = addr
        self.port: int = int(httpd.server_port)
        self._httpd = httpd
        self._thread = thread
        self._closed = False

    @property
    def url(self) -> str:
        """Where to scrape: ``http://ADDR:PORT/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve_metrics(meter: Meter | MeterCollector, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the meter's metrics over HTTP (Prometheus text, or OpenMetrics when the scraper asks for it).

    Served from a background thread until :meth:`MetricsServer.close` (or the end of a ``with`` block);
    every scrape reads the meter.

    Args:
        meter: the meter, or a :class:`MeterCollector` of it to share with other exporters.
        port: the TCP port; 0 lets the system pick a free one (see ``.port``).
        addr: the address to listen on; the default serves this machine only. ``"0.0.0.0"`` serves every network.

    Returns:
        The running server, with ``.port`` and ``.url``.

    Raises:
        ConfigError: a port outside 0-65535, an empty address, a port already in use or an address that cannot
            be listened on (the message names them), or a ``meter`` that is not a Meter.
    """
    whole_number("port", port, minimum=0, maximum=65535)
    text("addr", addr)
    collector = _collector(meter)
    try:
        httpd, thread = start_http_server(port, addr=addr, registry=_registry(collector))
    except OSError as err:
        raise ConfigError(f"cannot serve metrics on {addr} port {port}: {err.strerror or err}; choose another port "
                          "(0 picks a free one) or stop what listens there") from err
    return MetricsServer(collector, httpd, thread, addr)


class MetricsFile(_Closing):
    """A metrics file in node-exporter textfile format (from :func:`write_metrics_file`).

    Attributes:
        collector: what it writes.
        path: the file.
        interval_s: seconds between rewrites by the background thread, or ``None`` for none.
        error: why the latest background rewrite failed (warned about once), else ``None``.
    """

    def __init__(self, collector: MeterCollector, path: Path, interval_s: float | None) -> None:
        self.collector = collector
        self.path = path
        self.interval_s = interval_s
        self.error: Exception | None = None
        self._registry = _registry(collector)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def write(self) -> None:
        """Rewrite the file now, atomically (a temporary file in the same folder, then a rename).

        Raises:
            OSError: the file cannot be written; or whatever the meter raises when it cannot be read.
        """
        write_to_textfile(os.fspath(self.path), self._registry)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._rewrite, name="greenmeter-metrics-file", daemon=True)
        self._thread.start()

    def _rewrite(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
                self.error = None
            except Exception as err:  # noqa: BLE001 - said once, and kept in .error; the next rewrite tries again
                if self.error is None:
                    log.warning("greenmeter: cannot rewrite the metrics file %s (%s: %s); trying again every %g s",
                                self.path, type(err).__name__, err, self.interval_s)
                self.error = err

    def close(self) -> None:
        """Stop the rewrites and write the file a last time (the figures at this moment). A second call does nothing.

        Raises:
            OSError: the last write failed; or whatever the meter raises when it cannot be read.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write()


def write_metrics_file(meter: Meter | MeterCollector, path: str | os.PathLike[str], *,
                       interval_s: float | None = None) -> MetricsFile:
    """Write the meter's metrics to ``path`` in node-exporter textfile format, now and optionally every interval.

    For node_exporter's textfile collector, give a path ending in ``.prom`` inside its
    ``--collector.textfile.directory``. Each write is atomic: a temporary file in the same folder, renamed over
    ``path``, so a collector never reads half a file. :meth:`MetricsFile.close` (or the end of a ``with``
    block) stops the rewrites and writes the file once more.

    Args:
        meter: the meter, or a :class:`MeterCollector` of it to share with other exporters.
        path: the file to write (its folder must exist).
        interval_s: seconds between rewrites by a background thread; ``None`` (default): written now only.

    Returns:
        The file's handle (already written once).

    Raises:
        ConfigError: a path that cannot be written (a folder, a missing folder), an interval that is not > 0, or a
            ``meter`` that is not a Meter.
    """
    target = output_file("path", path)
    if interval_s is not None:
        interval_s = number("interval_s", interval_s, low=0, low_open=True, unit="seconds")
    handle = MetricsFile(_collector(meter), target, interval_s)
    handle.write()
    if interval_s is not None:
        handle._start()
    return handle

"""MLflow: energy, power, CO2e and their bands as metrics of the active MLflow run, and the report as an artifact.

::

    import mlflow
    from greenmeter.integrations.mlflow import MlflowLogger, log_comparison, log_measurement

    meter = greenmeter.Meter()
    with mlflow.start_run(), MlflowLogger(meter):   # every window the meter ends is logged
        with meter.window("train", samples=len(train_set)):
            train()

    with mlflow.start_run():
        log_measurement(measurement)                 # or one measurement, explicitly
        log_comparison(greenmeter.compare(...))      # or a comparison's variants

Metric names start with ``greenmeter.`` and carry their unit (see :data:`METRICS`); a window's per-epoch and
per-step figures are logged with the epoch and step index as the metric's step. Tags name the sources, their
provenance (measured or estimated) and the band's basis, and each window's HTML report (with its JSON record)
is logged as an artifact under ``greenmeter/``. Everything goes through MLflow's own client, to the tracking
URI MLflow is set up with; greenmeter adds no network call of its own.

Importing this module without MLflow raises :class:`~greenmeter.ConfigError`: ``pip install greenmeter[mlflow]``
(``mlflow-skinny`` is enough).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING

from greenmeter._checks import text, whole_number
from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import J_PER_KWH
from greenmeter.integrations import import_framework
from greenmeter.metering.meter import Meter

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.measurement import Measurement
    from greenmeter.sources.band import Band

_mlflow = import_framework(("mlflow",), "mlflow")
from mlflow.entities import Metric, RunTag  # noqa: E402  (mlflow is known to import by now)
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

__all__ = ["METRICS", "PREFIX", "MlflowLogger", "autolog", "log_comparison", "log_measurement"]

log = logging.getLogger("greenmeter")

#: The default prefix of every metric, tag and artifact name.
PREFIX = "greenmeter."

#: The metrics logged, by name after the prefix. ``<domain>`` is a domain key with ``:`` written ``.``
#: (``rapl.package-0``), ``<variant>`` a comparison's variant name made safe the same way. Units are in the names.
METRICS: Mapping[str, str] = MappingProxyType({
    "energy_j": "energy of the window, in J (the in-total domains added)",
    "power_w": "mean power over the window, in W",
    "duration_s": "the window's duration, in s",
    "co2e_g": "CO2e of the window's energy (x PUE x grid intensity), in g",
    "energy_band_low_j": "low end of the band of energy_j: how far off the sources could be, in J",
    "energy_band_high_j": "high end of the band of energy_j, in J",
    "energy_per_sample_j": "energy per sample, in J, when the window has a sample count",
    "domain.<domain>.energy_j": "energy of one domain, in J",
    "domain.<domain>.power_w": "mean power of one domain, in W",
    "domain.<domain>.energy_band_low_j": "low end of the domain's band, in J",
    "domain.<domain>.energy_band_high_j": "high end of the domain's band, in J",
    "epoch_energy_j": "energy of one epoch, in J; the metric's step is the epoch index (0 first)",
    "epoch_power_w": "mean power over one epoch, in W; step: the epoch index",
    "epoch_co2e_g": "CO2e of one epoch, in g; step: the epoch index",
    "epoch_energy_band_low_j": "low end of the epoch's band, in J; step: the epoch index",
    "epoch_energy_band_high_j": "high end of the epoch's band, in J; step: the epoch index",
    "step_energy_j": "energy of one step, in J (the window's energy split by step time: step_energy_method); "
                     "step: the step index in the window (0 first)",
    "variant.<variant>.energy_per_sample_j": "a compared variant's mean energy per sample, in J",
    "variant.<variant>.energy_per_sample_ci_low_j": "low end of its confidence interval over the repeats, in J",
    "variant.<variant>.energy_per_sample_ci_high_j": "high end of its confidence interval, in J",
    "variant.<variant>.energy_per_sample_band_low_j": "low end of its band (sources' systematic error), in J",
    "variant.<variant>.energy_per_sample_band_high_j": "high end of its band, in J",
    "variant.<variant>.energy_ratio": "its energy per sample over the baseline's (0.5 = half)",
    "variant.<variant>.energy_ratio_band_low": "low end of the ratio's band (shared model constants cancelled)",
    "variant.<variant>.energy_ratio_band_high": "high end of the ratio's band",
    "variant.<variant>.metric": "its metric (the comparison's metric_name, e.g. accuracy as a fraction)",
})

_UNSAFE = re.compile(r"[^\w.\- /]")
_TAG_MAX = 5000  # MLflow's file store takes 8000 characters, older servers 5000


def _name(part: str) -> str:
    """A metric or artifact name part MLflow accepts on every platform: ``rapl:package-0`` -> ``rapl.package-0``."""
    return _UNSAFE.sub("_", part.replace(":", ".")).strip("/. ") or "_"


def _prefix(prefix: str) -> str:
    """Check a metric-name prefix: MLflow's characters only, so that a bad one is refused before any logging."""
    if not isinstance(prefix, str) or _UNSAFE.search(prefix):
        raise ConfigError(f"prefix must be letters, digits, '_', '-', '.', '/' or spaces, such as 'greenmeter.', "
                          f"not {prefix!r}")
    return prefix


def _tag(value: str) -> str:
    return value if len(value) <= _TAG_MAX else value[:_TAG_MAX - 3] + "..."


def _run_id(run_id: str | None) -> str | None:
    """The run to log to: ``run_id`` when given, else the active run's id, else ``None``."""
    if run_id is not None:
        return text("run_id", run_id)
    active = _mlflow.active_run()
    return None if active is None else active.info.run_id


class _Batch:
    """Metrics and tags gathered for one ``log_batch`` call (finite values only: MLflow's stores differ on NaN/inf)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metrics: list[Metric] = []
        self.tags: dict[str, str] = {}
        self._ms = int(time.time() * 1000)

    def metric(self, name: str, value: float | None, step: int = 0) -> None:
        if value is not None and math.isfinite(value):
            self.metrics.append(Metric(self.prefix + name, float(value), self._ms, int(step)))

    def band(self, name: str, band: Band | None, step: int = 0) -> None:
        if band is not None:
            self.metric(f"{name}_band_low_j", band.low_j, step)
            self.metric(f"{name}_band_high_j", band.high_j, step)

    def tag(self, name: str, value: str) -> None:
        self.tags[self.prefix + name] = _tag(value)

    def send(self, client: MlflowClient, run_id: str) -> None:
        client.log_batch(run_id, metrics=self.metrics, tags=[RunTag(k, v) for k, v in self.tags.items()])


def _provenance(kinds: Iterable[str]) -> str:
    """``measured``, ``estimated`` or ``mixed`` for the provenance kinds of a figure's parts."""
    found = set(kinds)
    return found.pop() if len(found) == 1 else "mixed" if found else "none"


def _measurement_batch(m: Measurement, step: int, prefix: str) -> _Batch:
    batch = _Batch(prefix)
    batch.metric("energy_j", m.energy_j, step)
    batch.metric("power_w", m.power_w, step)
    batch.metric("duration_s", m.duration_s, step)
    batch.metric("co2e_g", None if m.carbon is None else m.carbon.co2e_g, step)
    batch.band("energy", m.energy_band, step)
    batch.metric("energy_per_sample_j", m.energy_per_sample_j, step)
    for d in m.domains:
        key = f"domain.{_name(d.key)}"
        batch.metric(f"{key}.energy_j", d.energy_j, step)
        batch.metric(f"{key}.power_w", d.energy_j / m.duration_s if m.duration_s > 0 else None, step)
        batch.band(f"{key}.energy", d.band, step)
        batch.tag(f"{key}.provenance", d.provenance.describe() + ("" if d.in_total else " (not in the total)"))
    co2e_per_j = None if m.carbon is None else m.carbon.pue * m.carbon.intensity_g_per_kwh / J_PER_KWH
    for e in m.epochs:
        batch.metric("epoch_energy_j", e.energy_j, e.index)
        batch.metric("epoch_power_w", e.energy_j / e.duration_s if e.duration_s > 0 else None, e.index)
        batch.metric("epoch_co2e_g", None if co2e_per_j is None else e.energy_j * co2e_per_j, e.index)
        batch.band("epoch_energy", e.band, e.index)
    for index, joules in enumerate(m.step_energies_j()):
        batch.metric("step_energy_j", joules, index)
    batch.tag("sources", ", ".join(m.backends))
    batch.tag("provenance", _provenance(d.provenance.kind for d in m.domains if d.in_total))
    batch.tag("band", m.band_note())
    if m.energy_band is not None and m.energy_band.basis:
        batch.tag("band_basis", "\n".join(m.energy_band.basis))
    if m.step_energy_method:
        batch.tag("step_energy_method", m.step_energy_method)
    if m.carbon is not None:
        batch.tag("carbon", m.carbon.describe())
    if m.flags:
        batch.tag("flags", "\n".join(m.flags))
    return batch


def _window_report(m: Measurement, meter: Meter | None = None) -> str:
    """The HTML report of one window, as :func:`~greenmeter.output.report.run_report` renders a stored run."""
    from greenmeter.output.report import run_report
    from greenmeter.records.run import RunRecord

    run = RunRecord(id=(meter.run_id if meter is not None and meter.run_id else "(not stored)"), name=m.name,
                    kind="api", status=m.status, started_at=m.started_at, ended_at=None, command=None,
                    exit_code=None, host=m.host, carbon_settings=None, measurement=m, carbon=m.carbon,
                    windows_count=1, note=m.error)
    return run_report(run, [m])


def log_measurement(measurement: Measurement, *, step: int | None = None, report: bool = True,
                    run_id: str | None = None, prefix: str = PREFIX) -> str:
    """Log one measurement to the active MLflow run (or to ``run_id``): metrics, tags and its report.

    Metrics (:data:`METRICS`): the window's energy, power, duration, CO2e, the band's ends and energy per
    sample at ``step``; each domain's energy, power and band; each epoch's energy, power, CO2e and band at the
    epoch's index; each kept step's energy at the step's index. Tags: ``<prefix>sources``, ``<prefix>provenance``
    (``measured``, ``estimated`` or ``mixed``), each domain's provenance, the band and its basis, the carbon figure's
    sources and any flags. Artifacts (``report=True``): ``greenmeter/<window>[-<step>].html``, the window's
    self-contained HTML report, and ``.json``, the measurement's record (:meth:`Measurement.to_json`).

    Args:
        measurement: a window's measurement (from a :class:`~greenmeter.Meter`, ``measure`` or the store).
        step: the MLflow step of the window's own figures (default 0: MLflow's default), e.g. the epoch or the
            window's index; it also tells the artifacts of several windows apart.
        report: log the HTML report and the JSON record as artifacts (a report renders in about 0.5 s, the first
            one in more, as it loads matplotlib).
        run_id: the MLflow run to log to (default: the active run).
        prefix: the start of every metric and tag name.

    Returns:
        The id of the MLflow run logged to.

    Raises:
        ConfigError: no MLflow run is active and no ``run_id`` was given, a bad ``step`` or ``prefix``, or
            MLflow refused the metrics (its error is attached).
    """
    from greenmeter.records.measurement import Measurement

    if not isinstance(measurement, Measurement):
        raise ConfigError(f"measurement must be a greenmeter Measurement, not {type(measurement).__name__}")
    whole_number("step", step, optional=True)
    _prefix(prefix)
    target = _run_id(run_id)
    if target is None:
        raise ConfigError("no MLflow run is active: call log_measurement inside `with mlflow.start_run():`, "
                          "or pass run_id=")
    _send(measurement, step, report, target, prefix, None)
    return target


def _send(m: Measurement, step: int | None, report: bool, run_id: str, prefix: str, meter: Meter | None) -> None:
    client = MlflowClient()
    try:
        _measurement_batch(m, step or 0, prefix).send(client, run_id)
        if report:
            stem = f"greenmeter/{_name(m.name)}{'' if step is None else f'-{step}'}"
            client.log_text(run_id, _window_report(m, meter), f"{stem}.html")
            client.log_text(run_id, m.to_json(), f"{stem}.json")
    except MlflowException as err:
        raise ConfigError(f"MLflow refused greenmeter's figures for window {m.name!r} in run {run_id}: "
                          f"{err.message}") from err


def log_comparison(comparison: Comparison, *, report: bool = True, run_id: str | None = None,
                   prefix: str = PREFIX) -> str:
    """Log a comparison to the active MLflow run (or to ``run_id``): each variant's figures and the report.

    Metrics per variant ``variant.<variant>.`` (:data:`METRICS`): mean energy per sample with its confidence
    interval and its band, the energy ratio to the baseline with its band, and the metric. Tags: the comparison's
    name, baseline, metric, the energy sources, and per variant whether it has a measurable saving (a
    significant one; see docs/methodology.md) and its provenance. Artifacts (``report=True``):
    ``greenmeter/comparison-<name>.html`` (the comparison's HTML report) and ``.json`` (its record).

    Args:
        comparison: from :func:`greenmeter.compare` or the store.
        report: log the HTML report and the JSON record as artifacts.
        run_id: the MLflow run to log to (default: the active run).
        prefix: the start of every metric and tag name.

    Returns:
        The id of the MLflow run logged to.

    Raises:
        ConfigError: no MLflow run is active and no ``run_id`` was given, or MLflow refused the figures.
    """
    from greenmeter.records.comparison import Comparison

    if not isinstance(comparison, Comparison):
        raise ConfigError(f"comparison must be a greenmeter Comparison, not {type(comparison).__name__}")
    _prefix(prefix)
    target = _run_id(run_id)
    if target is None:
        raise ConfigError("no MLflow run is active: call log_comparison inside `with mlflow.start_run():`, "
                          "or pass run_id=")
    batch = _Batch(prefix)
    batch.tag("comparison", comparison.name)
    batch.tag("baseline", comparison.baseline)
    batch.tag("metric_name", comparison.metric_name)
    batch.tag("sources", ", ".join(comparison.backends))
    batch.tag("provenance", _provenance(str(s.get("kind")) for s in comparison.sources))
    for v in comparison.variants:
        key = f"variant.{_name(v.name)}"
        if v.energy_per_sample_j is not None:
            batch.metric(f"{key}.energy_per_sample_j", v.energy_per_sample_j.mean)
            batch.metric(f"{key}.energy_per_sample_ci_low_j", v.energy_per_sample_j.low)
            batch.metric(f"{key}.energy_per_sample_ci_high_j", v.energy_per_sample_j.high)
        batch.band(f"{key}.energy_per_sample", v.energy_band)
        batch.metric(f"{key}.metric", v.metric)
        delta = v.vs_baseline
        if delta is not None:
            batch.metric(f"{key}.energy_ratio", delta.energy_ratio)
            if delta.energy_ratio_band is not None:
                batch.metric(f"{key}.energy_ratio_band_low", delta.energy_ratio_band.low)
                batch.metric(f"{key}.energy_ratio_band_high", delta.energy_ratio_band.high)
            batch.tag(f"{key}.measurable_saving", str(delta.measurable_saving).lower())
        batch.tag(f"{key}.status", v.status if v.error is None else f"{v.status}: {v.error}")
        if v.provenance:
            batch.tag(f"{key}.provenance", "\n".join(v.provenance))
    client = MlflowClient()
    try:
        batch.send(client, target)
        if report:
            from greenmeter.output.report import comparison_report

            stem = f"greenmeter/comparison-{_name(comparison.name)}"
            client.log_text(target, comparison_report(comparison, "html"), f"{stem}.html")
            client.log_text(target, comparison.to_json(), f"{stem}.json")
    except MlflowException as err:
        raise ConfigError(f"MLflow refused greenmeter's figures for comparison {comparison.name!r} in run "
                          f"{target}: {err.message}") from err
    return target


class MlflowLogger:
    """Logs every window a meter ends to the MLflow run active at that moment (see :func:`log_measurement`).

    It is one of the meter's ``listeners``, added here and removed by :meth:`detach` (or on leaving a ``with``
    block). A window that ends while no MLflow run is active is not logged (one debug line says so), so the
    logger can stay attached across runs. The window's own figures are logged at step ``n``, its index among
    the windows this logger logged to that run (0 first); its epochs and steps at their own indices. To log
    windows of different kinds under different names, attach one logger per kind with ``windows=`` and its own
    ``prefix``. If MLflow refuses the figures (a tracking server that cannot be reached), a warning says so and
    the measurement goes on: it is still returned by the meter and kept in its store.

    Args:
        meter: the :class:`~greenmeter.Meter` whose windows to log.
        windows: the names of the windows to log (default: every window).
        report: log each window's HTML report and JSON record as artifacts (default ``True``).
        prefix: the start of every metric and tag name.

    Raises:
        ConfigError: ``meter`` is not a Meter, a bad ``windows`` or ``prefix``.
    """

    def __init__(self, meter: Meter, *, windows: Collection[str] | None = None, report: bool = True,
                 prefix: str = PREFIX) -> None:
        if not isinstance(meter, Meter):
            raise ConfigError(f"meter must be a greenmeter.Meter, not {type(meter).__name__}")
        if windows is not None and (isinstance(windows, str) or not all(isinstance(w, str) for w in windows)):
            raise ConfigError(f"windows must be a collection of window names such as ('train',), not {windows!r}")
        self.meter = meter
        self.windows = None if windows is None else frozenset(windows)
        self.report = bool(report)
        self.prefix = _prefix(prefix)
        self._logged: dict[str, int] = {}  # windows logged, by MLflow run id
        self._listener: Callable[[Measurement], None] | None = self._on_window
        meter.listeners.append(self._on_window)

    @property
    def attached(self) -> bool:
        """True until :meth:`detach`."""
        return self._listener is not None

    def logged(self, run_id: str) -> int:
        """How many windows this logger logged to the MLflow run ``run_id``."""
        return self._logged.get(run_id, 0)

    def detach(self) -> None:
        """Stop logging: remove the listener from the meter (harmless when already detached)."""
        listener, self._listener = self._listener, None
        if listener is not None and listener in self.meter.listeners:
            self.meter.listeners.remove(listener)

    def __enter__(self) -> MlflowLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.detach()

    def _on_window(self, measurement: Measurement) -> None:
        if self.windows is not None and measurement.name not in self.windows:
            return
        run_id = _run_id(None)
        if run_id is None:
            log.debug("greenmeter: window %r not logged to MLflow: no MLflow run is active", measurement.name)
            return
        step = self._logged.get(run_id, 0)
        try:
            _send(measurement, step, self.report, run_id, self.prefix, self.meter)
        except ConfigError as err:  # the measurement itself is fine and kept; only its copy in MLflow is missing
            log.warning("greenmeter: %s", err)
            return
        self._logged[run_id] = step + 1


def autolog(meter: Meter, *, windows: Collection[str] | None = None, report: bool = True,
            prefix: str = PREFIX) -> MlflowLogger:
    """Log every window ``meter`` ends to the MLflow run active at that moment; an :class:`MlflowLogger`.

    Use it once (``autolog(meter)``), or as a context manager that stops logging at its end
    (``with autolog(meter): ...``).

    Args:
        meter: the :class:`~greenmeter.Meter` whose windows to log.
        windows: the names of the windows to log (default: every window).
        report: log each window's HTML report and JSON record as artifacts.
        prefix: the start of every metric and tag name.

    Returns:
        The attached logger (:meth:`MlflowLogger.detach` stops it).

    Raises:
        ConfigError: as :class:`MlflowLogger`.
    """
    return MlflowLogger(meter, windows=windows, report=report, prefix=prefix)


"""The store-backed commands of the command line: ``run``, ``runs``, ``export`` and ``carbon``.

``greenmeter.cli.main`` builds the parser and dispatches here; each function takes the parsed arguments
and returns the exit code. Summaries go to standard error so a measured command's own standard
output stays clean.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from greenmeter._errors import ConfigError

#: The largest energy ``greenmeter carbon --kwh`` converts: a terawatt-hour; more is a typo, not a workload.
KWH_MAX = 1e9

__all__ = ["KWH_MAX", "add_carbon_options", "carbon_settings", "cmd_carbon", "cmd_compare", "cmd_export", "cmd_run",
           "cmd_runs", "store_unless_off"]


def add_carbon_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--country | --cloud | --intensity`` and ``--pue`` to a subcommand."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--country", help="ISO 3166 country code, alpha-3 or alpha-2 (e.g. FRA or FR)")
    where.add_argument("--cloud", help="cloud provider and region, e.g. aws:eu-west-3 or gcp:europe-west1")
    where.add_argument("--intensity", type=float, metavar="G_PER_KWH",
                       help="grid carbon intensity in gCO2e/kWh, given by you")
    parser.add_argument("--pue", default="1.0",
                        help="power usage effectiveness: a number >= 1 or a preset "
                             "(device, unknown-datacenter, aws, gcp, azure); default 1.0 (device energy)")


def carbon_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build and validate the ``CarbonSettings`` the options describe (raises ``ConfigError``)."""
    from greenmeter.carbon.settings import CarbonSettings

    pue: float | str = args.pue
    try:
        pue = float(args.pue)
    except ValueError:
        pass  # a preset name; CarbonSettings checks it
    return CarbonSettings(country=args.country, cloud=args.cloud, intensity_g_per_kwh=args.intensity, pue=pue)


def _store(args: argparse.Namespace, *, readonly: bool = False):  # type: ignore[no-untyped-def]
    """The store ``--store`` names (else ``$GREENMETER_STORE``, else the default): opened for writing, or with
    ``readonly`` for reading only, so that reading needs no write access and creates nothing."""
    from greenmeter.store.database import Store

    return Store(args.store, readonly=readonly)


@contextlib.contextmanager
def store_unless_off(args: argparse.Namespace) -> Iterator[Any]:
    """The store a recording verb (``run``, ``compare``, ``optimize``, ``export-model``) writes to: ``--store``'s,
    else the default; ``None`` with ``--no-store``. Closed when the block ends."""
    store = None if args.no_store else _store(args)
    try:
        yield store
    finally:
        if store is not None:
            store.close()


#: What ``greenmeter runs`` says of a run that never finished and has no note of its own.
_UNFINISHED = ("never finished: it is still running, or the process was killed or could not write its end "
               "to the store (the windows stored before are kept)")


@contextlib.contextmanager
def _run_metrics(args: argparse.Namespace, meter: Any) -> Iterator[None]:
    """``run --metrics-port/--metrics-file``: serve and rewrite the meter's metrics while the block runs.

    Both start before the block (a port in use is a ConfigError before the command starts); at its end the
    server stops and the file is written a last time. A last write that fails is said on standard error, and
    the command's exit code is kept.
    """
    if args.metrics_port is None and args.metrics_file is None:
        yield
        return
    from greenmeter._text import terminal_text
    from greenmeter.integrations.prometheus import MeterCollector, serve_metrics, write_metrics_file

    collector = MeterCollector(meter)  # one collector: the endpoint and the file show the same figures
    with contextlib.ExitStack() as stack:
        if args.metrics_port is not None:
            server = stack.enter_context(serve_metrics(collector, args.metrics_port, args.metrics_addr or "127.0.0.1"))
            if not args.json:
                print(f"greenmeter: serving metrics at {server.url}", file=sys.stderr)
        metrics_file = None
        if args.metrics_file is not None:
            metrics_file = write_metrics_file(collector, args.metrics_file, interval_s=args.metrics_interval or 10.0)
        try:
            yield
        finally:
            if metrics_file is not None:
                try:
                    metrics_file.close()
                except Exception as err:  # noqa: BLE001 - said; the command's exit code matters more
                    print(f"greenmeter: the metrics file {terminal_text(str(metrics_file.path))} could not be "
                          f"written a last time ({terminal_text(f'{type(err).__name__}: {err}')})", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from greenmeter._text import terminal_text
    from greenmeter.metering.meter import Meter
    from greenmeter.metering.runner import run_command

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    settings = carbon_settings(args)
    settings.resolve_intensity()  # an unknown country fails here, before the command runs
    if args.metrics_addr is not None and args.metrics_port is None:
        raise ConfigError("--metrics-addr is the address of --metrics-port: add --metrics-port PORT")
    if args.metrics_interval is not None and args.metrics_file is None:
        raise ConfigError("--metrics-interval is how often --metrics-file is rewritten: add --metrics-file PATH")
    if args.metrics_file is not None:
        from greenmeter._checks import output_file

        output_file("--metrics-file", args.metrics_file)
    with store_unless_off(args) as store:
        # Fallbacks are printed with the summary's flags; the start-up warnings would say them twice.
        logging.getLogger("greenmeter").setLevel(logging.ERROR)
        meter = Meter(mode=args.mode, sync=None, carbon=settings)
        try:
            with _run_metrics(args, meter):  # a port in use stops greenmeter here, before the command starts
                result = run_command(command, meter=meter, carbon=settings, store=store, name=args.name,
                                     interval_s=args.interval)
        finally:
            meter.close()
    m = result.measurement
    if args.json:
        payload = {"run_id": result.run_id, "exit_code": result.exit_code,
                   "interrupted_by": result.interrupted_by, "measurement": m.to_dict()}
        print(json.dumps(payload, indent=2), file=sys.stderr)
        return result.exit_code
    err = sys.stderr
    if result.interrupted_by:
        print(f"greenmeter: interrupted by {result.interrupted_by}: forwarded it to the command, which ended "
              f"with exit code {result.exit_code}; what was measured until then is kept", file=err)
    print(f"greenmeter: {terminal_text(shlex.join(command))} exited with {result.exit_code} after {m.duration_s:.2f} s",
          file=err)
    print(f"  energy   {m.energy_j:.3f} J (mean power {m.power_w:.2f} W)", file=err)
    print(f"  {terminal_text(m.band_note())}", file=err)
    if m.carbon is not None:
        print(f"  co2e     {m.carbon.describe()}", file=err)
    for domain in m.domains:
        share = "" if domain.in_total else " (inside another domain, not in total)"
        band = "" if domain.band is None else f" ({domain.band.low_j:.3f}-{domain.band.high_j:.3f})"
        print(f"  {domain.key:<24} {domain.energy_j:10.3f} J{band}{share}  {domain.provenance.describe()}", file=err)
    for flag in m.flags:
        print(f"  ! {terminal_text(flag)}", file=err)
    if result.run_id is not None and store is not None and result.store_error is None:
        print(f"  stored as run {result.run_id[:12]} in {terminal_text(store.path)}", file=err)
    return result.exit_code  # also when measuring or storing failed (said above): the command's code is kept


def cmd_runs(args: argparse.Namespace) -> int:
    """List stored runs, newest first; a run that did not end ``ok`` gets a line saying why."""
    from greenmeter._text import terminal_text
    from greenmeter.store.database import store_path

    path = store_path(args.store)
    if not path.exists():  # a fresh machine: nothing stored, and reading creates nothing
        print("[]" if args.json else f"no runs stored in {terminal_text(path)}")
        return 0
    with _store(args, readonly=True) as store:
        runs = store.list_runs(limit=args.limit, job=args.job)
        jobs = {r.id: store.run_job(r.id) for r in runs}
    if args.json:
        print(json.dumps([{**r.to_dict(), "job": jobs[r.id]} for r in runs], indent=2))
        return 0
    if not runs:
        where = f" of job {terminal_text(args.job)}" if args.job is not None else ""
        print(f"no runs{where} stored in {terminal_text(path)}")
        return 0
    job_texts = {run_id: _job_text(job) for run_id, job in jobs.items()}
    job_width = max((len(t) for t in job_texts.values()), default=0)
    job_head = f"{'job':<{max(job_width, 3)}}  " if job_width else ""  # the column only when a run has a job
    print(f"{'id':<12}  {'status':<11}  {'started (UTC)':<19}  {'duration':>9}  {'energy':>11}  {'band':>17}  "
          f"{'co2e':>10}  {job_head}name")
    for r in runs:
        m = r.measurement
        duration = f"{m.duration_s:.2f} s" if m else "-"
        energy = f"{m.energy_j:.2f} J" if m else "-"
        band = m.energy_band if m else None
        band_text = "-" if band is None else f"{band.low_j:.2f}-{band.high_j:.2f} J"
        co2 = f"{r.carbon.co2e_g:.4g} g" if r.carbon else "-"
        job = f"{job_texts[r.id] or '-':<{max(job_width, 3)}}  " if job_width else ""
        print(f"{r.id[:12]:<12}  {r.display_status:<11}  {r.started_at[:19].replace('T', ' '):<19}  {duration:>9}  "
              f"{energy:>11}  {band_text:>17}  {co2:>10}  {job}{terminal_text(r.name)}")
        why = r.note if r.note or r.complete else _UNFINISHED
        if why and r.status != "ok":
            print(f"{'':<14}{r.display_status}: {terminal_text(why)}")
    return 0


def _job_text(job: dict[str, str] | None) -> str:
    """A run's cluster job in the ``runs`` table: ``"4242"``, ``"4242 rank 1"`` where the run is one rank's; ``""``
    for a run outside a job."""
    from greenmeter._text import terminal_text

    if not job:
        return ""
    rank = f" rank {job['rank']}" if job.get("rank") else ""
    return terminal_text(f"{job['job_id']}{rank}")


def cmd_export(args: argparse.Namespace) -> int:
    from greenmeter._checks import output_file
    from greenmeter._text import terminal_text
    from greenmeter.output.export import export_runs

    if args.output:
        output_file("--output", args.output)  # its folder must exist before the runs are read and rendered
    with _store(args, readonly=True) as store:
        if args.last:
            last = store.last_run()
            if last is None:
                raise ConfigError(f"no runs stored in {store.path}: nothing to export")
            runs = [last]
        elif args.runs:
            runs = [store.get_run(run_id) for run_id in args.runs]
        else:
            raise ConfigError("name the runs to export (ids from `greenmeter runs`) or pass --last")
        text = export_runs(runs, args.format, training_type=args.training_type,
                           geographical_location=args.location)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {len(runs)} run(s) as {terminal_text(args.format)} to {terminal_text(args.output)}",
              file=sys.stderr)
    else:
        text = text if text.endswith("\n") else text + "\n"
        sys.stdout.write(terminal_text(text, multiline=True) if sys.stdout.isatty() else text)
    return 0


def cmd_carbon(args: argparse.Namespace) -> int:
    from greenmeter.carbon.settings import estimate_carbon, list_cloud_regions, list_countries

    if args.list_countries:
        for code, name, intensity, year in list_countries():
            print(f"{code}  {intensity:8.1f} g/kWh  {year or '':<4}  {name}")
        return 0
    if args.list_regions:
        for key, name, intensity in list_cloud_regions():
            print(f"{key:<36} {intensity:8.1f} g/kWh  {name}")
        return 0
    settings = carbon_settings(args)
    energy_j = args.kwh * 3.6e6  # --kwh is checked by its argparse type (0 to KWH_MAX)
    estimate = estimate_carbon(energy_j, settings)
    print(estimate.describe())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``greenmeter compare CONFIG``: run a comparison from a TOML file, store it, print its table."""
    from greenmeter._checks import output_file
    from greenmeter._text import terminal_text
    from greenmeter.comparison.config import load_compare_config
    from greenmeter.comparison.compare import check_settings, compare

    # everything the user gave is checked before the model is built and measured
    json_path = None if args.json is None else output_file("--json", args.json)
    config = load_compare_config(args.config)
    if args.device is not None:  # checked by its argparse type; it beats the file's model.device
        config = dataclasses.replace(config, device=args.device)
    overrides = {key: getattr(args, key) for key in ("repeats", "significance", "threads")
                 if getattr(args, key) is not None}
    check_settings(**overrides, label=lambda key: f"--{key}")
    if args.target_key is not None:  # checked by its argparse type; it beats the file's data.target_key
        overrides["target_key"] = args.target_key
    kwargs = {**config.build(), **overrides}
    with store_unless_off(args) as store:
        result = compare(**kwargs, store=store, progress=not args.quiet)
    print(result.table())
    _notes_json_store([*dict.fromkeys(f for v in result.variants for f in v.flags), *result.flags], result, json_path,
                      args.json, store, f" (run {result.run_id[:12] if result.run_id else '-'})")
    failed = [terminal_text(v.name) for v in result.variants if not v.ok]
    if failed:
        print(f"failed variants: {', '.join(failed)} (see the table)", file=sys.stderr)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """``greenmeter optimize CONFIG``: the variant with the least measured energy within the budget."""
    from greenmeter._checks import output_file
    from greenmeter._text import terminal_text
    from greenmeter.comparison.config import load_optimize_config
    from greenmeter.comparison.optimize import optimize

    if args.resume and args.no_store:
        raise ConfigError("--resume reads the search back from the store: drop --no-store")
    json_path = None if args.json is None else output_file("--json", args.json)
    config = load_optimize_config(args.config)
    if args.device is not None:
        config = dataclasses.replace(config, device=args.device)
    kwargs = config.optimize_kwargs()
    for key, value in (("max_drop", args.max_drop), ("time_budget_s", args.time_budget), ("save_to", args.save_to),
                       ("target_key", args.target_key)):
        if value is not None:
            kwargs[key] = value
    with store_unless_off(args) as store:
        result = optimize(**kwargs, store=store, progress=not args.quiet, resume=args.resume)
    print(result.comparison.table())
    print()
    print(result.table())
    print()
    for line in result.summary().splitlines():
        print(terminal_text(line))
    _notes_json_store(result.flags, result, json_path, args.json, store)
    return 0


def _notes_json_store(flags: Any, record: Any, json_path: Path | None, shown: str | None, store: Any,
                      stored: str = "") -> None:
    """The end of ``compare`` and ``optimize``'s output: each flag as a note, the record written as JSON to
    ``json_path`` (``shown`` is the path as the user typed it), and where it was stored (``stored`` appended)."""
    from greenmeter._text import terminal_text

    for flag in flags:
        print(f"note: {terminal_text(flag)}")
    if json_path is not None:
        json_path.write_text(record.to_json() + "\n", encoding="utf-8")
        print(f"wrote {terminal_text(shown)}")
    if store is not None:
        print(f"stored in {terminal_text(store.path)}{stored}")


def cmd_demo(args: argparse.Namespace) -> int:
    """``greenmeter demo``: train, compress, compare and report on bundled data; print the table and the paths."""
    from greenmeter._text import terminal_text
    from greenmeter.demo.run import run_demo
    from greenmeter.comparison.recommend import recommend

    result = run_demo(args.out, quick=args.quick, carbon=carbon_settings(args),
                      progress=not args.quiet, optimize=not args.no_optimize)
    c = result.comparison
    print(c.table())
    notes = list(c.flags) + list(dict.fromkeys(f for v in c.variants for f in v.flags))[:3]
    for note in notes:
        print(f"note: {terminal_text(note)}")
    rec = recommend(c)
    print(f"\nbaseline: {result.baseline_accuracy * 100:.2f}% accuracy after training "
          f"({result.training.energy_j:.4g} J, {result.training.duration_s:.1f} s)")
    print(f"recommended: {terminal_text(rec.name or 'none')} ({terminal_text(rec.reason)})")
    for label, value in rec.savings:
        print(f"  {label}: {value}")
    for note in rec.notes:  # the energy tie and the rule that broke it, the variants left out and why
        print(f"  - {terminal_text(note)}")
    if result.optimization is not None:
        print()
        for line in result.optimization.summary().splitlines():
            print(terminal_text(line))
        for flag in result.optimization.flags:
            print(f"note: {terminal_text(flag)}")
    print(f"\ndemo finished in {result.duration_s:.0f} s; files:")
    for label, path in result.files.items():
        print(f"  {label:<16} {terminal_text(path)}")
    print(f"\nopen the report: {terminal_text(result.files['report'].resolve())}")
    return 0

"""The ``greenmeter`` command line.

Commands:
    info     which energy sources are usable on this machine, which are not and why, with the fix.
    run      measure a command and its child processes, store the run, exit with its exit code.
    runs     list stored runs.
    export   export stored runs as CSV, JSON, CodeCarbon's emissions.csv or a model-card block.
    compare  compare a baseline and its compressed variants from a TOML file; print and store the result.
    carbon   look up grid intensities (list countries and cloud regions) and convert energy to CO2e.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from greenmeter._errors import GreenmeterError
from greenmeter._version import __version__

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from greenmeter.metering.host import describe_host
    from greenmeter.sources.select import describe_choice, probe_sources

    host = describe_host()
    results = probe_sources(mode=args.mode, sysfs_root=args.sysfs_root, use_psys=args.psys)
    if args.json:
        payload = {
            "host": host.to_dict(),
            "sources": [
                {
                    "backend": probe.backend,
                    "available": probe.available,
                    "reason": probe.reason,
                    "notes": list(probe.notes),
                    "domains": [
                        {"key": d.key, "kind": d.kind, "in_total": d.in_total, "provenance": d.provenance.to_dict(),
                         "update_period_s": d.update_period_s}
                        for d in probe.domains
                    ],
                }
                for _, probe in results
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    vm = {True: "virtual machine", False: "bare metal", None: "unknown"}[host.virtual_machine]
    print(f"greenmeter {__version__} on {host.hostname}: {host.cpu_model}, {host.logical_cpus} logical CPUs, {vm}")
    print(f"{host.os}, Python {host.python}")
    print()
    for backend, probe in results:
        status = "usable" if probe.available else "not usable"
        print(f"[{status}] {probe.backend}")
        if not probe.available:
            print(f"    why: {probe.reason}")
        for domain in probe.domains:
            total = "in total" if domain.in_total else "not in total (inside another domain)"
            print(f"    {domain.key} ({domain.kind}, {total}): {domain.provenance.describe()}")
        for note in probe.notes:
            print(f"    note: {note}")
        backend.close()
    print()
    for line in describe_choice(results):
        print(line)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenmeter",
        description="Measure, compress and compare PyTorch models for energy and carbon.",
    )
    parser.add_argument("--version", action="version", version=f"greenmeter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="show which energy sources are usable here, and why not")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.add_argument("--mode", choices=("process", "machine"), default="process",
                      help="scope of the estimates (default: process)")
    info.add_argument("--sysfs-root", default=None, help="sysfs root for RAPL (default: $GREENMETER_SYSFS_ROOT or /sys)")
    info.add_argument("--psys", action="store_true", help="count RAPL's psys domain alone as the CPU total")
    info.set_defaults(handler=_cmd_info)

    from greenmeter.cli import commands as cc
    from greenmeter.cli.report import FormatChoices, add_report_commands

    store_help = "run store path (default: $GREENMETER_STORE, else $XDG_DATA_HOME/greenmeter/runs.db)"
    run = commands.add_parser(
        "run", help="measure a command and its children: greenmeter run [OPTIONS] -- CMD ARGS...",
        description="Measure a command (and every process it starts), print a summary to standard error, "
                    "store the run, and exit with the command's exit code.",
    )
    cc.add_carbon_options(run)
    run.add_argument("--store", default=None, help=store_help)
    run.add_argument("--no-store", action="store_true", help="measure and print, but store nothing")
    run.add_argument("--name", default=None, help="a name for the run (default: the command line)")
    run.add_argument("--mode", choices=("process", "machine"), default="process",
                     help="scope of the estimates: the command's process tree (default) or the whole machine")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between power-timeline samples")
    run.add_argument("--json", action="store_true", help="print the measurement as JSON (to standard error)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    run.set_defaults(handler=cc.cmd_run)

    runs = commands.add_parser("runs", help="list stored runs, newest first")
    runs.add_argument("--store", default=None, help=store_help)
    runs.add_argument("--limit", type=int, default=20, help="how many runs to show (default 20)")
    runs.add_argument("--json", action="store_true", help="print machine-readable JSON")
    runs.set_defaults(handler=cc.cmd_runs)

    export = commands.add_parser("export", help="export stored runs")
    export.add_argument("runs", nargs="*", metavar="RUN", help="run ids or unique prefixes (see `greenmeter runs`)")
    export.add_argument("--last", action="store_true", help="export the most recent run")
    export.add_argument("--format", choices=FormatChoices("runs"), metavar="FORMAT", default="json",
                        help="%(choices)s (default json)")
    export.add_argument("-o", "--output", default=None, help="write to this file (default: standard output)")
    export.add_argument("--store", default=None, help=store_help)
    export.add_argument("--training-type", default="pre-training",
                        help="model-card training_type (e.g. pre-training, fine-tuning)")
    export.add_argument("--location", default=None,
                        help="model-card geographical_location (default: the run's grid region)")
    export.set_defaults(handler=cc.cmd_export)

    comp = commands.add_parser(
        "compare", help="compare a model and its variants described in a TOML file",
        description="Build the variants a TOML file describes, measure them side by side (interleaved repeats), "
                    "print the table and store the comparison. See docs/compare.md for the file format.",
    )
    comp.add_argument("config", help="the comparison's TOML file")
    comp.add_argument("--repeats", type=int, default=None, help="override compare.repeats")
    comp.add_argument("--significance", choices=("welch", "bootstrap"), default=None,
                      help="override compare.significance: the test of each variant's energy against the baseline")
    comp.add_argument("--threads", type=int, default=None, metavar="N",
                      help="override compare.threads: PyTorch threads for the comparison (default: torch's setting)")
    comp.add_argument("--json", default=None, metavar="PATH", help="also write the comparison as JSON to PATH")
    comp.add_argument("--store", default=None, help=store_help)
    comp.add_argument("--no-store", action="store_true", help="do not store the comparison")
    comp.add_argument("--quiet", action="store_true", help="no progress on standard error")
    comp.set_defaults(handler=cc.cmd_compare)

    add_report_commands(commands, store_help)

    demo = commands.add_parser(
        "demo", help="train, compress, compare and report on bundled data (digits), in one command",
        description="Train a CNN on scikit-learn's digits under @greenmeter.track, build every compression variant, "
                    "compare them side by side and write the HTML report. About 90 s on 2 cores "
                    "(--quick: about 35 s).",
    )
    demo.add_argument("--quick", action="store_true", help="a smaller run (fewer epochs and repeats), for CI")
    demo.add_argument("--out", default="greenmeter-demo", help="output folder (default ./greenmeter-demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress on standard error")
    cc.add_carbon_options(demo)
    demo.set_defaults(handler=cc.cmd_demo)

    carbon = commands.add_parser("carbon", help="grid intensities and energy-to-CO2e conversion, offline")
    carbon.add_argument("--list-countries", action="store_true", help="list country codes with their intensity")
    carbon.add_argument("--list-regions", action="store_true", help="list cloud regions with their intensity")
    carbon.add_argument("--kwh", type=float, default=1.0, help="energy to convert, in kWh (default 1)")
    cc.add_carbon_options(carbon)
    carbon.set_defaults(handler=cc.cmd_carbon)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except GreenmeterError as err:
        print(f"greenmeter: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback; a run being stored was finished as interrupted on the way out.
        print("greenmeter: interrupted (Ctrl-C); what was stored so far is kept, its run marked interrupted",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`greenmeter carbon --list-countries | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``greenmeter`` command line.

Commands:
    info     which energy sources are usable on this machine, which are not and why, with the fix.
    run      measure a command and its child processes, store the run, exit with its exit code.
    runs     list stored runs.
    export   export stored runs as CSV, JSON, CodeCarbon's emissions.csv or a model-card block.
    compare  compare a baseline and its compressed variants from a TOML file; print and store the result.
    carbon   look up grid intensities (list countries and cloud regions) and convert energy to CO2e.
    calibrate  fit this machine's power coefficients to a wall meter's log of stored runs (greenmeter.cli.calibrate).
    export-model  write a variant to ONNX and measure it under ONNX Runtime (greenmeter.cli.export_model).

Exit codes: 0 done (``run``: the command's own code); 1 a user error, said in one line
``greenmeter: error: ...`` (a wrong option or file, an unusable store or source); 2 a command-line usage
error (argparse); 70 a bug in greenmeter (the traceback, then a line asking to report it); 130 Ctrl-C, 143
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence

from greenmeter._errors import GreenmeterError
from greenmeter._version import __version__

__all__ = ["EXIT_INTERNAL_ERROR", "main"]

#: The exit code of a bug in greenmeter (an exception that is not a GreenmeterError): sysexits' EX_SOFTWARE.
EXIT_INTERNAL_ERROR = 70


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
                         "update_period_s": d.update_period_s, "band": None if d.band is None else d.band.to_dict()}
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
            print(f"    band: {'none stated' if domain.band is None else domain.band.basis}")
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
    from greenmeter.cli.arguments import LIMIT_MAX, device_arg, number_arg, target_key_arg, whole_number_arg
    from greenmeter.cli.calibrate import add_calibrate_command
    from greenmeter.cli.export_model import add_export_model_command
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
    run.add_argument("--metrics-port", type=whole_number_arg("--metrics-port", minimum=0, maximum=65535), default=None,
                     metavar="PORT", help="serve live power, energy and CO2e per domain for Prometheus on this port "
                                          "while the command runs (0 picks a free one; needs greenmeter[metrics])")
    run.add_argument("--metrics-addr", default=None, metavar="ADDR",
                     help="the address --metrics-port listens on (default 127.0.0.1: this machine only)")
    run.add_argument("--metrics-file", default=None, metavar="PATH",
                     help="write the same metrics to PATH in node-exporter textfile format (e.g. a .prom file in the "
                          "textfile collector's folder), every --metrics-interval and once at the end")
    run.add_argument("--metrics-interval", type=number_arg("--metrics-interval", low=0, low_open=True, unit="seconds"),
                     default=None, metavar="S", help="seconds between rewrites of --metrics-file (default 10)")
    run.add_argument("--json", action="store_true", help="print the measurement as JSON (to standard error)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    run.set_defaults(handler=cc.cmd_run)

    runs = commands.add_parser("runs", help="list stored runs, newest first")
    runs.add_argument("--store", default=None, help=store_help)
    runs.add_argument("--limit", type=whole_number_arg("limit", minimum=0, maximum=LIMIT_MAX), default=20,
                      help="how many runs to show (default 20)")
    runs.add_argument("--json", action="store_true", help="print machine-readable JSON")
    runs.add_argument("--job", default=None, metavar="JOBID",
                      help="only the runs of this cluster job (its SLURM_JOB_ID)")
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

    device_help = ("override model.device: where the baseline runs (cpu, cuda, cuda:1); int8 variants run on the "
                   "CPU, where PyTorch's int8 kernels are")
    comp = commands.add_parser(
        "compare", help="compare a model and its variants described in a TOML file",
        description="Build the variants a TOML file describes, measure them side by side (interleaved repeats), "
                    "print the table and store the comparison. See docs/compare.md for the file format.",
    )
    comp.add_argument("config", help="the comparison's TOML file")
    comp.add_argument("--repeats", type=int, default=None, help="override compare.repeats (1 to 1000)")
    comp.add_argument("--significance", choices=("paired", "welch", "bootstrap"), default=None,
                      help="override compare.significance: the test of each variant's energy against the baseline")
    comp.add_argument("--threads", type=int, default=None, metavar="N",
                      help="override compare.threads: PyTorch threads for the comparison (default: torch's setting)")
    comp.add_argument("--target-key", type=target_key_arg, default=None, metavar="KEY",
                      help="override data.target_key: the key of the targets in dict batches (default labels)")
    comp.add_argument("--device", type=device_arg, default=None, metavar="DEVICE", help=device_help)
    comp.add_argument("--json", default=None, metavar="PATH", help="also write the comparison as JSON to PATH")
    comp.add_argument("--store", default=None, help=store_help)
    comp.add_argument("--no-store", action="store_true", help="do not store the comparison")
    comp.add_argument("--quiet", action="store_true", help="no progress on standard error")
    comp.set_defaults(handler=cc.cmd_compare)

    opt = commands.add_parser(
        "optimize", help="find the variant with the least measured energy within an accuracy budget",
        description="Measure per-layer sensitivity, build single and stacked recipes, drop those outside the budget, "
                    "screen the rest on measured energy (successive halving) and compare the finalists side by "
                    "side; print the choice, the evidence and every candidate. See docs/optimize.md.",
    )
    opt.add_argument("config", help="the TOML file: [model], [data], [training] as for compare, and [optimize]")
    opt.add_argument("--max-drop", type=number_arg("--max-drop", low=0), default=None, metavar="D",
                     help="override optimize.max_drop: the metric budget in its unit (0.005 = 0.5 pp of accuracy)")
    opt.add_argument("--time-budget", type=number_arg("--time-budget", low=0, unit="seconds"), default=None,
                     metavar="S", help="override optimize.time_budget_s: seconds before the final comparison")
    opt.add_argument("--target-key", type=target_key_arg, default=None, metavar="KEY",
                     help="override data.target_key: the key of the targets in dict batches (default labels)")
    opt.add_argument("--device", type=device_arg, default=None, metavar="DEVICE", help=device_help)
    opt.add_argument("--save-to", default=None, metavar="DIR", help="save the chosen model (state dict, recipe, "
                                                                     "exported program) in DIR")
    opt.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON to PATH")
    opt.add_argument("--resume", action="store_true",
                     help="go on with the unfinished search of the same config journaled in the store (an interrupted "
                          "one): its sensitivity, built candidates and screening rounds are read back")
    opt.add_argument("--store", default=None, help=store_help)
    opt.add_argument("--no-store", action="store_true", help="do not store the comparisons (nor journal the search, "
                                                             "which then cannot be resumed)")
    opt.add_argument("--quiet", action="store_true", help="no progress on standard error")
    opt.set_defaults(handler=cc.cmd_optimize)

    add_report_commands(commands, store_help)
    add_calibrate_command(commands, store_help)
    add_export_model_command(commands, store_help)

    demo = commands.add_parser(
        "demo", help="train, compress, compare and report on bundled data (digits), in one command",
        description="Train a CNN on scikit-learn's digits under @greenmeter.track, build every compression variant, "
                    "compare them side by side, ask optimize for the cheapest variant within 0.5 pp of accuracy, and "
                    "write the HTML reports. About 3 minutes on 2 cores (--quick: about 70 s).",
    )
    demo.add_argument("--quick", action="store_true", help="a smaller run (fewer epochs and repeats), for CI")
    demo.add_argument("--out", default="greenmeter-demo", help="output folder (default ./greenmeter-demo)")
    demo.add_argument("--no-optimize", action="store_true",
                      help="skip the optimize step (the cheapest variant within 0.5 pp of accuracy)")
    demo.add_argument("--quiet", action="store_true", help="no progress on standard error")
    cc.add_carbon_options(demo)
    demo.set_defaults(handler=cc.cmd_demo)

    carbon = commands.add_parser("carbon", help="grid intensities and energy-to-CO2e conversion, offline")
    carbon.add_argument("--list-countries", action="store_true", help="list country codes with their intensity")
    carbon.add_argument("--list-regions", action="store_true", help="list cloud regions with their intensity")
    carbon.add_argument("--kwh", type=number_arg("kwh", low=0, high=cc.KWH_MAX, unit="kWh"), default=1.0,
                        help="energy to convert, in kWh (default 1)")
    cc.add_carbon_options(carbon)
    carbon.set_defaults(handler=cc.cmd_carbon)
    return parser


def _report_here() -> str:
    """Where to report a bug: the project's issue tracker from the installed metadata, when it names one."""
    from importlib import metadata

    try:
        urls = metadata.metadata("greenmeter").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        urls = []
    found = dict((label.strip().lower(), url.strip()) for label, _, url in (u.partition(",") for u in urls))
    for label in ("issues", "bug tracker", "bugs", "tracker", "source", "repository", "homepage"):
        if found.get(label):
            return f"at {found[label]}"
    return "to the greenmeter developers"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    A user error (any :class:`~greenmeter.GreenmeterError`, or a file or folder the system refuses) is one line
    on standard error, ``greenmeter: error: ...``, and exit code 1; a usage error is argparse's (exit 2). Any
    other exception is a bug in greenmeter: its traceback, then a line asking to report it, and exit code 70.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from greenmeter._text import terminal_text
    from greenmeter.metering.interrupts import exit_code_for, sigterm_interrupts

    try:
        with sigterm_interrupts():  # SIGTERM is an interruption, as Ctrl-C is (`greenmeter run` forwards both)
            return int(args.handler(args))
    except GreenmeterError as err:  # one line, even where a vendor's message held several
        said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"greenmeter: error: {terminal_text(said)}", file=sys.stderr)  # user strings: no raw escapes
        return 1
    except KeyboardInterrupt as err:
        # Ctrl-C or SIGTERM: one line, no traceback; a run being stored was finished as interrupted on the way out.
        said = getattr(err, "signal_name", "Ctrl-C")
        print(f"greenmeter: interrupted ({said}); what was stored so far is kept, its run marked interrupted",
              file=sys.stderr)
        return exit_code_for(err)  # 130 for Ctrl-C, 143 for SIGTERM
    except BrokenPipeError:
        # The reader went away (`greenmeter carbon --list-countries | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        # The system refused a file or folder (a disk filled up, a folder removed while writing): the user's
        # machine, not a bug; the paths named up front were checked before the work.
        where = f": {err.filename}" if err.filename else ""
        print(f"greenmeter: error: {terminal_text(f'{err.strerror or err}{where}')}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"greenmeter: internal error: this is a bug in greenmeter {__version__}; please report it with the "
              f"traceback above {_report_here()}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

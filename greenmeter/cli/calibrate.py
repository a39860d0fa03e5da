"""``greenmeter calibrate``: fit this machine's power coefficients to a wall meter's log of stored runs.

    greenmeter calibrate --load-ladder [--step-seconds S]     # known loads, stored as runs, while the meter logs
    greenmeter calibrate LOG [--format F] [--offset-range S]  # align, fit, store the meter's energy and the profile

See docs/calibration.md. The calibration stage is imported when the verb runs, so ``greenmeter --help`` stays quick.
"""

from __future__ import annotations

import argparse
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.cli.arguments import number_arg, whole_number_arg

__all__ = ["add_calibrate_command", "cmd_calibrate"]

_FORMATS = ("auto", "csv", "ipmitool", "plug")


def add_calibrate_command(commands: Any, store_help: str) -> None:
    """Add the ``calibrate`` verb to the command line's subparsers."""
    cal = commands.add_parser(
        "calibrate", help="fit this machine's power coefficients to a wall meter's log of stored runs",
        description="Read an external power meter's log, align it to the stored runs (searching the meter clock's "
                    "offset), add the meter's energy to each run as a measured 'meter:wall' domain, fit idle watts, "
                    "watts per busy CPU and watts per GB by least squares, and store the profile that later CPU and "
                    "RAM estimates on this host use. --load-ladder first runs a few minutes of known loads as stored "
                    "runs. See docs/calibration.md.",
    )
    cal.add_argument("log", nargs="?", metavar="LOG", help="the meter's power log (CSV, ipmitool text or plug export)")
    cal.add_argument("--format", choices=_FORMATS, default="auto",
                     help="the log's format (default: auto, from its first lines)")
    cal.add_argument("--time-column", default=None, metavar="NAME|INDEX",
                     help="CSV: the column of the times, by header name or 0-based index (default: found by name)")
    cal.add_argument("--watts-column", default=None, metavar="NAME|INDEX",
                     help="CSV: the column of the watts (plug: of the Wh), by name or 0-based index")
    cal.add_argument("--offset-range", type=number_arg("--offset-range", low=0, high=86400, unit="seconds"),
                     default=120.0, metavar="S",
                     help="search the meter clock's offset from -S to +S seconds (default 120)")
    cal.add_argument("--store", default=None, help=store_help)
    cal.add_argument("--load-ladder", action="store_true",
                     help="first run the load ladder (idle, one core, all cores, memory-bound) and store it as runs")
    cal.add_argument("--step-seconds", type=number_arg("--step-seconds", low=0, low_open=True, high=3600,
                                                       unit="seconds"),
                     default=None, metavar="S", help="with --load-ladder: each step's length (default 20)")
    cal.add_argument("--repeats", type=whole_number_arg("repeats", minimum=1, maximum=100), default=2,
                     help="with --load-ladder: how many times the four steps run (default 2)")
    cal.add_argument("--memory-gb", type=number_arg("--memory-gb", low=0, low_open=True, high=1024, unit="GB"),
                     default=None, metavar="GB",
                     help="with --load-ladder: the memory step's buffer (default a quarter of the free memory, "
                          "0.1 to 2)")
    cal.add_argument("--dry-run", action="store_true", help="fit and print, but store nothing")
    cal.add_argument("--quiet", action="store_true", help="no ladder progress on standard error")
    cal.set_defaults(handler=cmd_calibrate)


def _column(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.strip().isdigit() else text


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run ``greenmeter calibrate``; returns the exit code (0)."""
    from greenmeter.calibration import DEFAULT_OFFSET_RANGE_S, calibrate, read_meter_log, run_load_ladder
    from greenmeter.calibration.ladder import DEFAULT_STEP_S
    from greenmeter.store.database import Store

    if args.log is None and not args.load_ladder:
        raise ConfigError("give the meter's log (greenmeter calibrate LOG), or run the load ladder first with "
                          "--load-ladder while the meter logs")
    for given, option in ((args.step_seconds, "--step-seconds"), (args.memory_gb, "--memory-gb")):
        if given is not None and not args.load_ladder:
            raise ConfigError(f"{option} applies to --load-ladder only")
    if args.dry_run and args.load_ladder:
        raise ConfigError("--dry-run stores nothing, but --load-ladder stores its runs; run them apart")
    log = None
    if args.log is not None:  # read (and check) the log before any ladder runs
        log = read_meter_log(args.log, args.format, time_column=_column(args.time_column),
                             watts_column=_column(args.watts_column))
    with Store(args.store) as store:
        if args.load_ladder:
            ids = run_load_ladder(store, step_s=args.step_seconds or DEFAULT_STEP_S, repeats=args.repeats,
                                  memory_gb=args.memory_gb, progress=not args.quiet)
            print(f"stored {len(ids)} ladder runs in {store.path}")
            if log is None:
                print("next: stop the meter's log and run `greenmeter calibrate LOG`")
                return 0
            log = read_meter_log(args.log, args.format, time_column=_column(args.time_column),
                                 watts_column=_column(args.watts_column))  # again: it may have grown meanwhile
        result = calibrate(log, store, offset_range_s=args.offset_range if args.offset_range is not None
                           else DEFAULT_OFFSET_RANGE_S, dry_run=args.dry_run)
    for line in result.lines():
        print(line)
    for note in result.log.notes:
        print(f"note: {note}")
    return 0

"""``greenmeter report``, ``greenmeter comparisons`` and ``greenmeter optimizations``: render and list what the
run store holds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.cli.arguments import LIMIT_MAX, whole_number_arg
from greenmeter.output.formats import REPORT_SUBJECTS, format_for_path, format_names, get_format

__all__ = ["FormatChoices", "add_report_commands", "cmd_comparisons", "cmd_optimizations", "cmd_report"]


class FormatChoices:
    """The ``--format`` choices of a command: the registered formats for its subjects, read from the
    format registry only when argparse first checks a value or prints the help, so that building the
    parser (``greenmeter --help``, ``greenmeter info``) loads no format plug-in."""

    def __init__(self, *subjects: str) -> None:
        self.subjects = subjects

    def _names(self) -> tuple[str, ...]:
        try:
            return format_names(self.subjects)
        except ConfigError as err:  # a broken plug-in: argparse reports it as a usage error, not a traceback
            raise argparse.ArgumentError(None, str(err)) from err

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def add_report_commands(commands: argparse._SubParsersAction, store_help: str) -> None:  # type: ignore[type-arg]
    """Register ``report``, ``comparisons`` and ``optimizations`` on the command line's sub-commands."""
    report = commands.add_parser(
        "report", help="render a stored comparison, optimization or run as a self-contained HTML page (or md, csv, "
                       "json)",
        description="Render what the run store holds (nothing is re-run): a comparison, an optimization or a run "
                    "by id or unique prefix, --last (the latest comparison, else the latest run), --last-run or "
                    "--last-optimization. An optimization's report is its final comparison's with a decision "
                    "section; csv does not render one.",
    )
    report.add_argument("ident", nargs="?", metavar="ID",
                        help="a comparison, optimization or run id, or a unique prefix (see `greenmeter "
                             "comparisons`, `greenmeter optimizations`, `greenmeter runs`)")
    report.add_argument("--last", action="store_true", help="the latest comparison (else the latest run)")
    report.add_argument("--last-run", action="store_true", help="the latest run")
    report.add_argument("--last-optimization", action="store_true",
                        help="the latest optimization (`greenmeter optimize`, greenmeter.optimize)")
    report.add_argument("-o", "--output", default=None,
                        help="file to write (default greenmeter-report with the format's extension; '-' for "
                             "standard output)")
    report.add_argument("--format", choices=FormatChoices(*REPORT_SUBJECTS), metavar="FORMAT", default=None,
                        help="output format: %(choices)s (default: from the --output suffix, else html)")
    report.add_argument("--tolerance", type=float, default=None,
                        help="metric tolerance of the recommendation, in the metric's unit "
                             "(default 0.01 = 1 percentage point of accuracy); an optimization is judged at its "
                             "own budget")
    report.add_argument("--store", default=None, help=store_help)
    report.set_defaults(handler=cmd_report)

    listing = commands.add_parser("comparisons", help="list stored comparisons, newest first")
    listing.add_argument("--store", default=None, help=store_help)
    listing.add_argument("--limit", type=whole_number_arg("limit", minimum=0, maximum=LIMIT_MAX), default=20,
                         help="how many to show (default 20)")
    listing.set_defaults(handler=cmd_comparisons)

    optimizations = commands.add_parser("optimizations", help="list stored optimizations, newest first")
    optimizations.add_argument("--store", default=None, help=store_help)
    optimizations.add_argument("--limit", type=whole_number_arg("limit", minimum=0, maximum=LIMIT_MAX), default=20,
                               help="how many to show (default 20)")
    optimizations.set_defaults(handler=cmd_optimizations)


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output and args.output != "-":
        found = format_for_path(args.output, REPORT_SUBJECTS)
        if found is None:
            extensions = list(dict.fromkeys(get_format(name).extension for name in format_names(REPORT_SUBJECTS)))
            listed = ", ".join(extensions[:-1]) + f" or {extensions[-1]}" if len(extensions) > 1 else extensions[0]
            raise ConfigError(f"cannot tell the format from {args.output!r}: use a {listed} name, or --format")
        return found.name
    return "html"


def cmd_report(args: argparse.Namespace) -> int:
    """Render the chosen record and write it (or print it with ``-o -``; on a terminal, control characters
    are shown as escapes)."""
    from greenmeter._text import terminal_text
    from greenmeter.output.report import optimize_report, store_report, write_report
    from greenmeter._checks import output_file
    from greenmeter.comparison.recommend import DEFAULT_TOLERANCE, check_tolerance
    from greenmeter.store.database import Store

    chosen = [x for x in (args.ident, args.last or None, args.last_run or None, args.last_optimization or None) if x]
    if len(chosen) != 1:
        raise ConfigError("name one thing to report: an ID, --last, --last-run or --last-optimization")
    fmt = _format(args)
    if args.last_optimization:
        get_format(fmt, "optimization")  # csv renders no decision: refused before the store is read
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else check_tolerance(args.tolerance)
    if args.output != "-":  # writable (write_report makes missing folders) before anything is read or rendered
        output_file("--output", args.output or f"greenmeter-report{get_format(fmt).extension}", make_folders=True)
    with Store(args.store, readonly=True) as store:  # reading needs no write access
        if args.last_run:
            run = store.last_run()
            if run is None:
                raise ConfigError(f"the store {store.path} holds no run yet")
            kind, text = store_report(store, run.id, fmt, tolerance=tolerance)
        elif args.last_optimization:
            result = store.last_optimization()
            if result is None:
                raise ConfigError(f"the store {store.path} holds no optimization yet: run `greenmeter optimize` "
                                  "(or greenmeter.optimize with a store) first")
            kind, text = "optimization", optimize_report(result, fmt)
        else:
            kind, text = store_report(store, args.ident, fmt, tolerance=tolerance)
    if args.output == "-":
        sys.stdout.write(terminal_text(text, multiline=True) if sys.stdout.isatty() else text)
        return 0
    path = write_report(text, args.output or f"greenmeter-report{get_format(fmt).extension}", fmt=fmt)
    print(f"wrote the {kind} report to {terminal_text(path)}")
    return 0


def _stored_rows(args: argparse.Namespace, listing: Callable[[Any], list[Any]]) -> tuple[Path, list[Any]]:
    """``listing(store)`` of the store ``--store`` names, opened read-only, and its path; a missing store holds
    nothing and is not created."""
    from greenmeter.store.database import Store, store_path

    path = store_path(args.store)
    if not path.exists():
        return path, []
    with Store(path, readonly=True) as store:
        return path, listing(store)


def cmd_comparisons(args: argparse.Namespace) -> int:
    """List stored comparisons: id, creation time, variant count, status, name (read-only; a missing store holds none)."""
    from greenmeter._text import terminal_text

    path, rows = _stored_rows(args, lambda store: store.list_comparisons(limit=args.limit))
    if not rows:
        print(f"no comparisons stored in {terminal_text(path)}")
        return 0
    print(f"{'id':<12}  {'created (UTC)':<19}  {'variants':>8}  {'status':<11}  name")
    for cid, name, created, count, status in rows:
        print(f"{cid[:12]:<12}  {created[:19].replace('T', ' '):<19}  {count:>8}  {status:<11}  "
              f"{terminal_text(name)}")
    return 0


def cmd_optimizations(args: argparse.Namespace) -> int:
    """List stored optimizations: id, creation time, the chosen variant, name; then the unfinished searches a
    ``--resume`` can go on with (read-only; a missing store holds none)."""
    from greenmeter._text import terminal_text

    path, found = _stored_rows(args, lambda store: [(store.list_optimizations(limit=args.limit),
                                                     store.unfinished_searches())])
    rows, unfinished = found[0] if found else ([], [])
    if not rows:
        print(f"no optimizations stored in {terminal_text(path)}")
    else:
        print(f"{'id':<12}  {'created (UTC)':<19}  {'chosen':<24}  name")
        for oid, name, created, chosen, _ in rows:
            print(f"{oid[:12]:<12}  {created[:19].replace('T', ' '):<19}  {terminal_text(chosen):<24}  "
                  f"{terminal_text(name)}")
    if unfinished:  # interrupted searches: what each holds, and how to go on
        print("\nunfinished searches (run the same config with `greenmeter optimize CONFIG --resume` to go on):")
        for _, name, updated, _, spent_s, steps in unfinished:
            print(f"  {terminal_text(name)}: {steps} step(s) journaled, {spent_s:.0f} s spent, last at "
                  f"{updated[:19].replace('T', ' ')}")
    return 0

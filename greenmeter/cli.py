"""The ``greenmeter`` command line.

Commands:
    info    which energy sources are usable on this machine, which are not and why, with the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from greenmeter._errors import GreenmeterError
from greenmeter._version import __version__

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from greenmeter.host import describe_host
    from greenmeter.meter import probe_sources

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
    usable = {probe.backend for _, probe in results if probe.available}
    print()
    if "rapl" in usable:
        print("CPU energy will be measured by RAPL.")
    else:
        print("CPU energy will be ESTIMATED (cpu-estimate): no usable RAPL counter; see 'why' above for the fix.")
    if "nvml" in usable:
        print("GPU energy will be measured by NVML.")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

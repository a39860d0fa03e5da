"""Facts about this machine's CPU, for the CPU power estimate: ``/proc/cpuinfo`` and CodeCarbon's TDP table.

Two sources, both read as plain files:

- ``/proc/cpuinfo`` (path configurable, so tests use a fake file): the model name, vendor, threads per
  socket (``siblings``), sockets (distinct ``physical id``), and the ``hypervisor`` flag that Linux sets
  inside a virtual machine. The logical CPUs this process may run on come from ``os.sched_getaffinity``.
- CodeCarbon's table of thermal design power, ``codecarbon/data/hardware/cpu_power.csv``. It is located
  with ``importlib.util.find_spec`` and read with :mod:`csv`; **codecarbon itself is never imported**
  (importing it is slow and initialises hardware).

A model name is matched to the table exactly (case-insensitive, whitespace collapsed), first as it is,
then with the decorations vendors add to the brand string removed: ``(R)``/``(TM)`` marks, an
``"12th Gen "`` prefix, ``" CPU"``, ``" @ 2.40GHz"``, a trailing ``" 32-Core Processor"`` or
``" Processor"``, and an AMD APU's ``" with Radeon ... Graphics"``. Nothing fuzzier: a wrong TDP is
worse than none, because the caller then says out loud that it fell back to generic coefficients.

Parsed files are cached per path and file version (inode, mtime, size) for the life of the process.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuFacts",
    "TdpMatch",
    "codecarbon_tdp_table_path",
    "is_generic_model_name",
    "lookup_tdp",
    "normalise_model_name",
    "read_cpu_facts",
]

_DEFAULT_CPUINFO = "/proc/cpuinfo"

# Brand-string decorations, removed in this order by normalise_model_name.
_MARKS = re.compile(r"\((?:R|TM)\)", re.IGNORECASE)
_GEN_PREFIX = re.compile(r"^\d+(?:st|nd|rd|th) Gen ", re.IGNORECASE)
_CLOCK = re.compile(r"\s*@\s*\d+(?:\.\d+)?\s*[GM]Hz\b", re.IGNORECASE)
_CPU_WORD = re.compile(r"\s+CPU\b")
_CORES_SUFFIX = re.compile(r"\s+\d+-Cores?(?:\s+Processor)?$", re.IGNORECASE)
_RADEON_SUFFIX = re.compile(r"\s+with Radeon\b.*$", re.IGNORECASE)
_PROCESSOR_SUFFIX = re.compile(r"\s+Processor$", re.IGNORECASE)
_BRAND_CORES = re.compile(r"\b(\d+)-Cores?\b", re.IGNORECASE)
# Names hypervisors give their virtual CPU models; they say nothing about the physical chip.
_PLACEHOLDERS = ("qemu virtual cpu", "common kvm processor", "common 32-bit kvm processor")


@dataclass(frozen=True)
class CpuFacts:
    """What ``/proc/cpuinfo`` and the scheduler say about this machine's CPU.

    Attributes:
        cpuinfo_path: the file that was read.
        model_name: the ``model name`` of the first processor, ``None`` when absent or unreadable.
        vendor_id: ``AuthenticAMD``, ``GenuineIntel``... or ``None``.
        cpu_family: the ``cpu family`` number, or ``None``.
        threads_per_socket: ``siblings`` (logical CPUs per physical package), or ``None`` when absent.
        cores_per_socket: ``cpu cores``, or ``None`` when absent.
        sockets: distinct ``physical id`` values; 1 when the file names none.
        hypervisor: ``True`` when the ``hypervisor`` flag is set (Linux runs as a virtual machine guest).
        brand_cores: the core count written in the brand string (``"... 32-Core Processor"``), or ``None``.
        visible_cpus: logical CPUs this process may run on (``os.sched_getaffinity``).
        logical_cpus: logical CPUs of the machine (``os.cpu_count()``).
        error: why the file could not be read; empty when it was.
    """

    cpuinfo_path: str
    model_name: str | None
    vendor_id: str | None
    cpu_family: int | None
    threads_per_socket: int | None
    cores_per_socket: int | None
    sockets: int
    hypervisor: bool
    brand_cores: int | None
    visible_cpus: int
    logical_cpus: int
    error: str = ""

    @property
    def readable(self) -> bool:
        """Whether the cpuinfo file was read."""
        return not self.error


@dataclass(frozen=True)
class TdpMatch:
    """A row of CodeCarbon's TDP table that matched this CPU's model name.

    Attributes:
        tdp_w: thermal design power of one physical package, in watts.
        table_name: the ``Name`` column of the row, as written in the table.
        normalised_name: the model name as it was matched (after :func:`normalise_model_name`).
        table_path: the CSV file.
        codecarbon_version: the installed codecarbon distribution's version, or ``"unknown"``.
    """

    tdp_w: float
    table_name: str
    normalised_name: str
    table_path: str
    codecarbon_version: str

    def describe(self) -> str:
        """One line for provenance: which table, which row, which version."""
        return (
            f"CodeCarbon {self.codecarbon_version} cpu_power.csv row {self.table_name!r} "
            f"({self.tdp_w:g} W), matched exactly as {self.normalised_name!r}"
        )


def normalise_model_name(name: str) -> str:
    """Remove the decorations vendors add to a CPU brand string, leaving the model.

    ``"Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"`` becomes ``"Intel Xeon Gold 6148"`` and
    ``"AMD EPYC 7601 32-Core Processor"`` becomes ``"AMD EPYC 7601"``. Pure; no lookup.

    Args:
        name: a ``model name`` line from ``/proc/cpuinfo``.

    Returns:
        The name with marks, clock speed, ``CPU``, core-count and graphics suffixes removed and
        whitespace collapsed.
    """
    text = " ".join(name.split())
    text = _MARKS.sub("", text)
    text = _GEN_PREFIX.sub("", text)
    text = _CLOCK.sub("", text)
    text = _CPU_WORD.sub("", text)
    text = _RADEON_SUFFIX.sub("", text)
    text = _CORES_SUFFIX.sub("", text)
    text = _PROCESSOR_SUFFIX.sub("", text)
    return " ".join(text.split())


def is_generic_model_name(name: str | None) -> bool:
    """Whether a model name names no particular chip (``"AMD EPYC"``, ``"QEMU Virtual CPU version 2.5+"``).

    A name is generic when it is a hypervisor's placeholder or when, once normalised, none of its
    words holds a digit (real model numbers always do: ``7601``, ``i7-1068NG7``, ``M1``).
    """
    if not name or not name.strip():
        return True
    lowered = " ".join(name.split()).lower()
    if lowered.startswith(_PLACEHOLDERS):
        return True
    return not any(ch.isdigit() for ch in normalise_model_name(name))


def read_cpu_facts(cpuinfo_path: str | os.PathLike[str] = _DEFAULT_CPUINFO) -> CpuFacts:
    """Read CPU facts. The file is parsed once per path and version (inode, mtime, size) and cached; the
    CPU affinity is read on each call.

    Never raises for a missing or unreadable file: ``CpuFacts.error`` says what went wrong.

    Args:
        cpuinfo_path: the cpuinfo file, ``/proc/cpuinfo`` by default.
    """
    path = os.fspath(cpuinfo_path)
    try:
        stat = os.stat(path)
        version: tuple[int, int, int] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (0, 0, 0)
    parsed = _parse_cpuinfo(path, version)
    logical = os.cpu_count() or 1
    try:
        visible = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        visible = logical
    return CpuFacts(cpuinfo_path=path, visible_cpus=visible, logical_cpus=logical, **parsed)


@functools.lru_cache(maxsize=16)
def _parse_cpuinfo(path: str, version: tuple[int, int, int]) -> dict[str, object]:
    """Parse a cpuinfo file; ``version`` (inode, mtime, size) is only part of the cache key."""
    empty: dict[str, object] = {
        "model_name": None,
        "vendor_id": None,
        "cpu_family": None,
        "threads_per_socket": None,
        "cores_per_socket": None,
        "sockets": 1,
        "hypervisor": False,
        "brand_cores": None,
    }
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as err:
        return {**empty, "error": f"cannot read {path}: {err.strerror or err}"}
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
        if "processor" in fields:
            blocks.append(fields)
    if not blocks:
        return {**empty, "error": f"{path} lists no processor"}
    first = blocks[0]
    model = first.get("model name") or None
    physical_ids = {b["physical id"] for b in blocks if "physical id" in b}
    brand = _BRAND_CORES.search(model) if model else None
    return {
        "model_name": " ".join(model.split()) if model else None,
        "vendor_id": first.get("vendor_id") or None,
        "cpu_family": _int_or_none(first.get("cpu family")),
        "threads_per_socket": _int_or_none(first.get("siblings")),
        "cores_per_socket": _int_or_none(first.get("cpu cores")),
        "sockets": max(1, len(physical_ids)),
        "hypervisor": "hypervisor" in first.get("flags", "").split(),
        "brand_cores": int(brand.group(1)) if brand else None,
        "error": "",
    }


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def codecarbon_tdp_table_path() -> Path | None:
    """Where CodeCarbon's ``cpu_power.csv`` is installed, found without importing codecarbon.

    Returns:
        The path, or ``None`` when codecarbon is not installed or ships no such file. Cached.
    """
    try:
        spec = importlib.util.find_spec("codecarbon")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / "data" / "hardware" / "cpu_power.csv"
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def codecarbon_version(package_dir: str) -> str:
    """The version written in ``codecarbon/_version.py``, read as text (importlib.metadata is slower)."""
    try:
        with open(os.path.join(package_dir, "_version.py"), encoding="utf-8") as handle:
            match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", handle.read())
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


def _tdp_of(line: str) -> float | None:
    try:
        tdp = float(line.rpartition(",")[2])
    except ValueError:
        return None
    return tdp if math.isfinite(tdp) and tdp > 0 else None


@functools.lru_cache(maxsize=4)
def _load_tdp_table(path: str) -> dict[str, str | None]:
    """Map lower-cased, whitespace-collapsed names to their CSV line; ``None`` marks a name listed twice
    with different TDPs (ambiguous, never matched). TDPs are parsed only for a matched line: a whole
    parse of the ~5,000 rows costs several milliseconds, this costs about one."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[1:]  # header: Name,TDP
    table: dict[str, str | None] = {}
    for line in lines:
        name = line.rpartition(",")[0]
        key = " ".join(name.strip('"').split()).lower()
        previous = table.setdefault(key, line)
        if previous is not line and previous is not None and _tdp_of(previous) != _tdp_of(line):
            table[key] = None
    return table


def lookup_tdp(model_name: str | None, table_path: str | os.PathLike[str] | None = None) -> TdpMatch | None:
    """Look a model name up in CodeCarbon's TDP table, exactly (see the module docstring).

    Args:
        model_name: the ``model name`` from cpuinfo.
        table_path: the CSV to use; CodeCarbon's installed table by default.

    Returns:
        The matching row, or ``None`` when the name is absent, ambiguous, or no table is installed.
    """
    if not model_name:
        return None
    path = Path(table_path) if table_path is not None else codecarbon_tdp_table_path()
    if path is None:
        return None
    try:
        table = _load_tdp_table(os.fspath(path))
    except OSError:
        return None
    for candidate in (" ".join(model_name.split()), normalise_model_name(model_name)):
        line = table.get(candidate.lower())
        tdp = _tdp_of(line) if line is not None else None
        if line is not None and tdp is not None:
            written = line.rpartition(",")[0].strip('"')
            version = codecarbon_version(os.fspath(Path(path).parent.parent.parent))
            return TdpMatch(tdp, written, candidate, os.fspath(path), version)
    return None

"""Facts about the machine a measurement runs on, gathered once per process and cached."""

from __future__ import annotations

import functools
import os
import platform
import socket
import sys

from greenmeter._version import __version__
from greenmeter.records import HostInfo

__all__ = ["describe_host"]


def _cpuinfo_fields(path: str = "/proc/cpuinfo") -> tuple[str, bool | None]:
    """Return (CPU model name, whether the hypervisor flag is set) from ``/proc/cpuinfo``."""
    # platform.processor() would run `uname -p` in a child process: use the machine name instead.
    fallback = platform.machine()
    model, hypervisor = fallback, None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == fallback:
                    model = value.strip()
                elif key == "flags":
                    hypervisor = "hypervisor" in value.split()
                    break
    except OSError:
        pass
    return model, hypervisor


@functools.lru_cache(maxsize=1)
def _static_facts() -> tuple[str, str, str, str, int, int | None, bool | None]:
    model, hypervisor = _cpuinfo_fields()
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory: int | None = pages * page_size
    except (ValueError, OSError, AttributeError):
        memory = None
    return (
        socket.gethostname(),
        f"{os.uname().sysname} {os.uname().release} {platform.machine()}",
        platform.python_version(),
        model,
        os.cpu_count() or 1,
        memory,
        hypervisor,
    )


def describe_host() -> HostInfo:
    """Return this machine's facts. Torch and CUDA versions are given only if torch is already imported."""
    hostname, os_name, python, model, cpus, memory, vm = _static_facts()
    torch = sys.modules.get("torch")
    torch_version = getattr(torch, "__version__", None) if torch else None
    cuda_version = getattr(getattr(torch, "version", None), "cuda", None) if torch else None
    return HostInfo(
        hostname=hostname,
        os=os_name,
        python=python,
        cpu_model=model,
        logical_cpus=cpus,
        memory_total_b=memory,
        virtual_machine=vm,
        torch=str(torch_version) if torch_version else None,
        cuda=str(cuda_version) if cuda_version else None,
        greenmeter=__version__,
    )

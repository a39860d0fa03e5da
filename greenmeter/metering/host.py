"""Facts about the machine a measurement runs on, gathered once per process and cached."""

from __future__ import annotations

import functools
import os
import platform
import socket
import sys

from greenmeter._version import __version__
from greenmeter.sources.cpu_model import read_cpu_facts
from greenmeter.records.measurement import HostInfo

__all__ = ["describe_host"]


@functools.lru_cache(maxsize=1)
def _static_facts() -> tuple[str, str, str, str, int, int | None, bool | None]:
    facts = read_cpu_facts()
    # platform.processor() would run `uname -p` in a child process: fall back to the machine name.
    model = facts.model_name or platform.machine()
    hypervisor = facts.hypervisor if facts.readable else None
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

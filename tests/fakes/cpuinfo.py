"""Fake ``/proc/cpuinfo`` files, written into a test's ``tmp_path``; the code under test reads them as is."""

from __future__ import annotations

from pathlib import Path

_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr ht syscall nx lm constant_tsc"


def write_cpuinfo(
    directory: Path,
    model_name: str | None,
    *,
    vendor_id: str = "AuthenticAMD",
    cpu_family: int = 23,
    sockets: int = 1,
    siblings: int | None = 2,
    cores: int | None = 2,
    listed_per_socket: int = 2,
    hypervisor: bool = False,
    filename: str = "cpuinfo",
) -> Path:
    """Write a cpuinfo file in the kernel's format and return its path.

    Args:
        directory: where to write it (a test's ``tmp_path``).
        model_name: the ``model name`` line; ``None`` leaves the line out (as on some ARM kernels).
        vendor_id: the ``vendor_id`` line.
        cpu_family: the ``cpu family`` line.
        sockets: distinct ``physical id`` values.
        siblings: the ``siblings`` line (threads per socket); ``None`` leaves it out.
        cores: the ``cpu cores`` line; ``None`` leaves it out.
        listed_per_socket: processor entries written per socket (a fake need not list every thread).
        hypervisor: whether the ``hypervisor`` flag is set.
        filename: the file's name inside ``directory``.
    """
    flags = _FLAGS + (" hypervisor" if hypervisor else "")
    blocks = []
    processor = 0
    for socket in range(sockets):
        for core in range(listed_per_socket):
            lines = [f"processor\t: {processor}", f"vendor_id\t: {vendor_id}", f"cpu family\t: {cpu_family}"]
            if model_name is not None:
                lines.append(f"model name\t: {model_name}")
            lines.append(f"physical id\t: {socket}")
            if siblings is not None:
                lines.append(f"siblings\t: {siblings}")
            lines.append(f"core id\t\t: {core}")
            if cores is not None:
                lines.append(f"cpu cores\t: {cores}")
            lines.append(f"flags\t\t: {flags}")
            blocks.append("\n".join(lines))
            processor += 1
    path = directory / filename
    path.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return path

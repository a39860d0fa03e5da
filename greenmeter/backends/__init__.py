"""Energy sources: RAPL, NVML, and the CPU and RAM estimates. See ``_base`` for the contract."""

from __future__ import annotations

from greenmeter.backends._base import Backend, Domain, ProbeResult, Provenance, Reading

__all__ = ["Backend", "Domain", "ProbeResult", "Provenance", "Reading"]

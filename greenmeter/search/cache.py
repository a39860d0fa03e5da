"""The search's measurement cache: one entry per candidate, task and machine, in a small JSON file.

An entry is keyed by three things, so a figure is reused only where it still holds:

* the **hardware** fingerprint (:func:`hardware_fingerprint`): CPU model, logical CPUs, torch's intra-op
  threads, torch and CUDA versions, the device and the energy backends. Energy measured on another
  machine, or by another source, is not reused.
* the **setup**: the space's name, the task's name and a checksum of its held-out data, the seed and
  the batch size. Accuracy after training depends on all of them.
* the **configuration**, as canonical JSON.

An entry holds the candidate's MACs and parameters, its energy measurement (once per configuration:
inference energy does not depend on how long the weights were trained) and its accuracy per training
length (``rungs``). The file is rewritten atomically (a temporary file, then ``os.replace``) after every
evaluation, so an interrupted search loses at most the evaluation that was running.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError

if TYPE_CHECKING:
    from greenmeter.metering.meter import Meter

__all__ = ["CACHE_SCHEMA_VERSION", "SearchCache", "fingerprint_key", "hardware_fingerprint"]

CACHE_SCHEMA_VERSION = 1


def hardware_fingerprint(meter: Meter, device: str = "cpu") -> dict[str, Any]:
    """What the energy of a candidate depends on, besides the candidate (starts the meter).

    Returns:
        ``{"cpu_model", "logical_cpus", "torch", "cuda", "torch_threads", "device", "backends"}``.
    """
    import torch

    meter.start()
    host = meter.host
    return {"cpu_model": host.cpu_model, "logical_cpus": host.logical_cpus, "torch": host.torch, "cuda": host.cuda,
            "torch_threads": torch.get_num_threads(), "device": device,
            "backends": sorted(b.name for b in meter.backends)}


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """A short stable key (16 hex digits of SHA-256 over the canonical JSON) for a fingerprint or setup."""
    text = json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SearchCache:
    """Cached evaluations of candidates, in memory and (with a path) in a JSON file.

    Args:
        path: the JSON file (created on the first write, with its folder); ``None`` keeps the cache in
            memory only (a repeated search in the same process still reuses it).

    Raises:
        ConfigError: the file exists but is not a greenmeter search cache, or has a newer schema.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._hardware: dict[str, Any] = {}
        self._setups: dict[str, Any] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is not a readable greenmeter search cache ({err}); "
                              "move it away or pass another cache path") from err
        if not isinstance(data, dict) or data.get("kind") != "greenmeter-search-cache":
            raise ConfigError(f"{path} is not a greenmeter search cache; move it away or pass another cache path")
        if int(data.get("schema_version", 1)) > CACHE_SCHEMA_VERSION:
            raise ConfigError(f"{path} was written by a newer greenmeter (cache schema "
                              f"{data['schema_version']}); upgrade greenmeter or use another cache path")
        self._hardware = dict(data.get("hardware", {}))
        self._setups = dict(data.get("setups", {}))
        self._entries = {k: dict(v) for k, v in data.get("entries", {}).items()}

    @staticmethod
    def _key(hardware_key: str, setup_key: str, config_key: str) -> str:
        return f"{hardware_key}|{setup_key}|{config_key}"

    def get(self, hardware_key: str, setup_key: str, config_key: str) -> dict[str, Any] | None:
        """A copy of the entry for this machine, setup and configuration, or ``None``."""
        entry = self._entries.get(self._key(hardware_key, setup_key, config_key))
        return None if entry is None else json.loads(json.dumps(entry))

    def put(self, hardware: Mapping[str, Any], setup: Mapping[str, Any], config_key: str,
            entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (replacing any earlier one) and write the file."""
        hw_key, setup_key = fingerprint_key(hardware), fingerprint_key(setup)
        self._hardware[hw_key] = dict(hardware)
        self._setups[setup_key] = dict(setup)
        self._entries[self._key(hw_key, setup_key, config_key)] = json.loads(json.dumps(dict(entry)))
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        data = {"kind": "greenmeter-search-cache", "schema_version": CACHE_SCHEMA_VERSION,
                "hardware": self._hardware, "setups": self._setups, "entries": self._entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

"""A stored run as read back from the run store: a frozen record with ``to_dict``/``from_dict``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonEstimate
from greenmeter.records.measurement import HostInfo, Measurement

__all__ = ["RECORD_VERSION", "RunRecord"]

#: Version of :meth:`RunRecord.to_dict`.
RECORD_VERSION = 1


@dataclass(frozen=True)
class RunRecord:
    """One stored run, as read back from the store.

    Attributes:
        id: 32 hex digits (a uuid4); any unique prefix finds it.
        name: the run's name; ``kind``: ``"run"`` (``greenmeter run``) or ``"api"`` (the Python API).
        status: ``"running"`` (not finished: still going, or its process died), ``"ok"``, ``"failed"`` or
            ``"interrupted"``.
        started_at, ended_at: ISO 8601 UTC times; ``ended_at`` is ``None`` until the run finishes.
        command: the measured command line, for ``greenmeter run``.
        exit_code: the command's exit status, for ``greenmeter run``.
        host: the machine it ran on; ``carbon_settings``: :meth:`CarbonSettings.to_dict` of the settings.
        measurement: the whole-run measurement, ``None`` until the run finishes.
        carbon: CO2e of the whole run.
        windows_count: windows stored for the run; ``note``: free text (why it was interrupted...).
    """

    id: str
    name: str
    kind: str
    status: str
    started_at: str
    ended_at: str | None
    command: tuple[str, ...] | None
    exit_code: int | None
    host: HostInfo | None
    carbon_settings: dict[str, Any] | None
    measurement: Measurement | None
    carbon: CarbonEstimate | None
    windows_count: int
    note: str | None

    @property
    def complete(self) -> bool:
        """``False`` while the run is stored as running: it is still going, or its process was killed."""
        return self.status != "running"

    @property
    def display_status(self) -> str:
        """The status to show people: ``"incomplete"`` for a run that never finished, else ``status``."""
        return self.status if self.complete else "incomplete"

    def _repr_html_(self) -> str:
        """The run as a notebook shows it: its facts and a table with provenance and bands (see
        ``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import run_html  # records never import output at module level

        return run_html(self)

    def _repr_markdown_(self) -> str:
        """The run as short Markdown (see ``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import run_markdown

        return run_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": RECORD_VERSION, "id": self.id, "name": self.name, "kind": self.kind,
            "status": self.status, "complete": self.complete, "started_at": self.started_at,
            "ended_at": self.ended_at, "command": None if self.command is None else list(self.command),
            "exit_code": self.exit_code, "host": self.host.to_dict() if self.host else None,
            "carbon_settings": self.carbon_settings,
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "carbon": self.carbon.to_dict() if self.carbon else None,
            "windows_count": self.windows_count, "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        version = data.get("schema_version", RECORD_VERSION)
        if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
            raise ConfigError(f"run record schema_version {version!r} is not readable by this greenmeter "
                              f"(reads 1..{RECORD_VERSION}); upgrade greenmeter")
        command, host, m, carbon = (data.get(k) for k in ("command", "host", "measurement", "carbon"))
        return cls(
            id=data["id"], name=data["name"], kind=data["kind"], status=data["status"],
            started_at=data["started_at"], ended_at=data.get("ended_at"),
            command=None if command is None else tuple(command), exit_code=data.get("exit_code"),
            host=HostInfo.from_dict(host) if host else None, carbon_settings=data.get("carbon_settings"),
            measurement=Measurement.from_dict(m) if m else None,
            carbon=CarbonEstimate.from_dict(carbon) if carbon else None,
            windows_count=int(data.get("windows_count", 0)), note=data.get("note"),
        )

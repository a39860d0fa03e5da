"""A fake Linux powercap sysfs tree for RAPL tests.

It lays out what the kernel shows under ``/sys/class/powercap`` (flat zone directories such as
``intel-rapl:0`` and ``intel-rapl:0:2``, plus the ``intel-rapl`` control-type directory) inside a
temporary sysfs root, so the backend under test reads ordinary files::

    tree = FakePowercap(tmp_path)
    zones = tree.add_package(0, subzones=("core", "uncore", "dram"))
    backend = RaplBackend(tmp_path)
    zones["package"].set_energy_uj(5_000_000)     # +5 J on package-0

Counter values are written in place (same inode), as a sysfs attribute changes under an open reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MAX_RANGE_UJ", "FakePowercap", "FakeZone"]

#: A real Intel value: 2**32 counter units of 2**-14 J (~61 uJ) each, in microjoules (~262 kJ).
DEFAULT_MAX_RANGE_UJ = 262_143_328_850


@dataclass(frozen=True)
class FakeZone:
    """One fake zone directory."""

    zone_id: str
    name: str
    path: Path

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"

    @property
    def energy_uj(self) -> int:
        return int(self.energy_path.read_text())

    def set_energy_uj(self, value: int) -> None:
        """Write the raw counter (microjoules) in place, keeping the file's inode and mode."""
        with open(self.energy_path, "r+") as f:
            f.truncate(0)
            f.write(f"{int(value)}\n")

    def chmod_energy(self, mode: int) -> None:
        os.chmod(self.energy_path, mode)


class FakePowercap:
    """Builds zones under ``<sysfs_root>/class/powercap``.

    Args:
        sysfs_root: the fake sysfs root (what ``RaplBackend(sysfs_root=...)`` is given).
    """

    def __init__(self, sysfs_root: str | os.PathLike[str]) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.dir = self.sysfs_root / "class" / "powercap"
        self._mkdir(self.dir)
        self.zones: dict[str, FakeZone] = {}

    @staticmethod
    def _mkdir(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)

    def _write(self, path: Path, text: str, mode: int = 0o444) -> None:
        path.write_text(text)
        os.chmod(path, mode)

    def add_zone(
        self,
        zone_id: str,
        name: str,
        *,
        energy_uj: int = 0,
        max_energy_range_uj: int = DEFAULT_MAX_RANGE_UJ,
        max_power_uw: int | None = None,
        energy_mode: int = 0o444,
    ) -> FakeZone:
        """Create one zone directory with its attributes.

        Args:
            zone_id: the directory name, e.g. ``"intel-rapl:0"``, ``"intel-rapl:0:2"``,
                ``"intel-rapl-mmio:0"``.
            name: the ``name`` attribute, e.g. ``"package-0"``, ``"dram"``, ``"psys"``.
            energy_uj: the initial raw counter, in microjoules.
            max_energy_range_uj: where the counter wraps, in microjoules.
            max_power_uw: ``constraint_0_max_power_uw`` in microwatts; ``None`` leaves it out.
            energy_mode: the mode of ``energy_uj`` (``0o400`` as on Linux 5.10 and later).
        """
        control_type = zone_id.split(":", 1)[0]
        if not (self.dir / control_type).is_dir():
            self._mkdir(self.dir / control_type)
            self._write(self.dir / control_type / "enabled", "1\n")
        path = self.dir / zone_id
        self._mkdir(path)
        self._write(path / "name", f"{name}\n")
        self._write(path / "enabled", "1\n")
        self._write(path / "max_energy_range_uj", f"{max_energy_range_uj}\n")
        if max_power_uw is not None:
            self._write(path / "constraint_0_name", "long_term\n")
            self._write(path / "constraint_0_max_power_uw", f"{max_power_uw}\n")
        self._write(path / "energy_uj", f"{energy_uj}\n", energy_mode)
        zone = FakeZone(zone_id, name, path)
        self.zones[zone_id] = zone
        return zone

    def add_package(
        self,
        index: int,
        *,
        subzones: tuple[str, ...] = ("core", "uncore", "dram"),
        control_type: str = "intel-rapl",
        energy_uj: int = 0,
        max_energy_range_uj: int = DEFAULT_MAX_RANGE_UJ,
        max_power_uw: int | None = None,
    ) -> dict[str, FakeZone]:
        """Add ``<control_type>:<index>`` named ``package-<index>`` and its subzones, in order.

        Returns:
            the zones by name: ``"package"`` and each subzone name.
        """
        zones = {
            "package": self.add_zone(
                f"{control_type}:{index}",
                f"package-{index}",
                energy_uj=energy_uj,
                max_energy_range_uj=max_energy_range_uj,
                max_power_uw=max_power_uw,
            )
        }
        for sub, name in enumerate(subzones):
            zones[name] = self.add_zone(
                f"{control_type}:{index}:{sub}", name, energy_uj=energy_uj, max_energy_range_uj=max_energy_range_uj
            )
        return zones

    def restrict_energy(self, mode: int = 0o400) -> list[Path]:
        """Make every ``energy_uj`` root-only, as Linux 5.10 does. Returns the files changed."""
        paths = [zone.energy_path for zone in self.zones.values()]
        for path in paths:
            os.chmod(path, mode)
        return paths

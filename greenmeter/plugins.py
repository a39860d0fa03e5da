"""Third-party plug-ins: entry points that add energy sources, compression methods and output formats.

A package adds entries to greenmeter's registries by declaring entry points in one of three groups::

    [project.entry-points."greenmeter.sources"]
    my-meter = "my_package.meter:MyMeterBackend"        # a Backend subclass (see greenmeter.sources.base)

    [project.entry-points."greenmeter.methods"]
    my-method = "my_package.method"                     # a module whose import calls register_method

    [project.entry-points."greenmeter.formats"]
    my-format = "my_package.fmt:FORMAT"                 # a greenmeter.output.formats.Format

Each group is read once per process, the first time its registry is asked for its entries (never at
``import greenmeter``). The registry of each kind checks what an entry point gives and registers it; a
plug-in that cannot be loaded raises :class:`~greenmeter.ConfigError` naming the entry point, its
package and the fix.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from greenmeter._errors import ConfigError

__all__ = ["GROUPS", "load_plugins"]

#: The entry-point groups greenmeter reads, one per registry.
GROUPS = ("greenmeter.sources", "greenmeter.methods", "greenmeter.formats")

_NEEDLE = b"[greenmeter."  # the section header of any of GROUPS in an entry_points.txt
_declared: bool | None = None  # whether some distribution on sys.path may declare one of GROUPS
_loaded: dict[str, ConfigError | None] = {}  # group -> None when loaded, or the error that stopped it
_lock = threading.RLock()


def _distribution(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else f"the package providing {ep.value.split(':')[0]!r}"


def load_plugins(group: str, register: Callable[[str, Any], None]) -> None:
    """Load every entry point of ``group`` once per process and pass each to ``register(name, obj)``.

    Args:
        group: one of :data:`GROUPS`.
        register: the registry's own check-and-register function; a ``ConfigError`` or ``TypeError`` it
            raises for an unsuitable object is reported with the plug-in's name and package.

    Raises:
        ConfigError: an unknown group, or a plug-in that fails to import or to register (the message
            names the entry point and its package, and says to upgrade or uninstall it).
    """
    if group not in GROUPS:
        raise ConfigError(f"unknown plug-in group {group!r}; choose from {', '.join(GROUPS)}")
    with _lock:
        if group in _loaded:
            failure = _loaded[group]
            if failure is not None:  # the same error on every lookup: a broken plug-in is never skipped quietly
                raise failure
            return
        _loaded[group] = None
        if not _any_declared():
            return
        try:
            _load_group(group, register)
        except ConfigError as err:
            _loaded[group] = err
            raise


def _scan_for_declarations() -> bool:
    """Whether a distribution on ``sys.path`` may declare entry points in one of :data:`GROUPS`.

    ``importlib.metadata`` costs ~20 ms to import and ~10 ms to scan, which the first window of every
    process would pay although almost no machine has a greenmeter plug-in. So this looks first, the way
    ``importlib.metadata`` finds distributions (``*.dist-info`` and ``*.egg-info`` folders on ``sys.path``),
    for an ``entry_points.txt`` holding a ``[greenmeter.`` section. Anything it cannot read as plainly as
    that (a zip or egg on the path, an egg-info file, an unreadable folder) counts as "may declare", so the
    full lookup runs: this check can only skip the lookup, never miss a plug-in.
    """
    for entry in sys.path:
        folder = entry or "."
        try:
            with os.scandir(folder) as items:
                for item in items:
                    name = item.name
                    if name.endswith((".egg", ".zip")):
                        return True  # a zipped distribution: only importlib.metadata reads inside it
                    if not name.endswith((".dist-info", ".egg-info")):
                        continue
                    if not item.is_dir():
                        return True  # an egg-info file
                    try:
                        with open(os.path.join(folder, name, "entry_points.txt"), "rb") as fh:
                            if _NEEDLE in fh.read():
                                return True
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            continue  # a sys.path entry that does not exist holds no distribution
        except OSError:
            return True  # a zip file on sys.path, an unreadable folder: let importlib.metadata look
    return False


def _any_declared() -> bool:
    global _declared
    if _declared is None:
        _declared = _scan_for_declarations()
    return _declared


def _load_group(group: str, register: Callable[[str, Any], None]) -> None:
    from importlib import metadata  # here, not at module level: it costs ~15 ms of every `import greenmeter`

    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        package = _distribution(ep)
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - any import failure of a third-party module
            raise ConfigError(
                f"the {group} plug-in {ep.name!r} ({ep.value}) from {package} could not be loaded: "
                f"{type(err).__name__}: {err}; upgrade or uninstall {package}"
            ) from err
        try:
            register(ep.name, obj)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(
                f"the {group} plug-in {ep.name!r} ({ep.value}) from {package} is not usable: {err}; "
                f"upgrade or uninstall {package}"
            ) from err

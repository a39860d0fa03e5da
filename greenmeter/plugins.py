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

import threading
from collections.abc import Callable
from typing import Any

from greenmeter._errors import ConfigError

__all__ = ["GROUPS", "load_plugins"]

#: The entry-point groups greenmeter reads, one per registry.
GROUPS = ("greenmeter.sources", "greenmeter.methods", "greenmeter.formats")

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
        try:
            _load_group(group, register)
        except ConfigError as err:
            _loaded[group] = err
            raise


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

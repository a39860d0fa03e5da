"""The one registry of energy sources: the built-ins, sources from plug-ins, and ones registered in process.

Each source class carries its own metadata (``info``, a :class:`~greenmeter.sources.base.SourceInfo`), so
this registry keeps only names and classes. The built-ins are listed by module path and imported on first
use, so ``import greenmeter`` never imports a source module (nor pynvml). Third-party sources come from the
``greenmeter.sources`` entry-point group (see :mod:`greenmeter.plugins`), read the first time the registry
is listed or asked for a name it does not hold, never at ``import greenmeter``::

    [project.entry-points."greenmeter.sources"]
    my-meter = "my_package.meter:MyMeterBackend"     # its info.name must be "my-meter"

or, in process, ``register_source(MyMeterBackend)``. The order of :func:`source_names` (built-ins, then the
added sources in the order they were added: plug-ins by entry-point name when the group is read) is the
order of the automatic choice and of ``greenmeter info``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from greenmeter import plugins
from greenmeter._errors import ConfigError
from greenmeter.sources.base import Backend, SourceInfo

__all__ = [
    "GROUP",
    "create_backend",
    "find_source",
    "register_source",
    "source_class",
    "source_info",
    "source_names",
    "unregister_source",
]

#: The entry-point group third-party sources are declared in.
GROUP = "greenmeter.sources"

_BUILTINS: dict[str, str] = {  # name -> "module:class", imported on first use
    "rapl": "greenmeter.sources.rapl:RaplBackend",
    "nvml": "greenmeter.sources.nvml:NvmlBackend",
    "cpu-estimate": "greenmeter.sources.cpu_estimate:CpuEstimateBackend",
    "ram-estimate": "greenmeter.sources.ram_estimate:RamEstimateBackend",
}
_classes: dict[str, type[Backend]] = {}  # built-ins once imported, plug-ins and in-process registrations
_added: list[str] = []  # names registered from plug-ins or in process, in order
_lock = threading.RLock()


def register_source(cls: type[Backend]) -> type[Backend]:
    """Add a source class to the registry (usable as a class decorator); works in place on the registry.

    Args:
        cls: a :class:`~greenmeter.sources.base.Backend` subclass whose ``info`` is a
            :class:`~greenmeter.sources.base.SourceInfo`.

    Returns:
        ``cls``, unchanged.

    Raises:
        ConfigError: ``cls`` is not such a class, or another source already has its name (a built-in, a
            plug-in's or an earlier registration). Registering the very same class again does nothing.
    """
    info = _info_of(cls)
    with _lock:
        if _classes.get(info.name) is cls:
            return cls
        if info.name in _BUILTINS or info.name in _classes:
            holder = _BUILTINS.get(info.name) or _describe(_classes[info.name])
            raise ConfigError(f"energy source name {info.name!r} is already taken by {holder}; "
                              f"{_describe(cls)} must choose another name")
        _classes[info.name] = cls
        _added.append(info.name)
    return cls


def unregister_source(name: str) -> type[Backend]:
    """Remove a source added by a plug-in or :func:`register_source` and return its class (in place).

    Raises:
        ConfigError: ``name`` is a built-in, or no added source has that name.
    """
    with _lock:
        if name in _BUILTINS:
            raise ConfigError(f"energy source {name!r} is built in and cannot be unregistered")
        if name not in _added:
            raise ConfigError(f"no added energy source is called {name!r}; added: {', '.join(_added) or 'none'}")
        _added.remove(name)
        return _classes.pop(name)


def source_names() -> tuple[str, ...]:
    """Every registered source's name: the built-ins, then the added ones (plug-ins, in process) in order.

    Raises:
        ConfigError: an installed plug-in cannot be loaded (the message names its package).
    """
    _load_plugins()
    with _lock:
        return (*_BUILTINS, *_added)


def find_source(name: str) -> type[Backend] | None:
    """The class registered as ``name``, or ``None`` when no source has that name.

    Raises:
        ConfigError: ``name`` is not yet known and an installed plug-in cannot be loaded.
    """
    with _lock:
        if name in _classes:
            return _classes[name]
        if name in _BUILTINS:
            return _import_builtin(name)
    _load_plugins()
    with _lock:
        return _classes.get(name)


def source_class(name: str) -> type[Backend]:
    """The class registered as ``name``.

    Raises:
        ConfigError: no source has that name (the message lists the known ones).
    """
    cls = find_source(name)
    if cls is None:
        raise ConfigError(f"unknown energy backend {name!r}; choose from {', '.join(source_names())}")
    return cls


def source_info(name: str) -> SourceInfo:
    """The metadata of the source called ``name`` (ConfigError for an unknown name, listing the known ones)."""
    return source_class(name).info


def create_backend(name: str, **options: Any) -> Backend:
    """Create the source called ``name`` with its own constructor keywords (not the meter's option names).

    Raises:
        ConfigError: an unknown name (the message lists the known ones), or options its constructor rejects.
    """
    return source_class(name)(**options)


def _import_builtin(name: str) -> type[Backend]:
    module_name, _, class_name = _BUILTINS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if cls.info.name != name:  # a mistake in this file, not the user's
        raise TypeError(f"{_BUILTINS[name]} says its name is {cls.info.name!r}, not {name!r}")
    with _lock:
        _classes.setdefault(name, cls)
    return cls


def _info_of(cls: Any) -> SourceInfo:
    """The metadata of a would-be source class, or a ConfigError saying what it lacks."""
    if not isinstance(cls, type) or not issubclass(cls, Backend):
        raise ConfigError(f"an energy source must be a greenmeter.sources.base.Backend subclass, not {cls!r}")
    info = cls.__dict__.get("info")
    if not isinstance(info, SourceInfo):
        raise ConfigError(f"energy source class {cls.__qualname__} has no info of its own: set the class "
                          "attribute info = greenmeter.sources.base.SourceInfo(name=..., kind=..., domains=...)")
    return info


def _register_entry_point(name: str, obj: Any) -> None:
    """``load_plugins``' callback: the entry point's name must be the class's ``info.name``."""
    info = _info_of(obj)
    if info.name != name:
        raise ConfigError(f"the entry point is called {name!r} but its class's info.name is {info.name!r}; "
                          "they must be the same")
    register_source(obj)


def _load_plugins() -> None:
    plugins.load_plugins(GROUP, _register_entry_point)


def _describe(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"

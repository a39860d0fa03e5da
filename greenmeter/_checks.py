"""The argument validators every public entry point uses, before any work.

Each validator takes the argument's name as the user knows it (``"repeats"``, ``"RecipeContext.lr"``,
``"compare.repeats"`` with a config file's path in front) and its value, returns the value (normalised:
a whole number as ``int``, a number as ``float``) and otherwise raises
:class:`~greenmeter.ConfigError` naming the argument, the values allowed and the value given::

    repeats = whole_number("repeats", repeats, minimum=1)      # "repeats must be a whole number >= 1, not 0"
    alpha = number("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
    q = fraction("q", q)                                       # "q must be a fraction in [0, 1], not 95"
    significance = choice("significance", significance, ("paired", "welch", "bootstrap"))
    name = text("name", name)
    keep = module_names("keep_layers", keep)                   # ("features.0", "classifier.2"); a bare str is refused
    path = output_file("--json", path)                         # its folder must exist, before the work

``bool`` is never a number here (``True`` is not a count of anything), and neither are NaN, infinity
or numeric strings. This module imports nothing of greenmeter's but the error tree.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from greenmeter._errors import ConfigError

__all__ = ["choice", "fraction", "module_names", "number", "output_file", "registry_name", "text", "whole_number"]

T = TypeVar("T")


def _fail(name: str, wanted: str, value: Any, *, optional: bool, note: str | None) -> ConfigError:
    tail = " or None" if optional else ""
    hint = f" ({note})" if note else ""
    return ConfigError(f"{name} must be {wanted}{tail}{hint}, not {value!r}")


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@overload
def whole_number(name: str, value: Any, minimum: int | None = 0, maximum: int | None = None, *,
                 optional: Literal[False] = False, note: str | None = None) -> int: ...
@overload
def whole_number(name: str, value: Any, minimum: int | None = 0, maximum: int | None = None, *,
                 optional: Literal[True], note: str | None = None) -> int | None: ...
def whole_number(name: str, value: Any, minimum: int | None = 0, maximum: int | None = None, *,
                 optional: bool = False, note: str | None = None) -> int | None:
    """Check a whole number (``int`` or another integral type, not ``bool``) in ``[minimum, maximum]``.

    Args:
        name: the argument's name, as the message shows it.
        value: the value given.
        minimum: the smallest value allowed (``None``: no lower bound, negative numbers allowed).
        maximum: the largest value allowed (``None``: no upper bound).
        optional: ``None`` is allowed too (and returned).
        note: a hint appended to the message in parentheses (e.g. what ``None`` means).

    Returns:
        The value as an ``int`` (or ``None`` when optional and given ``None``).

    Raises:
        ConfigError: a bool, float, string or other non-integer, or a value out of range; the message
            reads ``"<name> must be a whole number >= <minimum>, not <value>"``.
    """
    if optional and value is None:
        return None
    wanted = "a whole number"
    if minimum is not None:
        wanted += f" >= {minimum}"
    if maximum is not None:
        wanted += f"{' and' if minimum is not None else ''} <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, wanted, value, optional=optional, note=note)
    result = int(value)
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise _fail(name, wanted, value, optional=optional, note=note)
    return result


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_bound(high)}"
    return ""


@overload
def number(name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, unit: str | None = None, optional: Literal[False] = False,
           note: str | None = None) -> float: ...
@overload
def number(name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, unit: str | None = None, optional: Literal[True],
           note: str | None = None) -> float | None: ...
def number(name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, unit: str | None = None, optional: bool = False,
           note: str | None = None) -> float | None:
    """Check a finite real number (not ``bool``, NaN or infinity) within optional bounds.

    Args:
        name: the argument's name, as the message shows it.
        value: the value given.
        low, high: the bounds (``None``: unbounded on that side, though always finite).
        low_open, high_open: exclude the bound itself (``low=0, low_open=True`` is "> 0").
        unit: the unit in words for the message (``"seconds"`` reads "a number of seconds > 0").
        optional: ``None`` is allowed too (and returned).
        note: a hint appended to the message in parentheses.

    Returns:
        The value as a ``float`` (or ``None`` when optional and given ``None``).

    Raises:
        ConfigError: not a real number, NaN, infinite, or out of range; the message reads
            ``"<name> must be a number in [low, high), not <value>"`` (or ``> low``, ``<= high``, ...).
    """
    if optional and value is None:
        return None
    bounds = _range(low, high, low_open, high_open)
    wanted = f"a{'' if bounds else ' finite'} number{f' of {unit}' if unit else ''}{bounds}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, wanted, value, optional=optional, note=note)
    result = float(value)
    if not math.isfinite(result):
        raise _fail(name, wanted, value, optional=optional, note=note)
    if low is not None and (result <= low if low_open else result < low):
        raise _fail(name, wanted, value, optional=optional, note=note)
    if high is not None and (result >= high if high_open else result > high):
        raise _fail(name, wanted, value, optional=optional, note=note)
    return result


def fraction(name: str, value: Any, *, low_open: bool = False, high_open: bool = False,
             note: str | None = None) -> float:
    """Check a fraction: a finite number in ``[0, 1]`` (ends excluded as asked), not ``bool``.

    Args:
        name: the argument's name, as the message shows it.
        value: the value given.
        low_open, high_open: exclude 0, or 1 (``high_open=True`` is ``[0, 1)``).
        note: a hint appended to the message in parentheses (e.g. ``"0.95 for p95"``).

    Returns:
        The value as a ``float``.

    Raises:
        ConfigError: not a number, NaN, or outside the interval; the message reads
            ``"<name> must be a fraction in [0, 1), not <value>"``.
    """
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(name, f"a fraction in {interval}", value, optional=False, note=note)
    result = float(value)
    if (result <= 0 if low_open else result < 0) or (result >= 1 if high_open else result > 1):
        raise _fail(name, f"a fraction in {interval}", value, optional=False, note=note)
    return result


def _alternatives(allowed: list[Any]) -> str:
    shown = [repr(a) for a in allowed]
    if len(shown) == 1:
        return shown[0]
    if len(shown) == 2:
        return f"{shown[0]} or {shown[1]}"
    return f"one of {', '.join(shown)}"


def choice(name: str, value: T, allowed: Iterable[T]) -> T:
    """Check that ``value`` is one of ``allowed`` (compared with ``==``; ``True`` is not ``1`` here).

    Returns:
        The value, unchanged.

    Raises:
        ConfigError: the value is not allowed; the message lists the allowed values in their order:
            ``"<name> must be 'a' or 'b', not 'c'"``, or ``"... must be one of 'a', 'b', 'c', not 'd'"``.
    """
    options = list(allowed)
    for option in options:
        if value == option and isinstance(value, bool) == isinstance(option, bool):
            return value
    raise ConfigError(f"{name} must be {_alternatives(options)}, not {value!r}")


def text(name: str, value: Any) -> str:
    """Check a non-empty ``str``.

    Returns:
        The value, unchanged.

    Raises:
        ConfigError: not a ``str``, or empty: ``"<name> must be a non-empty string, not None"``.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    return value


def module_names(name: str, value: Any) -> tuple[str, ...]:
    """Check qualified module names (as in ``model.named_modules()``, e.g. ``("features.0", "classifier.2")``).

    Whether the names are modules of a model is checked where the model is known, not here.

    Returns:
        The names as a tuple, in the order given (a list is accepted too); ``()`` for none.

    Raises:
        ConfigError: a single ``str`` (write ``("fc",)``), not a tuple or list, an item that is not a non-empty
            string without spaces, or a name given twice: ``"<name> must be a tuple of module names such as
            ('features.0', 'classifier.2'), not 'fc'"``.
    """
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) and v and not any(c.isspace() for c in v)
                                                for v in value):
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            raise ConfigError(f"{name} names {', '.join(map(repr, twice))} more than once; give each module once")
        return tuple(value)
    hint = f"; write ({value!r},) for one module" if isinstance(value, str) else ""
    raise ConfigError(f"{name} must be a tuple of module names such as ('features.0', 'classifier.2'), "
                      f"not {value!r}{hint}")


_REGISTRY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def registry_name(name: str, value: Any) -> str:
    """Check the name of a registry entry (an energy source, an output format): what a command line takes.

    Returns:
        The value, unchanged.

    Raises:
        ConfigError: not lower case letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit:
            ``"<name> must be lower case letters, digits, '-', '_' or '.', not 'My Meter'"``.
    """
    if not isinstance(value, str) or not _REGISTRY_NAME.match(value):
        raise ConfigError(f"{name} must be lower case letters, digits, '-', '_' or '.', not {value!r}")
    return value


def output_file(name: str, value: Any, *, make_folders: bool = False) -> Path:
    """Check a path that a file will be written to, before the work whose result it holds.

    The file itself need not exist (it is created or replaced later), but the path must not be a folder,
    and its folder must exist (or, with ``make_folders``, be one the writer can create: the nearest folder
    that exists is a folder, not a file) and be writable. Nothing is created or written here.

    Args:
        name: the argument's name, as the message shows it (``"--json"``, ``"path"``).
        value: the path given (``str`` or ``os.PathLike``).
        make_folders: the writer creates missing folders (``write_report`` does), so they may be missing.

    Returns:
        The value as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: not a path, a folder, a path whose folder does not exist (or cannot be made) or is a
            file, or a folder or file that this process may not write; the message names the argument and
            the folder.
    """
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"{name} must be a file path, not {value!r}")
    path = Path(value)
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"{name} {str(path)!r} is a folder: give the path of a file to write")
    nearest = folder
    while make_folders and not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        what = "is not a folder" if nearest.exists() else "does not exist"
        if nearest == folder:
            raise ConfigError(f"{name} {str(path)!r}: the folder {str(folder)!r} {what}; create it or write elsewhere")
        raise ConfigError(f"{name} {str(path)!r}: the folder {str(folder)!r} cannot be made: {str(nearest)!r} {what}")
    if not os.access(nearest, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{name} {str(path)!r}: no permission to write there; write elsewhere")
    return path

"""Value types of the command line's options, built from the argument validators of ``greenmeter._checks``.

An option whose value no library call checks in full (how many rows to list, an energy in kWh) gets one of
these as its argparse ``type``: a value out of range is then argparse's one-line usage error (exit 2)
naming the option and the range, before any work::

    runs.add_argument("--limit", type=whole_number_arg("limit", minimum=0, maximum=LIMIT_MAX), default=20)

An option whose library check is cheap to import takes that check itself, so the rule stays in one place::

    report.add_argument("--tolerance", type=checked_arg(float, check_tolerance))

Options passed straight to a library function that imports the heavy stages (``compare --repeats``) keep a
plain ``int``/``float`` type: that function checks them before any work (``greenmeter: error: --repeats must
be ...``), and ``greenmeter --help`` stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from greenmeter._checks import number, text, whole_number
from greenmeter._errors import ConfigError

__all__ = ["LIMIT_MAX", "checked_arg", "device_arg", "number_arg", "target_key_arg", "whole_number_arg"]

#: The most rows a listing shows (``runs --limit``, ``comparisons --limit``): SQLite's LIMIT takes a 64-bit integer.
LIMIT_MAX = 1_000_000_000


def checked_arg(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``check(parse(text))``, where ``check`` is a library validator.

    Args:
        parse: text to value (``int``, ``float``); its ``ValueError`` is argparse's "invalid value" error.
        check: the validator; its ConfigError message becomes argparse's error for the option.

    Returns:
        ``convert(text)``, raising ``argparse.ArgumentTypeError`` for a value ``check`` refuses.
    """
    def convert(text: str) -> Any:
        value = parse(text)
        try:
            return check(value)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse: "invalid float value: 'abc'"
    return convert


def whole_number_arg(name: str, *, minimum: int | None = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: the text as a whole number in ``[minimum, maximum]`` (see :func:`whole_number`).

    Args:
        name: the value's name in the message (argparse puts the option in front).
        minimum, maximum: the bounds (``None``: none on that side).

    Returns:
        ``convert(text) -> int``, raising ``argparse.ArgumentTypeError`` with the range for text that is not a
        whole number or is out of range.
    """
    return checked_arg(int, lambda v: whole_number(name, v, minimum=minimum, maximum=maximum))


def number_arg(name: str, **bounds: Any) -> Callable[[str], float]:
    """An argparse ``type``: the text as a finite number within ``bounds`` (the keywords of :func:`number`:
    ``low``, ``high``, ``low_open``, ``high_open``, ``unit``); ``nan`` and ``inf`` are refused.

    Returns:
        ``convert(text) -> float``, raising ``argparse.ArgumentTypeError`` with the range.
    """
    return checked_arg(float, lambda v: number(name, v, **bounds))


#: An argparse ``type`` for ``--target-key`` (``compare``, ``optimize``, ``export-model``): a non-empty key.
target_key_arg = checked_arg(str, lambda v: text("--target-key", v))


def _device(value: str) -> str:
    from greenmeter.comparison.batches import check_device  # imports torch: only when --device is given

    return check_device("--device", value)


#: An argparse ``type`` for ``--device`` (``compare``, ``optimize``): a device this machine has (``cpu``, ``cuda:1``).
device_arg = checked_arg(str, _device)

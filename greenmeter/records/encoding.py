"""How records are encoded: strict JSON, schema versions, and fast assembly of frozen records.

Every record module (measurement, run, comparison, distributed, and the search's records) reads and writes
JSON through these rules, so a stored record never holds NaN, a newer schema is refused with one message,
and a malformed file says what it is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from greenmeter._errors import ConfigError

__all__ = ["assemble", "check_record_version", "finite_json", "parse_record_json"]

_R = TypeVar("_R")


def finite_json(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, scalars) with NaN and infinities replaced by ``None``, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def parse_record_json(text: str, what: str, required_key: str) -> dict[str, Any]:
    """The JSON object of a stored record (``what``, e.g. "comparison"), or a ConfigError that says it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not a greenmeter {what} (invalid JSON: {err})") from err
    if not isinstance(data, dict) or required_key not in data:
        raise ConfigError(f"not a greenmeter {what}: the JSON has no {required_key!r}")
    return data


def check_record_version(data: Mapping[str, Any], newest: int, what: str) -> int:
    """A record's ``schema_version`` (1 when absent); a ConfigError when it is newer than ``newest``."""
    version = int(data.get("schema_version", 1))
    if version > newest:
        raise ConfigError(f"this {what} has schema version {version}, newer than this greenmeter reads ({newest}): "
                          "upgrade greenmeter")
    return version


def assemble(cls: type[_R], fields: dict[str, Any]) -> _R:
    """Build a frozen record from every one of its fields, skipping the generated ``__init__``.

    The generated ``__init__`` of a frozen dataclass sets each field through ``object.__setattr__``,
    which costs microseconds per record; a window's end builds several records, so the meter's hot
    path uses this instead. Only for records without ``__post_init__`` checks, with all fields given.
    """
    record = object.__new__(cls)
    record.__dict__.update(fields)
    return record

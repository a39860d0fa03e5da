"""The ``comparisons`` table of the run store: save, find and list :class:`~greenmeter.comparison.Comparison` records.

A mixin of :class:`greenmeter.store.Store` (kept apart so the store module stays one concept per file).
Each comparison is stored whole as JSON, with its id (32 hex digits), name, creation time and the id
of the run holding its measured windows.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, StoreError

if TYPE_CHECKING:
    from greenmeter.comparison import Comparison

__all__ = ["COMPARISONS_MIGRATION", "ComparisonTable"]

#: Schema migration 1 -> 2: the comparisons table.
COMPARISONS_MIGRATION = (
    """CREATE TABLE comparisons (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL, run_id TEXT,
        variants INTEGER NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX comparisons_by_time ON comparisons (created_at)",
)


class ComparisonTable:
    """Store methods for comparisons (needs the Store's ``_lock``, ``_write``, ``_query`` and ``_corrupt``)."""

    path: Any
    _lock: Any

    def add_comparison(self, comparison: Comparison) -> str:
        """Store a comparison in one transaction; returns its id (32 hex digits)."""
        from greenmeter.comparison import Comparison

        if not isinstance(comparison, Comparison):
            raise ConfigError(f"add_comparison takes a greenmeter Comparison, not {type(comparison).__name__}")
        comparison_id = uuid.uuid4().hex
        row = (comparison_id, comparison.name, comparison.created_at, comparison.run_id, len(comparison.variants),
               comparison.to_json(indent=None))
        with self._lock, self._sqlite_errors("store a comparison"), self._write() as conn:  # type: ignore[attr-defined]
            conn.execute("INSERT INTO comparisons (id, name, created_at, run_id, variants, data) "
                         "VALUES (?, ?, ?, ?, ?, ?)", row)
        return comparison_id

    def get_comparison(self, comparison_id: str) -> Comparison:
        """The comparison with this id or unique id prefix.

        Raises:
            StoreError: none or several match (the message says how to list them).
            CorruptStoreError: its stored JSON cannot be read.
        """
        prefix = str(comparison_id).strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise StoreError(f"{comparison_id!r} is not a comparison id (ids are hex digits); "
                             "run `greenmeter runs --comparisons` to see them")
        rows = self._query("find a comparison", "SELECT id, data FROM comparisons WHERE id LIKE ? "  # type: ignore[attr-defined]
                           "ORDER BY created_at DESC LIMIT 2", (prefix + "%",))
        if not rows:
            raise StoreError(f"no comparison with an id starting with {prefix!r} in {self.path}; "
                             "run `greenmeter runs --comparisons` to see the stored ids")
        if len(rows) > 1:
            raise StoreError(f"comparison id prefix {prefix!r} is ambiguous in {self.path}; give more characters")
        return self._comparison(rows[0][0], rows[0][1])

    def last_comparison(self) -> Comparison | None:
        """The most recent comparison, or ``None`` when none is stored."""
        rows = self._query("read a comparison", "SELECT id, data FROM comparisons "  # type: ignore[attr-defined]
                           "ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return self._comparison(rows[0][0], rows[0][1]) if rows else None

    def list_comparisons(self, limit: int | None = None) -> list[tuple[str, str, str, int]]:
        """Stored comparisons, newest first: ``(id, name, created_at, number of variants)``."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ConfigError(f"limit must be a whole number >= 0 or None, not {limit!r}")
        rows = self._query("list comparisons", "SELECT id, name, created_at, variants FROM comparisons "  # type: ignore[attr-defined]
                           "ORDER BY created_at DESC, rowid DESC LIMIT ?", (-1 if limit is None else limit,))
        return [(str(i), str(n), str(c), int(v)) for i, n, c, v in rows]

    def _comparison(self, comparison_id: str, text: str) -> Comparison:
        from greenmeter.comparison import Comparison

        try:
            return Comparison.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise self._corrupt(f"holds an unreadable comparison {comparison_id} ({err})") from err  # type: ignore[attr-defined]

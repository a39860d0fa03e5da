"""The run store: every run and window greenmeter measured, in one SQLite file.

Path (:func:`store_path`): ``Store(path)``, else ``$GREENMETER_STORE``, else :func:`default_store_path`. The file
is marked as greenmeter's (``PRAGMA application_id``) with its schema version in ``PRAGMA user_version``;
:data:`MIGRATIONS` upgrade it in one transaction. WAL mode, a 30 s busy timeout and ``BEGIN IMMEDIATE`` for
every write let several processes write at once. A file greenmeter does not recognise raises :class:`~greenmeter.CorruptStoreError`
and is never written. Runs are inserted as ``running`` and every window is committed as it is added, so a
killed process leaves a readable, incomplete run with the windows it stored. ``Store(path, readonly=True)``
reads a store without write access to it or its folder (``greenmeter runs``, ``report``, ``export`` open it so):
it creates nothing, refuses every write, and writes only to upgrade a store from an older greenmeter.

Tables: ``runs`` (status, times, command, host, carbon settings, whole-run measurement and CO2e as JSON),
``windows`` (each window's ``Measurement.to_json()``), ``steps`` (per-step durations in s, of the windows that
kept them whole: see ``Meter(keep_steps=...)``; others hold a bounded sketch in their measurement),
``power_samples`` (the power timeline: s since the run started, domain key, W), ``comparisons`` (each
:class:`~greenmeter.records.comparison.Comparison` as JSON) and ``optimizations`` (each
:class:`~greenmeter.records.optimization.OptimizeResult` as JSON, with the id of its final comparison), and the
journal of unfinished optimize searches, ``searches`` and ``search_steps`` (see :meth:`Store.save_search_step`),
``calibrations`` (wall-meter calibration profiles: :meth:`Store.save_calibration`), and ``run_jobs`` (the cluster
job of a run: :meth:`Store.set_run_job`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmeter._checks import whole_number
from greenmeter._errors import ConfigError, CorruptStoreError, StoreError
from greenmeter.carbon.settings import CarbonEstimate, CarbonSettings
from greenmeter.records.comparison import Comparison
from greenmeter.records.measurement import DomainEnergy, HostInfo, Measurement
from greenmeter.records.optimization import OptimizeResult
from greenmeter.records.run import RunRecord

if TYPE_CHECKING:
    from greenmeter.calibration.profile import CalibrationProfile

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "RunRecord", "Store", "default_store_path", "migrate",
           "store_path"]

#: ``PRAGMA application_id`` of every greenmeter store: the bytes ``b"GrMt"`` read as a big-endian integer.
APPLICATION_ID = 0x47724D74
#: Schema migration 1 -> 2: the comparisons table.
COMPARISONS_MIGRATION = (
    """CREATE TABLE comparisons (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL, run_id TEXT,
        variants INTEGER NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX comparisons_by_time ON comparisons (created_at)",
)
#: Schema migration 2 -> 3: the optimizations table (``comparison_id``: the final comparison stored with it).
OPTIMIZATIONS_MIGRATION = (
    """CREATE TABLE optimizations (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL, run_id TEXT, chosen TEXT NOT NULL,
        comparison_id TEXT, data TEXT NOT NULL)""",
    "CREATE INDEX optimizations_by_time ON optimizations (created_at)",
)
#: Schema migration 3 -> 4: the journal of unfinished optimize searches, which a resumed search reads back.
#: ``searches``: one row per search (``key``: the hash of its fingerprint; ``fingerprint``: what it must match, as
#: JSON; ``spent_s``: seconds of its time budget spent so far). ``search_steps``: each finished step of it
#: (``data``: JSON; ``model``: the candidate model it built, serialized by the optimizer, when it could be).
SEARCHES_MIGRATION = (
    """CREATE TABLE searches (
        key TEXT PRIMARY KEY, name TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        fingerprint TEXT NOT NULL, spent_s REAL NOT NULL)""",
    """CREATE TABLE search_steps (
        key TEXT NOT NULL, step TEXT NOT NULL, data TEXT NOT NULL, model BLOB, PRIMARY KEY (key, step))""",
)
#: Schema migration 4 -> 5: wall-meter calibration profiles (``data``: a ``CalibrationProfile`` as JSON), newest per
#: host wins (see :meth:`Store.latest_calibration`).
CALIBRATIONS_MIGRATION = (
    """CREATE TABLE calibrations (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, created_at TEXT NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX calibrations_by_host ON calibrations (host, created_at)",
)
#: Schema migration 5 -> 6: the cluster job a run belongs to (``job_id``: ``SLURM_JOB_ID``; ``job``: the job's facts
#: as JSON, see :meth:`Store.set_run_job`), so runs can be listed by job.
JOBS_MIGRATION = (
    """CREATE TABLE IF NOT EXISTS run_jobs (
        run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE, job_id TEXT NOT NULL, job TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS run_jobs_by_job ON run_jobs (job_id)",
)
#: ``MIGRATIONS[n]`` brings a store from schema version ``n`` to ``n + 1`` (statements run in one transaction).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('run', 'api')),
            status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
            started_at TEXT NOT NULL, ended_at TEXT, command TEXT, exit_code INTEGER, host TEXT,
            carbon_settings TEXT, measurement TEXT, carbon TEXT, note TEXT)""",
        "CREATE INDEX runs_by_start ON runs (started_at)",
        """CREATE TABLE windows (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, duration_s REAL NOT NULL,
            energy_j REAL NOT NULL, samples INTEGER, steps INTEGER NOT NULL, measurement TEXT NOT NULL,
            carbon TEXT)""",
        "CREATE INDEX windows_by_run ON windows (run_id, id)",
        """CREATE TABLE steps (
            window_id INTEGER NOT NULL REFERENCES windows (id) ON DELETE CASCADE, idx INTEGER NOT NULL,
            duration_s REAL NOT NULL, PRIMARY KEY (window_id, idx)) WITHOUT ROWID""",
        """CREATE TABLE power_samples (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, t_s REAL NOT NULL,
            domain TEXT NOT NULL, power_w REAL NOT NULL)""",
        "CREATE INDEX power_samples_by_run ON power_samples (run_id, t_s)",
    ),
    COMPARISONS_MIGRATION,
    OPTIMIZATIONS_MIGRATION,
    SEARCHES_MIGRATION,
    CALIBRATIONS_MIGRATION,
    JOBS_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 30.0
_TABLES = frozenset({"runs", "windows", "steps", "power_samples", "comparisons", "optimizations", "searches",
                     "search_steps", "calibrations", "run_jobs"})
_KINDS = ("run", "api")
_FINAL = ("ok", "failed", "interrupted")
_MAGIC = b"SQLite format 3\x00"
_HINT = "set GREENMETER_STORE or pass --store to use another path"
_RUN_COLUMNS = ("id, name, kind, status, started_at, ended_at, command, exit_code, host, carbon_settings, "
                "measurement, carbon, note, (SELECT count(*) FROM windows w WHERE w.run_id = runs.id)")


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/greenmeter/runs.db`` (``~/.local/share/greenmeter/runs.db`` when it is unset)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "greenmeter" / "runs.db"


def store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The store file a path argument names: ``path``, else ``$GREENMETER_STORE``, else :func:`default_store_path`."""
    if path is None:
        path = os.environ.get("GREENMETER_STORE") or default_store_path()
    return Path(path).expanduser()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


class Store:
    """A greenmeter run store (one SQLite file); thread-safe, and safe to share between processes.

    Args:
        path: the store file; default ``$GREENMETER_STORE``, else :func:`default_store_path`. Missing
            parent folders are created (not when ``readonly``).
        readonly: only read the store: it must exist, nothing is created, no write access to the file or its
            folder is needed, and every write raises :class:`StoreError`. A store from an older greenmeter is
            upgraded first where this process may write it (else :class:`StoreError` says so).

    Attributes:
        path: the store file.
        readonly: whether the store was opened for reading only.

    Raises:
        StoreError: the path cannot be created or written; the store comes from a newer greenmeter; with
            ``readonly``, there is no store at the path, or it needs an upgrade that this process cannot write.
        CorruptStoreError: the file is not a greenmeter store (it is left untouched).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, readonly: bool = False) -> None:
        self.path = store_path(path)
        self.readonly = bool(readonly)
        self._lock = threading.RLock()
        if self.readonly:
            if not self.path.exists():
                raise StoreError(f"there is no run store at {self.path} (nothing has been stored there yet); {_HINT}")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the folder of the run store {self.path}: {err.strerror or err}; "
                                 f"{_HINT}") from err
        self._check_file()
        try:
            self._conn: sqlite3.Connection | None = self._connect()
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the run store {self.path}: {err}; {_HINT}") from err
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # Opening ---------------------------------------------------------------------------------
    def _corrupt(self, what: str) -> CorruptStoreError:
        return CorruptStoreError(f"{self.path} {what}, so greenmeter will not use it and has not changed it; "
                                 "move the file away, or set GREENMETER_STORE (or pass --store) to use another path")

    def _connect(self, immutable: bool = False) -> sqlite3.Connection:
        """A connection to the store: read-write (created when missing), or read-only through a ``mode=ro`` URI."""
        if not self.readonly:
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        uri = self.path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)

    def _readable_without_wal_files(self) -> None:
        """Read a WAL store whose folder this process cannot write (its ``-shm`` file cannot be made).

        SQLite reads a store in WAL mode read-only only where it can create the ``-shm`` file. Where it
        cannot, and no ``-wal`` file holds changes, everything is in the main file and it is read as
        immutable (without locks: a greenmeter writing there at the same moment could be missed).
        """
        conn = self._connection()
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.OperationalError as err:
            text = str(err)
            wal = self.path.with_name(self.path.name + "-wal")
            if "readonly" not in text and "unable to open" not in text:
                raise
            if wal.exists() and wal.stat().st_size:
                raise StoreError(f"cannot read the run store {self.path} ({text}): its -wal file holds changes that "
                                 "SQLite reads only through a -shm file it cannot create in that folder; open the "
                                 f"store once as a user who may write there, or {_HINT}") from err
        conn.close()
        self._conn = self._connect(immutable=True)

    def _check_file(self) -> None:
        """Read the header of an existing file, before SQLite writes anything to it."""
        try:
            info = self.path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise self._corrupt("is not a regular file")
            if info.st_size == 0:
                return  # an empty file is an empty SQLite database
            with open(self.path, "rb") as handle:
                header = handle.read(100)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreError(f"cannot read the run store {self.path}: {err.strerror or err}; {_HINT}") from err
        if len(header) < 100 or not header.startswith(_MAGIC):
            raise self._corrupt("is not an SQLite database (wrong header)")
        app_id = int.from_bytes(header[68:72], "big")
        if app_id not in (0, APPLICATION_ID):
            raise self._corrupt(f"is another program's SQLite database (application_id {app_id:#x})")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        try:  # with a WAL in use, the file's header may lag behind the database
            wal_in_use = self.path.with_name(self.path.name + "-wal").stat().st_size > 0
        except OSError:
            wal_in_use = False
        if header[92:96] == header[24:28] and not wal_in_use and info.st_size < pages * page_size:
            raise self._corrupt(f"is truncated ({info.st_size} bytes where its header says {pages * page_size})")

    def _open(self) -> None:
        with self._sqlite_errors("open"):
            if self.readonly:
                self._readable_without_wal_files()
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            version = self._check_identity()
            if self.readonly:
                if version < SCHEMA_VERSION:
                    self._upgrade_for_reading(version)
                return
            conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable when a process is killed
            self._use_wal(conn)
            if version < SCHEMA_VERSION:
                with self._write():
                    migrate(conn)

    def _upgrade_for_reading(self, version: int) -> None:
        """Upgrade an older store opened read-only, where this process may write it, then read it again."""
        self._connection().close()
        self._conn = None
        try:
            Store(self.path).close()  # migrates it, in one transaction
        except StoreError as err:
            if "cannot write" not in str(err):  # locked, damaged...: that is the error to show
                raise
            raise StoreError(
                f"the run store {self.path} needs an upgrade (schema version {version} to {SCHEMA_VERSION}) before "
                "it can be read, which needs write access to it and its folder; open it once as a user who may "
                f"write it (any greenmeter run that stores to it upgrades it), or {_HINT}") from err
        self._conn = self._connect()
        self._open()

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch to WAL (persistent in the file). The switch skips the busy handler, so retry it here."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _check_identity(self) -> int:
        """The store's schema version, after checking the file is greenmeter's (or an empty database)."""
        conn = self._connection()
        conn.execute("BEGIN")  # one snapshot: another process may be creating the store right now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.execute("COMMIT")
        if app_id == 0 and not tables and version == 0:
            return 0
        if app_id != APPLICATION_ID:
            raise self._corrupt(f"is an SQLite database of another program (tables: {', '.join(sorted(tables))})")
        if version > SCHEMA_VERSION:
            raise StoreError(f"the run store {self.path} has schema version {version}, written by a newer "
                             f"greenmeter (this one reads up to {SCHEMA_VERSION}): upgrade greenmeter, or {_HINT}")
        if version == SCHEMA_VERSION and not _TABLES <= tables:
            raise self._corrupt(f"is a greenmeter store without the tables {', '.join(sorted(_TABLES - tables))}")
        return int(version)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the run store {self.path} is closed; open a new Store")
        return self._conn

    @contextmanager
    def _sqlite_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as err:
            text = str(err)
            if "malformed" in text or "not a database" in text:
                raise self._corrupt(f"is damaged ({text})") from err
            if "locked" in text or "busy" in text:
                raise StoreError(f"the run store {self.path} is locked by another process (waited up to "
                                 f"{BUSY_TIMEOUT_S:g} s); try again, or {_HINT}") from err
            if "readonly" in text or "unable to open" in text:
                raise StoreError(f"cannot write to the run store {self.path} ({text}); {_HINT}") from err
            if "full" in text or "I/O" in text:
                raise StoreError(f"run store {self.path}: cannot {action} ({text}); its disk may be full or "
                                 f"failing: free some space, or {_HINT}") from err
            raise StoreError(f"run store {self.path}: cannot {action}: {text}") from err

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed at the end of the block."""
        conn = self._connection()
        if self.readonly:
            raise StoreError(f"the run store {self.path} was opened read-only; open it without readonly=True to write")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # Writing ---------------------------------------------------------------------------------
    def start_run(
        self, *, name: str, kind: str, command: Iterable[str] | None = None, host: HostInfo | None = None,
        carbon_settings: CarbonSettings | Mapping[str, Any] | None = None,
    ) -> str:
        """Store a new run with status ``running`` (committed at once) and return its id (32 hex digits)."""
        if kind not in _KINDS:
            raise ConfigError(f"run kind must be one of {_KINDS}, not {kind!r}")
        if isinstance(carbon_settings, CarbonSettings):
            carbon_settings = carbon_settings.to_dict()
        run_id = uuid.uuid4().hex
        row = (run_id, str(name), kind, _now(), _dumps(None if command is None else [str(c) for c in command]),
               _dumps(host.to_dict() if host is not None else None),
               _dumps(dict(carbon_settings) if carbon_settings is not None else None))
        with self._lock, self._sqlite_errors("store a run"), self._write() as conn:
            conn.execute("INSERT INTO runs (id, name, kind, status, started_at, command, host, carbon_settings) "
                         "VALUES (?, ?, ?, 'running', ?, ?, ?, ?)", row)
        return run_id

    def add_window(self, run_id: str, measurement: Measurement, carbon: CarbonEstimate | None = None) -> int:
        """Store one window and its steps in one transaction; returns the window's id.

        ``carbon`` (default ``measurement.carbon``), when given, replaces the measurement's own in the store.
        """
        if not isinstance(measurement, Measurement):
            raise ConfigError(f"add_window takes a greenmeter Measurement, not {type(measurement).__name__}")
        m = measurement if carbon is None or carbon == measurement.carbon else replace(measurement, carbon=carbon)
        carbon = m.carbon
        with self._lock, self._sqlite_errors("store a window"), self._write() as conn:
            self._require_run(conn, run_id)
            cursor = conn.execute(
                "INSERT INTO windows (run_id, name, status, started_at, duration_s, energy_j, samples, steps, "
                "measurement, carbon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, m.name, m.status, m.started_at, m.duration_s, m.energy_j, m.samples, m.steps,
                 m.to_json(), _dumps(carbon.to_dict() if carbon is not None else None)))
            window_id = int(cursor.lastrowid or 0)
            conn.executemany("INSERT INTO steps (window_id, idx, duration_s) VALUES (?, ?, ?)",
                             ((window_id, i, d) for i, d in enumerate(m.step_durations_s)))
        return window_id

    def add_power_samples(self, run_id: str, rows: Iterable[tuple[float, str, float]]) -> None:
        """Store power-timeline samples: ``(seconds since the run started, domain key, watts)``."""
        data = [(run_id, float(t), str(domain), float(watts)) for t, domain, watts in rows]
        with self._lock, self._sqlite_errors("store power samples"), self._write() as conn:
            self._require_run(conn, run_id)
            conn.executemany("INSERT INTO power_samples (run_id, t_s, domain, power_w) VALUES (?, ?, ?, ?)", data)

    def finish_run(
        self, run_id: str, *, status: str, exit_code: int | None = None, measurement: Measurement | None = None,
        carbon: CarbonEstimate | None = None, note: str | None = None,
    ) -> None:
        """Mark a running run as finished (``ok``, ``failed`` or ``interrupted``).

        ``carbon`` defaults to ``measurement.carbon``. Raises :class:`StoreError` for an unknown run or one
        already finished.
        """
        if status not in _FINAL:
            raise ConfigError(f"a finished run's status must be one of {_FINAL}, not {status!r}")
        if carbon is None and measurement is not None:
            carbon = measurement.carbon
        with self._lock, self._sqlite_errors("finish a run"), self._write() as conn:
            current = self._require_run(conn, run_id)
            if current != "running":
                raise StoreError(f"run {run_id} in {self.path} is already finished ({current})")
            conn.execute(
                "UPDATE runs SET status = ?, ended_at = ?, exit_code = ?, measurement = ?, carbon = ?, note = ? "
                "WHERE id = ?",
                (status, _now(), exit_code, measurement.to_json() if measurement is not None else None,
                 _dumps(carbon.to_dict() if carbon is not None else None), note, run_id))

    def _query(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock, self._sqlite_errors(action):
            return self._connection().execute(sql, params).fetchall()

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> str:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id!r} in {self.path}; writes need the full id from start_run")
        return str(row[0])

    # Reading ---------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id or unique id prefix.

        Raises:
            StoreError: no run, or several runs, match (the message says how to list the ids).
        """
        full = self._resolve(run_id)
        return self._record(self._query("read a run", f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (full,))[0])

    def last_run(self) -> RunRecord | None:
        """The most recently started run, or ``None`` for an empty store."""
        runs = self.list_runs(limit=1)
        return runs[0] if runs else None

    def list_runs(self, limit: int | None = None, *, job: str | None = None) -> list[RunRecord]:
        """Stored runs, newest first (``limit`` of them, or all).

        Args:
            limit: how many runs at most; ``None`` for all.
            job: only the runs of this cluster job (its ``SLURM_JOB_ID``, see :meth:`set_run_job`).

        Raises:
            ConfigError: ``limit`` is not a whole number >= 0, or ``job`` is not a non-empty string.
        """
        limit = whole_number("limit", limit, minimum=0, optional=True)
        if job is not None and (not isinstance(job, str) or not job.strip()):
            raise ConfigError(f"job must be a cluster job id such as '123456', not {job!r}")
        where, params = (("WHERE id IN (SELECT run_id FROM run_jobs WHERE job_id = ?) ", (job.strip(),))
                         if job is not None else ("", ()))
        rows = self._query("list runs", f"SELECT {_RUN_COLUMNS} FROM runs {where}ORDER BY started_at DESC, rowid DESC "
                           "LIMIT ?", (*params, -1 if limit is None else limit))
        return [self._record(row) for row in rows]

    def set_run_job(self, run_id: str, job: Mapping[str, str]) -> None:
        """Record the cluster job a run belongs to (:attr:`RankInfo.job`: ``job_id``, ``nodelist``, ``step_id``).

        Args:
            run_id: the run's full id (from :meth:`start_run`).
            job: the job's facts; ``job["job_id"]`` is what :meth:`list_runs` filters on.

        Raises:
            ConfigError: ``job`` has no ``job_id``.
            StoreError: no such run, or the store cannot be written.
        """
        facts = {str(k): str(v) for k, v in dict(job).items()}
        if not facts.get("job_id"):
            raise ConfigError(f"a run's job needs a job_id (SLURM_JOB_ID), not {facts!r}")
        with self._lock, self._sqlite_errors("record a run's job"), self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute("INSERT OR REPLACE INTO run_jobs (run_id, job_id, job) VALUES (?, ?, ?)",
                         (run_id, facts["job_id"], json.dumps(facts)))

    def run_job(self, run_id: str) -> dict[str, str] | None:
        """The cluster job facts of a run (see :meth:`set_run_job`), or ``None`` when it ran outside one.

        Raises:
            StoreError: no such run.
        """
        full = self._resolve(run_id)
        rows = self._query("read a run's job", "SELECT job FROM run_jobs WHERE run_id = ?", (full,))
        return dict(json.loads(rows[0][0])) if rows else None

    def windows(self, run_id: str) -> list[Measurement]:
        """The windows stored for a run (id or unique prefix), in the order they were stored."""
        full = self._resolve(run_id)
        rows = self._query("read windows", "SELECT measurement FROM windows WHERE run_id = ? ORDER BY id", (full,))
        try:
            return [Measurement.from_json(text) for (text,) in rows]
        except json.JSONDecodeError as err:
            raise self._corrupt(f"holds unreadable JSON in a window of run {full} ({err})") from err

    def power_samples(self, run_id: str) -> list[tuple[float, str, float]]:
        """A run's power timeline: ``(seconds since the run started, domain key, watts)``, in time order."""
        full = self._resolve(run_id)
        rows = self._query("read power samples", "SELECT t_s, domain, power_w FROM power_samples WHERE run_id = ? "
                           "ORDER BY t_s, rowid", (full,))
        return [(float(t), str(d), float(p)) for t, d, p in rows]

    def windows_by_id(self, run_id: str) -> list[tuple[int, Measurement]]:
        """The windows stored for a run (id or unique prefix) with their window ids, in the order they were stored."""
        full = self._resolve(run_id)
        rows = self._query("read windows", "SELECT id, measurement FROM windows WHERE run_id = ? ORDER BY id", (full,))
        try:
            return [(int(i), Measurement.from_json(text)) for i, text in rows]
        except json.JSONDecodeError as err:
            raise self._corrupt(f"holds unreadable JSON in a window of run {full} ({err})") from err

    def add_window_domain(self, window_id: int, domain: DomainEnergy) -> None:
        """Add a domain to a stored window, in one transaction; one with the same key is replaced.

        For figures learnt after the window ended, such as an external meter's energy
        (:func:`greenmeter.calibration.calibrate`). The window's total is not changed: give the domain
        ``in_total=False`` unless it belongs in the total.

        Raises:
            StoreError: there is no window with this id.
            ConfigError: ``domain`` is not a :class:`~greenmeter.records.measurement.DomainEnergy`.
        """
        if not isinstance(domain, DomainEnergy):
            raise ConfigError(f"add_window_domain takes a greenmeter DomainEnergy, not {type(domain).__name__}")
        with self._lock, self._sqlite_errors("add a domain to a window"), self._write() as conn:
            row = conn.execute("SELECT measurement FROM windows WHERE id = ?", (int(window_id),)).fetchone()
            if row is None:
                raise StoreError(f"no window with id {window_id} in {self.path}")
            try:
                m = Measurement.from_json(row[0])
            except json.JSONDecodeError as err:
                raise self._corrupt(f"holds unreadable JSON in window {window_id} ({err})") from err
            domains = tuple(d for d in m.domains if d.key != domain.key) + (domain,)
            conn.execute("UPDATE windows SET measurement = ? WHERE id = ?",
                         (replace(m, domains=domains).to_json(), int(window_id)))

    def save_calibration(self, profile: CalibrationProfile) -> str:
        """Store a wall-meter calibration profile in one transaction; returns its id (32 hex digits)."""
        from greenmeter.calibration.profile import CalibrationProfile  # the calibration stage, loaded when used

        if not isinstance(profile, CalibrationProfile):
            raise ConfigError(f"save_calibration takes a greenmeter CalibrationProfile, not {type(profile).__name__}")
        calibration_id = uuid.uuid4().hex
        with self._lock, self._sqlite_errors("store a calibration"), self._write() as conn:
            conn.execute("INSERT INTO calibrations (id, host, created_at, data) VALUES (?, ?, ?, ?)",
                         (calibration_id, profile.host, profile.created_at, profile.to_json()))
        return calibration_id

    def latest_calibration(self, host: str) -> CalibrationProfile | None:
        """The newest calibration profile stored for ``host`` (a host name), or ``None`` when there is none.

        Raises:
            CorruptStoreError: its stored JSON cannot be read.
        """
        from greenmeter.calibration.profile import CalibrationProfile  # the calibration stage, loaded when used

        rows = self._query("read a calibration", "SELECT id, data FROM calibrations WHERE host = ? "
                           "ORDER BY created_at DESC, rowid DESC LIMIT 1", (str(host),))
        return self._decoded(CalibrationProfile, "calibration", rows[0][0], rows[0][1]) if rows else None

    def _resolve(self, run_id: str) -> str:
        prefix = str(run_id).strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise StoreError(f"{run_id!r} is not a run id (ids are hex digits); run `greenmeter runs` to see them")
        found = [row[0] for row in self._query(
            "find a run", "SELECT id FROM runs WHERE id LIKE ? ORDER BY started_at DESC LIMIT 6", (prefix + "%",))]
        if not found:
            raise StoreError(f"no run with an id starting with {prefix!r} in {self.path}; "
                             "run `greenmeter runs` to see the stored ids")
        if len(found) > 1:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise StoreError(f"run id prefix {prefix!r} is ambiguous in {self.path}: it matches {shown}; give "
                             "more characters (run `greenmeter runs` to see the ids)")
        return str(found[0])

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        data = dict(zip(("id", "name", "kind", "status", "started_at", "ended_at", "command", "exit_code", "host",
                         "carbon_settings", "measurement", "carbon", "note", "windows_count"), row))
        for key in ("command", "host", "carbon_settings", "measurement", "carbon"):
            try:
                data[key] = None if data[key] is None else json.loads(data[key])
            except json.JSONDecodeError as err:
                raise self._corrupt(f"holds unreadable JSON in the {key} of run {data['id']} ({err})") from err
        return RunRecord.from_dict(data)

    # Closing ---------------------------------------------------------------------------------
    def add_comparison(self, comparison: Comparison) -> str:
        """Store a comparison in one transaction; returns its id (32 hex digits)."""
        if not isinstance(comparison, Comparison):
            raise ConfigError(f"add_comparison takes a greenmeter Comparison, not {type(comparison).__name__}")
        comparison_id = uuid.uuid4().hex
        row = (comparison_id, comparison.name, comparison.created_at, comparison.run_id, len(comparison.variants),
               comparison.to_json(indent=None))
        with self._lock, self._sqlite_errors("store a comparison"), self._write() as conn:
            conn.execute("INSERT INTO comparisons (id, name, created_at, run_id, variants, data) "
                         "VALUES (?, ?, ?, ?, ?, ?)", row)
        return comparison_id

    def get_comparison(self, comparison_id: str) -> Comparison:
        """The comparison with this id or unique id prefix.

        Raises:
            StoreError: none or several match (the message says how to list them).
            CorruptStoreError: its stored JSON cannot be read.
        """
        found, text = self._find("comparison", "comparisons", comparison_id, "run `greenmeter comparisons`")
        return self._decoded(Comparison, "comparison", found, text)

    def last_comparison(self) -> Comparison | None:
        """The most recent comparison, or ``None`` when none is stored."""
        return self._latest(Comparison, "comparison", "comparisons")

    def list_comparisons(self, limit: int | None = None) -> list[tuple[str, str, str, int, str]]:
        """Stored comparisons, newest first: ``(id, name, created_at, number of variants, status)``.

        ``status`` is the comparison's: ``"complete"``, or ``"interrupted"`` when Ctrl-C or SIGTERM cut it
        short (records written before comparisons had a status read as complete).
        """
        limit = whole_number("limit", limit, minimum=0, optional=True)
        rows = self._query("list comparisons", "SELECT id, name, created_at, variants, "
                           "coalesce(json_extract(data, '$.status'), 'complete') FROM comparisons "
                           "ORDER BY created_at DESC, rowid DESC LIMIT ?", (-1 if limit is None else limit,))
        return [(str(i), str(n), str(c), int(v), str(st)) for i, n, c, v, st in rows]

    def _decoded(self, cls: Any, what: str, ident: str, text: str) -> Any:
        """The record ``cls`` (a Comparison, an OptimizeResult) stored as JSON ``text`` under ``ident``."""
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise self._corrupt(f"holds an unreadable {what} {ident} ({err})") from err

    def _latest(self, cls: Any, what: str, table: str) -> Any:
        """The newest record of ``table``, or ``None`` when it holds none."""
        rows = self._query(f"read {'an' if what[0] in 'aeiou' else 'a'} {what}",
                           f"SELECT id, data FROM {table} ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return self._decoded(cls, what, rows[0][0], rows[0][1]) if rows else None

    def _find(self, what: str, table: str, ident: str, listing: str) -> tuple[str, str]:
        """``(id, data)`` of the row of ``table`` whose id is ``ident`` or starts with it (``what`` names the
        record in errors, ``listing`` says how to see the stored ids)."""
        prefix = str(ident).strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise StoreError(f"{ident!r} is not {'an' if what[0] in 'aeiou' else 'a'} {what} id (ids are hex "
                             f"digits); {listing} to see them")
        rows = self._query(f"find {'an' if what[0] in 'aeiou' else 'a'} {what}", f"SELECT id, data FROM {table} "
                           "WHERE id LIKE ? ORDER BY created_at DESC LIMIT 2", (prefix + "%",))
        if not rows:
            raise StoreError(f"no {what} with an id starting with {prefix!r} in {self.path}; "
                             f"{listing} to see the stored ids")
        if len(rows) > 1:
            raise StoreError(f"{what} id prefix {prefix!r} is ambiguous in {self.path}; give more characters")
        return str(rows[0][0]), str(rows[0][1])

    def add_optimization(self, result: OptimizeResult, *, finished_search: str | None = None) -> str:
        """Store an optimize result in one transaction; returns its id (32 hex digits).

        Its ``comparison_id`` is the stored comparison that is ``result.comparison`` (same run, name and
        creation time), when :func:`greenmeter.optimize` stored it in this store, else ``NULL``.
        ``finished_search``: the key of the search journal this result ends; it is deleted in the same
        transaction, so a search is either resumable or stored whole, never neither.

        Raises:
            ConfigError: ``result`` is not an :class:`~greenmeter.records.optimization.OptimizeResult`.
        """
        if not isinstance(result, OptimizeResult):
            raise ConfigError(f"add_optimization takes a greenmeter OptimizeResult, not {type(result).__name__}")
        optimization_id = uuid.uuid4().hex
        final = result.comparison
        with self._lock, self._sqlite_errors("store an optimization"), self._write() as conn:
            found = conn.execute("SELECT id FROM comparisons WHERE run_id IS ? AND name = ? AND created_at = ? "
                                 "ORDER BY rowid DESC LIMIT 1", (final.run_id, final.name, final.created_at)).fetchone()
            conn.execute("INSERT INTO optimizations (id, name, created_at, run_id, chosen, comparison_id, data) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (optimization_id, result.name, result.created_at, final.run_id, result.chosen,
                          None if found is None else found[0], result.to_json(indent=None)))
            if finished_search is not None:
                self._drop_search(conn, finished_search)
        return optimization_id

    def get_optimization(self, optimization_id: str) -> OptimizeResult:
        """The optimize result with this id or unique id prefix.

        Raises:
            StoreError: none or several match.
            CorruptStoreError: its stored JSON cannot be read.
        """
        found, text = self._find("optimization", "optimizations", optimization_id, "run `greenmeter optimizations`")
        return self._decoded(OptimizeResult, "optimization", found, text)

    def last_optimization(self) -> OptimizeResult | None:
        """The most recent optimize result, or ``None`` when none is stored."""
        return self._latest(OptimizeResult, "optimization", "optimizations")

    def list_optimizations(self, limit: int | None = None) -> list[tuple[str, str, str, str, str | None]]:
        """Stored optimize results, newest first: ``(id, name, created_at, chosen, comparison_id)``.

        ``comparison_id`` is the stored final comparison's id, or ``None`` when it was not stored here.
        """
        limit = whole_number("limit", limit, minimum=0, optional=True)
        rows = self._query("list optimizations", "SELECT id, name, created_at, chosen, comparison_id "
                           "FROM optimizations ORDER BY created_at DESC, rowid DESC LIMIT ?",
                           (-1 if limit is None else limit,))
        return [(str(i), str(n), str(c), str(ch), None if cid is None else str(cid)) for i, n, c, ch, cid in rows]

    # The journal of unfinished optimize searches ----------------------------------------------------------------
    def save_search_step(self, key: str, name: str, fingerprint: Mapping[str, Any], spent_s: float, step: str,
                         data: Mapping[str, Any], model: bytes | None = None) -> None:
        """Journal one finished step of an optimize search (committed at once, with the search's header).

        Args:
            key: the search's key (the hash of ``fingerprint``).
            name: the search's name.
            fingerprint: what a resumed search must match (model, data and settings hashes), JSON-able.
            spent_s: seconds of its time budget spent so far, this step included.
            step: the step's name, unique in the search (``"sensitivity"``, ``"candidate:int8-static"``, ...);
                a step saved again replaces the old one.
            data: the step's result, JSON-able.
            model: the model the step built, serialized by the caller, or ``None``.
        """
        now = _now()
        with self._lock, self._sqlite_errors("journal an optimize search"), self._write() as conn:
            conn.execute("INSERT INTO searches (key, name, started_at, updated_at, fingerprint, spent_s) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET updated_at = excluded.updated_at, "
                         "spent_s = excluded.spent_s", (key, name, now, now, json.dumps(dict(fingerprint)),
                                                        float(spent_s)))
            conn.execute("INSERT OR REPLACE INTO search_steps (key, step, data, model) VALUES (?, ?, ?, ?)",
                         (key, step, json.dumps(dict(data)), None if model is None else sqlite3.Binary(model)))

    def search_journal(self, key: str) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], bytes | None]]] | None:
        """The journal of the unfinished search ``key``: its header (``name``, ``started_at``, ``updated_at``,
        ``fingerprint``, ``spent_s``) and its steps (``step -> (data, model bytes or None)``); ``None`` when there
        is none.

        Raises:
            CorruptStoreError: its stored JSON cannot be read.
        """
        rows = self._query("read an optimize search", "SELECT name, started_at, updated_at, fingerprint, spent_s "
                           "FROM searches WHERE key = ?", (key,))
        if not rows:
            return None
        steps = self._query("read an optimize search", "SELECT step, data, model FROM search_steps WHERE key = ?",
                            (key,))
        try:
            name, started_at, updated_at, fingerprint, spent_s = rows[0]
            header = {"name": name, "started_at": started_at, "updated_at": updated_at,
                      "fingerprint": json.loads(fingerprint), "spent_s": float(spent_s)}
            return header, {str(step): (json.loads(data), None if model is None else bytes(model))
                            for step, data, model in steps}
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise self._corrupt(f"holds an unreadable optimize search journal {key} ({err})") from err

    def unfinished_searches(self) -> list[tuple[str, str, str, dict[str, Any], float, int]]:
        """Unfinished optimize searches, newest first: ``(key, name, updated_at, fingerprint, spent_s, steps)``."""
        rows = self._query("list optimize searches", "SELECT s.key, s.name, s.updated_at, s.fingerprint, s.spent_s, "
                           "(SELECT count(*) FROM search_steps t WHERE t.key = s.key) FROM searches s "
                           "ORDER BY s.updated_at DESC, s.rowid DESC")
        try:
            return [(str(k), str(n), str(u), json.loads(f), float(sp), int(c)) for k, n, u, f, sp, c in rows]
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise self._corrupt(f"holds an unreadable optimize search journal ({err})") from err

    def drop_search(self, key: str) -> None:
        """Delete the journal of the search ``key`` (nothing happens when there is none)."""
        with self._lock, self._sqlite_errors("delete an optimize search"), self._write() as conn:
            self._drop_search(conn, key)

    @staticmethod
    def _drop_search(conn: sqlite3.Connection, key: str) -> None:
        conn.execute("DELETE FROM search_steps WHERE key = ?", (key,))
        conn.execute("DELETE FROM searches WHERE key = ?", (key,))

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the file). Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', readonly=True' if self.readonly else ''})"


def migrate(conn: sqlite3.Connection, migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
    """Bring a store up to ``len(migrations)`` inside the caller's write transaction; returns the old version.

    The version is read again here, under the write lock, so two processes opening a new store at once
    migrate it once. Statements run one by one (``executescript`` would commit the transaction).
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if app_id != APPLICATION_ID and (app_id != 0 or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
        raise CorruptStoreError(f"not a greenmeter store (application_id {app_id:#x}, not {APPLICATION_ID:#x})")
    if version > len(migrations):
        raise StoreError(f"store schema version {version} is newer than this greenmeter's "
                         f"({len(migrations)}): upgrade greenmeter")
    for script in migrations[version:]:
        for statement in script:
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {len(migrations)}")
    return version

"""The daemon's durable memory: one SQLite file (WAL), safe across threads and processes.

A job is keyed by ``sha256(content):fingerprint(settings)``, so the same image
with the same settings is one job however often and under whatever name it is
dropped. States, in order::

    claimed    the original sits in a daemon's claim folder; ``submit_sent`` and
               ``upload_url`` are written just before a submit leaves, so a restart
               after a crash during the submit looks that task up instead of
               sending the image again
    submitted  the remote task id is known (written before waiting for it)
    staged     the cut-out is written under OUTBOX/.bgremove/staging
    placing    the final output name is chosen (written before linking it)
    placed     the output is in OUTBOX; the original still has to move to done/
    done       finished
    failed     given up; the original is in failed/ with a .error.json

A restart (or another daemon, once the owner is dead) takes over any job not
done or failed from the state it reached: it waits on the known task id, or
places the staged output, instead of paying for the image again.

``synchronous=NORMAL`` with WAL: a committed row survives ``kill -9`` of the
process; a power cut may lose the last moments. One connection guarded by a
lock serves all threads of a daemon; ``busy_timeout`` covers other processes.
Keep the journal on a local disk: SQLite locking is unreliable on network
shares (set ``watch.journal`` per machine there; the claim folders still keep
daemons apart).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgremove.errors import ConfigError
from bgremove.watcher.naming import shown

log = logging.getLogger(__name__)

ACTIVE_STATES = ("claimed", "submitted", "staged", "placing", "placed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT,
    input TEXT,
    claim TEXT,
    task_id TEXT,
    staged TEXT,
    output TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    error_code INTEGER,
    error TEXT,
    first_error REAL,
    duplicates INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    submit_sent REAL,
    upload_url TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS submits (ts REAL NOT NULL, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS submits_ts ON submits(ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    input TEXT,
    output TEXT,
    seconds REAL,
    task_id TEXT,
    error_kind TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS daemons (
    owner TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    started REAL,
    heartbeat REAL,
    stopped REAL,
    status TEXT
);
"""


#: Columns added since the first version: (name, type).
_ADDED_COLUMNS = (("submit_sent", "REAL"), ("upload_url", "TEXT"))


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``."""

    key: str
    state: str
    owner: str | None
    input: str | None
    claim: str | None
    task_id: str | None
    staged: str | None
    output: str | None
    attempts: int
    error_kind: str | None
    error_code: int | None
    error: str | None
    first_error: float | None
    duplicates: int
    submit_sent: float | None = None  # wall-clock time a submit left, its answer not yet read
    upload_url: str | None = None  # the image URL that submit sent


@dataclass(frozen=True)
class Begin:
    """What ``Journal.begin`` decided for a claimed file."""

    action: str  # "new", "resume", "duplicate", "busy"
    job: Job | None


class Journal:
    """Thread-safe access to the journal file."""

    def __init__(self, path: Path, *, check: bool = False) -> None:
        """Open (or create) the journal; ``ConfigError`` with one line when it cannot be
        opened or, with ``check``, is damaged (``PRAGMA quick_check``)."""
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open(check)
        except (OSError, sqlite3.Error) as exc:
            if getattr(self, "_db", None) is not None:
                self._db.close()
            raise _journal_error(path, exc) from None

    def _open(self, check: bool) -> None:
        path = self.path
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        if check:
            problems = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
        self._db.execute("PRAGMA busy_timeout=30000")
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:  # e.g. a file system without shared memory
            log.warning("journal %s: WAL mode unavailable, using the rollback journal", path)
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS:  # a journal written by an older version
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- jobs ---------------------------------------------------------------

    def get(self, key: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone()
        return _job(row)

    def begin(self, key: str, *, owner: str, input: str, claim: str, reprocess: bool,
              is_alive: Callable[[str], bool]) -> Begin:
        """Decide what to do with a freshly claimed file whose content maps to ``key``."""
        now = time.time()
        with self._tx() as db:
            row = _job(db.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone())
            if row is None:
                db.execute("INSERT INTO jobs(key, state, owner, input, claim, created, updated)"
                           " VALUES (?, 'claimed', ?, ?, ?, ?, ?)",
                           (key, owner, _db(input), _db(claim), now, now))
                return Begin("new", self._get_locked(key))
            if row.state == "done" and not reprocess and row.output \
                    and os.path.lexists(row.output):
                db.execute("UPDATE jobs SET duplicates=duplicates+1, updated=? WHERE key=?",
                           (now, key))
                return Begin("duplicate", row)
            if row.state in ACTIVE_STATES and row.owner and row.owner != owner \
                    and is_alive(row.owner):
                return Begin("busy", row)
            if row.state in ACTIVE_STATES and row.owner == owner and row.claim != claim:
                return Begin("busy", row)  # this daemon already works on that content
            if row.state in ACTIVE_STATES:
                db.execute("UPDATE jobs SET owner=?, claim=?, updated=? WHERE key=?",
                           (owner, _db(claim), now, key))
                return Begin("resume", self._get_locked(key))
            # done with reprocess (or its output was removed since), or failed before:
            # start over
            db.execute("UPDATE jobs SET state='claimed', owner=?, input=?, claim=?, task_id=NULL,"
                       " staged=NULL, output=NULL, attempts=0, error_kind=NULL, error_code=NULL,"
                       " error=NULL, first_error=NULL, submit_sent=NULL, upload_url=NULL,"
                       " updated=? WHERE key=?",
                       (owner, _db(input), _db(claim), now, key))
            return Begin("new", self._get_locked(key))

    def _get_locked(self, key: str) -> Job | None:
        return _job(self._db.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone())

    def update(self, key: str, **fields: Any) -> None:
        """Set columns of one job (``state=``, ``task_id=``, ``output=``...)."""
        fields["updated"] = time.time()
        names = ", ".join(f"{name}=?" for name in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {names} WHERE key=?",
                       (*(_db(v) for v in fields.values()), key))

    def note_error(self, key: str, *, kind: str, code: int | None, message: str) -> Job | None:
        """Count a failed attempt; keeps the time of the first failure."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts=attempts+1, error_kind=?, error_code=?, error=?,"
                       " first_error=COALESCE(first_error, ?), updated=? WHERE key=?",
                       (kind, code, _db(message), now, now, key))
            return self._get_locked(key)

    def count_attempt(self, key: str, *, kind: str, message: str) -> None:
        """Count an attempt that could not finish for a local reason (an unwritable
        folder, an unexpected error) without starting the transient-retry clock."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts=attempts+1, error_kind=?, error=?, updated=?"
                       " WHERE key=?", (kind, _db(message), time.time(), key))

    def task_ids(self) -> set[str]:
        """Every task id the journal holds (tasks surely not of a job still looking)."""
        with self._lock:
            rows = self._db.execute("SELECT task_id FROM jobs WHERE task_id IS NOT NULL UNION"
                                    " SELECT task_id FROM events WHERE task_id IS NOT NULL")
            return {str(r[0]) for r in rows}

    def known_tasks(self) -> KnownTasks:
        """``task_ids``, read only when used (a lost submit is rare; a job is not)."""
        return KnownTasks(self)

    def active_jobs(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state IN (?, ?, ?, ?, ?)",
                                    ACTIVE_STATES).fetchall()
        return [j for j in (_job(r) for r in rows) if j is not None]

    # -- events, submissions ------------------------------------------------

    def add_event(self, kind: str, *, input: str, output: str | None = None,
                  seconds: float | None = None, task_id: str | None = None,
                  error_kind: str | None = None, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events(ts, kind, input, output, seconds, task_id, error_kind,"
                       " error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (time.time(), kind, _db(input), _db(output), seconds, task_id, error_kind,
                        _db(error)))

    def add_submit(self, key: str, ts: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO submits(ts, key) VALUES (?, ?)", (ts or time.time(), key))

    def submits_since(self, since: float) -> list[float]:
        """Times of submissions after ``since`` (oldest first)."""
        with self._lock:
            rows = self._db.execute("SELECT ts FROM submits WHERE ts > ? ORDER BY ts",
                                    (since,)).fetchall()
        return [float(r[0]) for r in rows]

    def submit_window(self, since: float) -> tuple[int, float | None]:
        """(number, oldest time) of submissions after ``since``: read fresh every time, so
        daemons sharing this journal see each other's submissions."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), MIN(ts) FROM submits WHERE ts > ?",
                                   (since,)).fetchone()
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    def prune(self, older_than: float) -> None:
        """Drop submission records older than the longest cost window."""
        with self._tx() as db:
            db.execute("DELETE FROM submits WHERE ts < ?", (older_than,))

    def counts(self) -> dict[str, int]:
        """Files done, failed and duplicates (from the event log), jobs still active."""
        with self._lock:
            events = dict(self._db.execute(
                "SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
            active = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?, ?, ?, ?)",
                                      ACTIVE_STATES).fetchone()[0]
        return {"done": int(events.get("done", 0)), "failed": int(events.get("failed", 0)),
                "duplicates": int(events.get("duplicate", 0)), "active": int(active)}

    def unfinished(self) -> dict[str, dict[str, Any]]:
        """Active jobs by claimed file path: ``input``, ``state``, ``task_id``, ``owner``."""
        with self._lock:
            rows = self._db.execute("SELECT claim, input, state, task_id, owner FROM jobs"
                                    " WHERE claim IS NOT NULL AND state IN (?, ?, ?, ?, ?)",
                                    ACTIVE_STATES).fetchall()
        return {str(_py(r["claim"])): {k: _py(r[k]) for k in ("input", "state", "task_id",
                                                              "owner")} for r in rows}

    def last_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT ts, input, error_kind, error FROM events"
                                    " WHERE kind IN ('failed', 'retry', 'warning')"
                                    " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{k: _py(v) for k, v in dict(r).items()} for r in rows]

    # -- daemons --------------------------------------------------------------

    def daemon_heartbeat(self, owner: str, *, host: str, pid: int, started: float,
                         status: str, stopped: bool = False) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO daemons(owner, host, pid, started, heartbeat, stopped, status)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE SET"
                       " heartbeat=excluded.heartbeat, stopped=excluded.stopped,"
                       " status=excluded.status",
                       (owner, host, pid, started, now, now if stopped else None, status))

    def daemons(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM daemons ORDER BY started DESC").fetchall()
        return [dict(r) for r in rows]

    def daemon_heartbeat_of(self, owner: str) -> tuple[float | None, float | None]:
        """(last heartbeat, stopped time) of a daemon, None when unknown."""
        with self._lock:
            row = self._db.execute("SELECT heartbeat, stopped FROM daemons WHERE owner=?",
                                   (owner,)).fetchone()
        if row is None:
            return None, None
        return row[0], row[1]


def _journal_error(path: Path, exc: OSError | sqlite3.Error) -> ConfigError:
    """One line for a journal that cannot be used: damaged, or not openable."""
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
        " ".join(str(exc).split())
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return ConfigError(f"the journal {shown(path)} is damaged ({what})",
                           hint="move it aside and start again (a new journal is made; files "
                           "done before are then not known as duplicates), or restore it "
                           "from a backup")
    return ConfigError(f"cannot open the journal {shown(path)} ({what})",
                       hint="check that folder's permissions and free space, or set "
                       "watch.journal to a local file")


class KnownTasks(Collection[str]):
    """The journal's task ids, read on first use."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._ids: set[str] | None = None

    def _read(self) -> set[str]:
        if self._ids is None:
            self._ids = self._journal.task_ids()
        return self._ids

    def __contains__(self, item: object) -> bool:
        return item in self._read()

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


def _job(row: sqlite3.Row | None) -> Job | None:
    if row is None:
        return None
    return Job(**{k: _py(row[k]) for k in Job.__dataclass_fields__})


def _db(value: Any) -> Any:
    """A value as stored: file names that are not valid UTF-8 (``caf\\xe9.jpg`` read with
    ``surrogateescape``) cannot be SQLite TEXT; they are stored as their raw bytes (a BLOB)
    and come back as the same ``str`` (``_py``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                return value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate of another kind: keep it readable
                return value.encode("utf-8", "backslashreplace").decode("ascii")
    return value


def _py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value

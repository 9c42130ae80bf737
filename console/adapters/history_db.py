"""The job history in one SQLite file: every launch is written before its first output arrives.

So a console that crashes, or a VM that vanishes, never loses the record of what ran where.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from console.models import (
    MANAGED_OPEN,
    OPEN_STATUSES,
    Diagnosis,
    FleetError,
    Job,
    JobStatus,
    JobWorker,
    ManagedRecord,
    ManagedState,
    NodeEvent,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    node TEXT NOT NULL,
    zone TEXT NOT NULL,
    kind TEXT NOT NULL,
    command TEXT NOT NULL,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    zone TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_node ON events (zone, node, seq);
CREATE TABLE IF NOT EXISTS job_workers (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    worker INTEGER NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    rc INTEGER,
    log_offset INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, worker)
);
"""


# Each entry takes the schema one version further; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    SCHEMA,
    "ALTER TABLE jobs ADD COLUMN env TEXT NOT NULL DEFAULT '{}';"
    "ALTER TABLE jobs ADD COLUMN ended_at TEXT NOT NULL DEFAULT ''",
    # 3: what a job was launched with and what it achieved; "starting" is now "launching".
    "ALTER TABLE jobs ADD COLUMN params TEXT NOT NULL DEFAULT '{}';"
    "ALTER TABLE jobs ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}';"
    "ALTER TABLE jobs ADD COLUMN diagnoses TEXT NOT NULL DEFAULT '[]';"
    "UPDATE jobs SET status = 'launching' WHERE status = 'starting'",
    # 4: managed jobs (services/managed.py): a job id kept over its attempts, each attempt its
    # own run (`attempt_of` names the managed job), and the leases that let one watcher act.
    "ALTER TABLE jobs ADD COLUMN attempt_of TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE managed (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,"
    " current TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,"
    " recoveries INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '',"
    " updated_at TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL,"
    " host TEXT NOT NULL, expires REAL NOT NULL)",
)


ELSEWHERE = "or set TPUCONSOLE_HOME to another folder to keep a separate history."


class HistoryDamaged(FleetError):
    """The file is not a readable SQLite history; a copy of it is kept at `copy`."""

    def __init__(self, path: Path, why: str, copy: Path) -> None:
        super().__init__(
            f"The job history {path} is damaged ({why}); a copy is kept at {copy}.",
            "Run again with --fresh-history to start a new one (the copy stays).",
            code="DATA_LOSS",
        )
        self.copy = copy


class JobNumberTaken(Exception):
    """A job number (the `17` of `17-3fa2c1`) another launch recorded first."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _holding_lock(method: _F) -> _F:
    @functools.wraps(method)
    def locked(self: HistoryStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


def _one_thread_at_a_time(cls: type[HistoryStore]) -> type[HistoryStore]:
    """Every method holds the store's lock. Writes run on threads (256 workers' ends at
    once) as well as on the loop, and Python's sqlite3 connection is not safe to use from two
    threads at once: unguarded, two set_worker calls crashed the process (a segfault in
    `make test`) and two transactions would interleave."""
    for name, value in list(vars(cls).items()):
        if inspect.isfunction(value) and name != "__init__":
            setattr(cls, name, _holding_lock(value))
    return cls


@_one_thread_at_a_time
class HistoryStore:
    """Small synchronous writes (WAL, one row at a time); callers run them between awaits or
    on threads (one at a time: see _one_thread_at_a_time).

    Opening checks the file: one that is damaged, read-only or from a newer console is a
    FleetError saying so (never a sqlite traceback, never a file quietly replaced).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(problems[0])
            self._migrate()
            # A write that changes nothing: SQLite opens a file it may not write read-only,
            # silently, and the first launch would fail instead of this.
            self._db.execute(f"PRAGMA user_version = {self.schema_version}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise self._refusal(exc) from None
        except FleetError:
            self._db.close()
            raise

    def _refusal(self, exc: sqlite3.DatabaseError) -> FleetError:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            return FleetError(
                f"The job history {self.path} cannot be written ({exc}).",
                f"Make it and its folder writable for you (chmod u+w), {ELSEWHERE}",
                code="PERMISSION_DENIED",
            )
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return FleetError(
                f"The job history {self.path} stayed locked by another process ({exc}).",
                "Try again in a moment.",
                code="UNAVAILABLE",
            )
        return HistoryDamaged(self.path, str(exc), self._keep_copy())

    def _keep_copy(self) -> Path:
        """A copy of the damaged file beside it, named by its content: one copy per damage."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        copy = self.path.with_name(f"{self.path.name}.damaged-{digest}")
        if not copy.exists():
            shutil.copyfile(self.path, copy)
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        return copy

    @staticmethod
    def set_aside(path: Path) -> None:
        """Remove a damaged history (its copy is kept) so that a new one starts in its place."""
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

    def _migrate(self) -> None:
        """Bring the file to the newest schema, one numbered step at a time (PRAGMA user_version).

        A file written by an older console keeps every row; a newer file is refused rather than
        misread.
        """
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise FleetError(
                f"The job history {self.path} was written by a newer tpuconsole (schema "
                f"{version}; this one reads up to {len(MIGRATIONS)}).",
                f"Upgrade tpuconsole to read it, {ELSEWHERE}",
                code="FAILED_PRECONDITION",
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
        return int(row[0])

    def record_launch(self, job: Job) -> None:
        """Write the job; JobNumberTaken if another launch (another process) took its number."""
        number = job.job_id.split("-")[0] + "-"
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # the number's check and its use, one writer
            taken = self._db.execute(
                "SELECT 1 FROM jobs WHERE substr(job_id, 1, ?) = ?", (len(number), number)
            ).fetchone()
            if taken:
                raise JobNumberTaken(job.job_id)
            self._db.execute(
                "INSERT INTO jobs (job_id, node, zone, kind, command, started_at, status, env,"
                " params, attempt_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.node,
                    job.zone,
                    job.kind,
                    job.command,
                    job.started_at.isoformat(),
                    job.status,
                    json.dumps(job.env),
                    json.dumps(job.params),
                    job.attempt_of,
                ),
            )
            self._db.executemany(
                "INSERT INTO job_workers (job_id, worker) VALUES (?, ?)",
                [(job.job_id, w.worker) for w in job.workers],
            )

    def set_worker(
        self,
        job_id: str,
        worker: int,
        *,
        pid: int | None = None,
        rc: int | None = None,
        log_offset: int | None = None,
        error: str | None = None,
    ) -> None:
        fields = {"pid": pid, "rc": rc, "log_offset": log_offset, "error": error}
        sets = [(k, v) for k, v in fields.items() if v is not None]
        if not sets:
            return
        self._db.execute(
            f"UPDATE job_workers SET {', '.join(f'{k} = ?' for k, _ in sets)}"
            " WHERE job_id = ? AND worker = ?",
            [v for _, v in sets] + [job_id, worker],
        )

    def set_status(
        self, job_id: str, status: JobStatus, note: str = "", ended_at: datetime | None = None
    ) -> None:
        """`ended_at` defaults to now for a status that ends the job."""
        ended = "" if status in OPEN_STATUSES else (ended_at or datetime.now(UTC)).isoformat()
        self._db.execute(
            "UPDATE jobs SET status = ?, note = ?, ended_at = ? WHERE job_id = ?",
            (status, note, ended, job_id),
        )

    def _job(self, row: tuple) -> Job:
        job_id = row[0]
        workers = tuple(
            JobWorker(worker=w, pid=pid, rc=rc, log_offset=off, error=err)
            for w, pid, rc, off, err in self._db.execute(
                "SELECT worker, pid, rc, log_offset, error FROM job_workers"
                " WHERE job_id = ? ORDER BY worker",
                (job_id,),
            )
        )
        return Job(
            job_id=job_id,
            node=row[1],
            zone=row[2],
            kind=row[3],
            command=row[4],
            started_at=_when(row[5]) or datetime.now(UTC),
            status=JobStatus(row[6]),
            workers=workers,
            env=json.loads(row[7] or "{}"),
            params=json.loads(row[8] or "{}"),
            ended_at=_when(row[9]),
            note=row[10],
            metrics=json.loads(row[11] or "{}"),
            diagnoses=tuple(Diagnosis.from_dict(d) for d in json.loads(row[12] or "[]")),
            attempt_of=row[13],
            managed=self.managed(job_id),
        )

    _COLUMNS = (
        "job_id, node, zone, kind, command, started_at, status, env, params, ended_at, note,"
        " metrics, diagnoses, attempt_of"
    )

    def set_results(
        self,
        job_id: str,
        metrics: dict | None = None,
        diagnoses: list[Diagnosis] | None = None,
    ) -> None:
        """What a job achieved; diagnoses add to those recorded, each (key, worker) once."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT diagnoses FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return
            known = json.loads(row[0] or "[]")
            seen = {(d.get("key"), d.get("worker")) for d in known}
            for d in diagnoses or []:
                if (d.key, d.worker) not in seen:
                    seen.add((d.key, d.worker))
                    known.append(d.as_dict())
            if metrics is not None:
                self._db.execute(
                    "UPDATE jobs SET metrics = ? WHERE job_id = ?", (json.dumps(metrics), job_id)
                )
            self._db.execute(
                "UPDATE jobs SET diagnoses = ? WHERE job_id = ?", (json.dumps(known), job_id)
            )

    def get(self, job_ref: str) -> Job | None:
        """By full id or by its leading number (`17` for `17-3fa2c1`), nothing else.

        Compared as text, never as a pattern: a reference of `%` or `_` names no job.
        """
        if job_ref.isascii() and job_ref.isdigit():
            prefix = f"{int(job_ref)}-"
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE substr(job_id, 1, ?) = ?"
                " ORDER BY seq DESC LIMIT 1",
                (len(prefix), prefix),
            ).fetchone()
        else:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE job_id = ?", (job_ref,)
            ).fetchone()
        return self._job(row) if row else None

    def recent(self, limit: int = 50) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._job(r) for r in rows]

    # ----- node events -------------------------------------------------------------------------
    def record_event(self, event: NodeEvent) -> None:
        self._db.execute(
            "INSERT INTO events (at, zone, node, kind, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (event.at.isoformat(), event.zone, event.node, event.kind, event.source, event.detail),
        )

    def events_for(self, zone: str, node: str, limit: int = 200) -> list[NodeEvent]:
        rows = self._db.execute(
            "SELECT at, zone, node, kind, source, detail FROM events WHERE zone = ? AND node = ?"
            " ORDER BY seq DESC LIMIT ?",
            (zone, node, limit),
        ).fetchall()
        return [
            NodeEvent(datetime.fromisoformat(r[0]), r[1], r[2], r[3], r[4], r[5])
            for r in reversed(rows)
        ]

    def running_jobs_on(self, zone: str, node: str) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM jobs WHERE zone = ? AND node = ? AND status IN"
            " ('launching', 'running') ORDER BY seq",
            (zone, node),
        ).fetchall()
        return [self._job(r) for r in rows]

    # ----- managed jobs ------------------------------------------------------------------------
    def record_managed(self, job_id: str, spec: dict) -> None:
        """A managed job, under the id of its first attempt (already recorded as a run)."""
        self._db.execute(
            "INSERT INTO managed (job_id, spec, state, current, updated_at)"
            " VALUES (?, ?, 'running', ?, ?)",
            (job_id, json.dumps(spec), job_id, datetime.now(UTC).isoformat()),
        )

    def managed(self, job_id: str) -> ManagedRecord | None:
        row = self._db.execute(
            "SELECT job_id, spec, state, current, attempt, recoveries, note FROM managed"
            " WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        attempts = tuple(
            r[0]
            for r in self._db.execute(
                "SELECT job_id FROM jobs WHERE job_id = ? OR attempt_of = ? ORDER BY seq",
                (job_id, job_id),
            )
        )
        return ManagedRecord(
            row[0],
            json.loads(row[1]),
            ManagedState(row[2]),
            row[3],
            row[4],
            row[5],
            row[6],
            attempts,
        )

    def open_managed(self) -> list[ManagedRecord]:
        rows = self._db.execute(
            "SELECT job_id FROM managed WHERE state IN (?, ?) ORDER BY rowid", MANAGED_OPEN
        ).fetchall()
        return [m for (job_id,) in rows if (m := self.managed(job_id)) is not None]

    def claim_recovery(self, job_id: str, attempt: int) -> bool:
        """Compare-and-set: only the first caller moves attempt N to recovering N+1.

        Two watchers that both believe they may act (a lease taken over from a holder thought
        dead) still recover an attempt once: the second finds the attempt moved on.
        """
        cur = self._db.execute(
            "UPDATE managed SET state = 'recovering', attempt = attempt + 1, updated_at = ?"
            " WHERE job_id = ? AND attempt = ? AND state = 'running'",
            (datetime.now(UTC).isoformat(), job_id, attempt),
        )
        return cur.rowcount == 1

    def set_managed(
        self,
        job_id: str,
        *,
        state: ManagedState | None = None,
        current: str | None = None,
        recoveries: int | None = None,
        note: str | None = None,
    ) -> None:
        fields = {"state": state, "current": current, "recoveries": recoveries, "note": note}
        sets = [(k, v) for k, v in fields.items() if v is not None]
        sets.append(("updated_at", datetime.now(UTC).isoformat()))
        self._db.execute(
            f"UPDATE managed SET {', '.join(f'{k} = ?' for k, _ in sets)} WHERE job_id = ?",
            [v for _, v in sets] + [job_id],
        )

    # ----- leases ------------------------------------------------------------------------------
    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Hold `name` for `ttl_s` more seconds: free, ours, expired, or its holder is dead.

        A holder on this machine whose pid is gone is dead at once (`kill -0`); one elsewhere
        is dead when it stops renewing (its lease expires).
        """
        now = time.time()
        here = socket.gethostname()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT holder, pid, host, expires FROM leases WHERE name = ?", (name,)
            ).fetchone()
            held = row is not None and row[0] != holder and row[3] > now
            if held and (row[2] != here or _alive(row[1])):
                return False
            self._db.execute(
                "INSERT INTO leases (name, holder, pid, host, expires) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid,"
                " host = excluded.host, expires = excluded.expires",
                (name, holder, os.getpid(), here, now + ttl_s),
            )
            return True

    def lease_holder(self, name: str) -> str:
        row = self._db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return row[0] if row else ""

    def release_lease(self, name: str, holder: str) -> None:
        self._db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _when(text: str) -> datetime | None:
    """Times are stored as ISO text; rows from before time zones were recorded are UTC."""
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)

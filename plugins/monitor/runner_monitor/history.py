"""The monitor's history store: events folded into jobs, workers, queues and counters (SQLite).

Tables (``PRAGMA user_version`` 1):

* ``events``: every event received (the body as JSON), deduplicated by event id;
* ``jobs``: one row per job id with its latest state and details, folded from its events;
* ``workers`` and ``queues``: what the last worker events said, and the polled queue depths;
* ``job_counts`` and ``durations``: cumulative counters for ``/metrics``; never pruned, so
  they survive restarts and retention.

Events older than the retention go, and so do jobs not updated within it.  One connection
shared by the collector (writes) and the web threads (reads) under a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner_monitor.fold import fold

SCHEMA_VERSION = 3
# Each completed run of a job is counted, and a run of an attempt that had already completed
# (a redelivery after its outcome was out: a lost ack, a broker restart) is a repeat.
MIGRATIONS = {2: ("ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE jobs ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE jobs ADD COLUMN completed TEXT"),
              # The last progress a running job reported (percent, done/total, message).
              3: ("ALTER TABLE jobs ADD COLUMN progress TEXT",)}
STATES = ("queued", "received", "started", "retrying", "succeeded", "failed", "dead", "revoked")
LOST_AFTER = 3  # missed heartbeats before a worker that said nothing counts as lost

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL, job_id TEXT, worker TEXT,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, job TEXT, route TEXT, queue TEXT, state TEXT NOT NULL,
    attempt INTEGER, attempts_allowed INTEGER, worker TEXT, submitted_at REAL,
    first_seen REAL NOT NULL, updated REAL NOT NULL, started_at REAL, finished_at REAL,
    duration REAL, params TEXT, files TEXT, options TEXT, error TEXT, traceback TEXT,
    stdout TEXT, stderr TEXT, exit_code INTEGER, outputs TEXT, value TEXT, history TEXT,
    dead_reason TEXT, retry_delay REAL, runs INTEGER NOT NULL DEFAULT 0,
    repeats INTEGER NOT NULL DEFAULT 0, completed TEXT, progress TEXT);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, updated);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, host TEXT, pid INTEGER, queue TEXT, bindings TEXT,
    concurrency INTEGER, interval REAL, state TEXT NOT NULL, started_at REAL,
    last_seen REAL NOT NULL, busy INTEGER, running TEXT, processed INTEGER, dropped INTEGER);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY, depth INTEGER, checked_at REAL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS job_counts (
    job TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (job, state));
CREATE TABLE IF NOT EXISTS durations (
    job TEXT PRIMARY KEY, buckets TEXT NOT NULL, sum REAL NOT NULL, count INTEGER NOT NULL);
"""
JSON_COLUMNS = ("params", "files", "options", "outputs", "value", "history", "progress")


class History:
    """The history file.  ``generation`` moves whenever something was recorded."""

    def __init__(self, path: Path | str, retention: float = 7 * 86400, readonly: bool = False):
        self.path = Path(path)
        self.retention = retention
        self.generation = 0
        self._lock = threading.Lock()
        try:
            if readonly:
                if not self.path.is_file():
                    raise RunnerError(f"no monitor history at {self.path} (see `runner monitor`)")
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                    isolation_level=None,
                )
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RunnerError(f"{self.path} was written by a newer runner monitor")
                for target in range(version + 1, SCHEMA_VERSION + 1) if version else ():
                    for statement in MIGRATIONS.get(target, ()):
                        db.execute(statement)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise RunnerError(f"cannot open the monitor history {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    class _Tx:
        def __init__(self, history: History) -> None:
            self.h = history

        def __enter__(self) -> sqlite3.Connection:
            self.h._lock.acquire()
            self.h._db.execute("BEGIN IMMEDIATE")
            return self.h._db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            try:
                self.h._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.h._lock.release()

    def _tx(self) -> History._Tx:
        return History._Tx(self)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    # --- writing ---------------------------------------------------------------------------------
    def record(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Fold events in (one transaction); return how many were new."""
        new = 0
        with self._tx() as db:
            for event in events:
                inserted = db.execute(
                    "INSERT OR IGNORE INTO events (id, ts, event, job_id, worker, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event["id"], event["ts"], event["event"], event.get("job_id"),
                     event.get("worker"), json.dumps(event, default=str)),
                ).rowcount
                if inserted:
                    new += 1
                    fold(db, event)
            if new:
                self.generation += 1  # under the lock: writers never lose an increment
        return new

    def set_depth(self, queue: str, depth: int | None) -> None:
        with self._tx() as db:
            before = db.execute("SELECT depth FROM queues WHERE name = ?", (queue,)).fetchone()
            db.execute(
                "UPDATE queues SET depth = ?, checked_at = ? WHERE name = ?",
                (depth, time.time(), queue),
            )
            if before is not None and before[0] != depth:
                self.generation += 1  # only news wakes the dashboards

    def prune(self, now: float | None = None) -> int:
        """Forget what is older than the retention; return how many jobs went."""
        cutoff = (now or time.time()) - self.retention
        with self._tx() as db:
            db.execute("DELETE FROM events WHERE ts < ?", (cutoff,))
            gone = db.execute("DELETE FROM jobs WHERE updated < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM workers WHERE last_seen < ?", (cutoff,))
            db.execute("DELETE FROM queues WHERE last_seen < ?", (cutoff,))
            if gone:
                self.generation += 1
        return gone

    # --- reading ---------------------------------------------------------------------------------
    def jobs(
        self, state: str | None = None, job: str | None = None, route: str | None = None,
        search: str | None = None, since: float | None = None, until: float | None = None,
        limit: int = 100, offset: int = 0,
    ) -> dict[str, Any]:
        """Jobs, most recently updated first, and how many match in all.

        ``state=failed`` includes dead-lettered jobs (they failed); ``search`` matches the
        start of a job id.
        """
        where: list[str] = []
        args: list[Any] = []
        if state:
            states = ("failed", "dead") if state == "failed" else (state,)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        for column, value in (("job", job), ("route", route)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if search:
            where.append("id LIKE ? ESCAPE '\\'")
            args.append(search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if since is not None:
            where.append("updated >= ?")
            args.append(since)
        if until is not None:
            where.append("updated <= ?")
            args.append(until)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._rows(f"SELECT COUNT(*) AS n FROM jobs {clause}", args)[0]["n"]
        rows = self._rows(
            "SELECT id, job, route, queue, state, attempt, attempts_allowed, worker, submitted_at,"
            " first_seen, updated, started_at, finished_at, duration, error, params, files, runs,"
            " repeats FROM jobs "
            f"{clause} ORDER BY updated DESC, id LIMIT ? OFFSET ?",
            [*args, max(1, min(limit, 1000)), max(0, offset)],
        )
        for row in rows:
            row["error"] = (row["error"] or "").strip().splitlines()[-1][:300] if row["error"] else None
            row["summary"] = _summary(row.pop("params"), row.pop("files"))
        return {"total": total, "jobs": rows}

    def facets(self) -> dict[str, Any]:
        """Values the job filters can take, and how many jobs are in each state."""
        counts = {r["state"]: r["n"] for r in self._rows(
            "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
        counts["failed"] = counts.get("failed", 0) + counts.get("dead", 0)  # as the filter
        return {
            "states": {s: counts.get(s, 0) for s in STATES},
            "jobs": [r["job"] for r in self._rows(
                "SELECT DISTINCT job FROM jobs WHERE job IS NOT NULL ORDER BY job")],
            "routes": [r["route"] for r in self._rows(
                "SELECT DISTINCT route FROM jobs WHERE route IS NOT NULL ORDER BY route")],
        }

    def job(self, job_id: str) -> dict[str, Any] | None:
        """One job with every detail, its events and its attempts (oldest first)."""
        found = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not found:
            return None
        job = found[0]
        for column in JSON_COLUMNS:
            job[column] = json.loads(job[column]) if job[column] is not None else None
        events = [json.loads(r["body"]) for r in self._rows(
            "SELECT body FROM events WHERE job_id = ? ORDER BY ts, rowid", (job_id,))]
        job["events"] = [_timeline_entry(e) for e in events]
        job["attempts"] = _attempts(events, job.get("history") or [])
        job["retryable"] = job["state"] in ("failed", "dead")
        return job

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        now = now or time.time()
        rows = self._rows("SELECT * FROM workers ORDER BY queue, name")
        for w in rows:
            w["bindings"] = json.loads(w["bindings"] or "[]")
            w["running"] = json.loads(w["running"] or "[]")
            silent = now - w["last_seen"] > LOST_AFTER * (w["interval"] or 5.0) + 2
            if w["state"] in ("online", "stopping") and silent:
                w["state"] = "lost"
        return rows

    def queues(self, now: float | None = None) -> list[dict[str, Any]]:
        """Queues workers said they consume, with the polled depth and live consumers."""
        workers = self.workers(now)
        out = []
        for q in self._rows("SELECT * FROM queues ORDER BY name"):
            mine = [w for w in workers if w["queue"] == q["name"]]
            live = [w for w in mine if w["state"] in ("online", "stopping")]
            q["consumers"] = len(live)
            q["slots"] = sum(w["concurrency"] or 0 for w in live)
            q["busy"] = sum(w["busy"] or 0 for w in live)
            q["bindings"] = sorted({b for w in mine for b in w["bindings"]})
            out.append(q)
        return out

    def queue_names(self) -> list[str]:
        return [r["name"] for r in self._rows("SELECT name FROM queues ORDER BY name")]

    def outcomes(self, since: float) -> list[dict[str, Any]]:
        """Attempts that ended since ``since``: ``ts``, ``event`` (``job.succeeded``,
        ``job.failed``, ``job.dead``), ``job`` and ``duration``, oldest first (for charts)."""
        return self._rows(
            "SELECT ts, event, json_extract(body, '$.job') AS job, "
            "json_extract(body, '$.duration') AS duration FROM events "
            "WHERE ts >= ? AND event IN ('job.succeeded', 'job.failed', 'job.dead') ORDER BY ts",
            (since,))

    def counters(self) -> dict[str, Any]:
        """Cumulative numbers for ``/metrics``."""
        return {
            "jobs": self._rows("SELECT job, state, n FROM job_counts ORDER BY job, state"),
            "durations": [
                {**r, "buckets": json.loads(r["buckets"])}
                for r in self._rows("SELECT * FROM durations ORDER BY job")
            ],
        }


def _summary(params: str | None, files: str | None) -> str:
    """``coffee.jpg · size=200x200``: input file names, then parameters, short."""
    names = [str(f.get("name")) for f in json.loads(files or "[]") if isinstance(f, dict)]
    given = json.loads(params or "{}")
    pairs = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in given.items()
             if v not in (None, False, "")]
    text = " · ".join(x for x in (", ".join(names), " ".join(pairs)) if x)
    return text if len(text) <= 80 else text[:79] + "…"


def _timeline_entry(e: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("event", "ts", "worker", "attempt", "error", "duration", "delay", "reason", "final",
            "exit_code", "by", "next_attempt")
    return {k: e[k] for k in keep if e.get(k) is not None}


def _attempts(events: list[Mapping[str, Any]], history: list[Mapping[str, Any]]) -> list[dict]:
    """One row per finished attempt: from the events, plus history entries no event covers
    (attempts made before this monitor listened)."""
    starts: dict[tuple[Any, Any], float] = {}
    rows: list[dict[str, Any]] = []
    done: set[Any] = set()  # attempts completed so far in this run of the job
    for e in events:
        key = (e.get("attempt"), e.get("worker"))
        if e["event"] == "job.resubmitted":
            done.clear()
        elif e["event"] == "job.started":
            starts[key] = e["ts"]
        elif e["event"] in ("job.succeeded", "job.failed"):
            repeat = e.get("attempt") in done
            done.add(e.get("attempt"))
            rows.append({
                "repeat": repeat,
                "attempt": e.get("attempt"), "worker": e.get("worker"),
                "started_at": starts.pop(key, None), "finished_at": e["ts"],
                "duration": e.get("duration"), "exit_code": e.get("exit_code"),
                "outcome": "succeeded" if e["event"] == "job.succeeded" else "failed",
                "error": e.get("error"), "traceback": e.get("traceback") or None,
            })
    for h in history:
        finished = h.get("finished_at") or 0
        if not any(r["attempt"] == h.get("attempt") and abs(r["finished_at"] - finished) < 5
                   for r in rows):
            rows.append({
                "repeat": False,
                "attempt": h.get("attempt"), "worker": h.get("worker"), "started_at": None,
                "finished_at": finished, "duration": h.get("duration"),
                "exit_code": h.get("exit_code"),
                "outcome": "failed" if h.get("error") else "succeeded",
                "error": h.get("error"), "traceback": None,
            })
    return sorted(rows, key=lambda r: r["finished_at"] or 0)

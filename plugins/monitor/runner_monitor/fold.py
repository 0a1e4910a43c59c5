"""Folding one event into the history's tables (:mod:`runner_monitor.history`).

Events can arrive out of order and more than once (the store drops copies by id before this
runs); :func:`moves_state` decides whether an event changes a job's state or only joins its
timeline.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def fold(db: sqlite3.Connection, e: Mapping[str, Any]) -> None:
    name = str(e["event"])
    if name.startswith("worker."):
        _fold_worker(db, name.split(".", 1)[1], e)
    elif name == "job.progress" and e.get("job_id"):
        # The latest progress goes on the job (its timeline has every report): no state change.
        progress = {k: e[k] for k in ("percent", "done", "total", "message") if k in e}
        db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND state = 'started'",
                   (js(progress), str(e["job_id"])))
    elif name.startswith("job.") and e.get("job_id"):
        _fold_job(db, name.split(".", 1)[1], e)


def _fold_job(db: sqlite3.Connection, state: str, e: Mapping[str, Any]) -> None:
    ts, job_id = float(e["ts"]), str(e["job_id"])
    db.execute(
        "INSERT OR IGNORE INTO jobs (id, job, route, queue, state, attempt, first_seen, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, e.get("job"), e.get("route"), e.get("queue"), "received", e.get("attempt"),
         ts, 0.0),
    )
    current, updated, attempt = db.execute(
        "SELECT state, updated, attempt FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    fresh = moves_state(state, e.get("attempt"), ts, current, updated, attempt)
    sets: dict[str, Any] = {}
    for key in ("job", "route", "queue"):
        if e.get(key):
            sets[key] = e[key]
    if state == "received":
        sets.update(params=js(e.get("params")), files=js(e.get("files")),
                    options=js(e.get("options")), submitted_at=e.get("created_at"),
                    attempts_allowed=(e.get("options") or {}).get("attempts"))
    if state in ("succeeded", "failed"):
        _count_duration(db, e)
        _count_run(db, job_id, e.get("attempt"))
    if fresh:
        sets.update(updated=ts, worker=e.get("worker") or None)
        if e.get("attempt") is not None:
            sets["attempt"] = e["attempt"]
        new_state = {"failed": "failed" if e.get("final") else "retrying",
                     "retried": "retrying", "resubmitted": "queued",
                     "released": "queued"}.get(state, state)
        sets["state"] = new_state
        if state == "started":
            sets.update(started_at=ts, finished_at=None, duration=None, retry_delay=None,
                        progress=None)
        elif state in ("succeeded", "failed"):
            sets.update(
                finished_at=ts, duration=e.get("duration"), exit_code=e.get("exit_code"),
                stdout=e.get("stdout"), stderr=e.get("stderr"), history=js(e.get("history")),
            )
            if state == "succeeded":
                sets.update(error=None, traceback=None, dead_reason=None,
                            outputs=js(e.get("outputs")), value=js(e.get("value")))
            else:
                sets.update(error=e.get("error"), traceback=e.get("traceback"))
        elif state == "retried":
            sets.update(retry_delay=e.get("delay"), error=e.get("error"))
        elif state == "dead":
            sets["dead_reason"] = e.get("reason")
            if e.get("params") is not None:
                sets["params"] = js(e["params"])
        elif state == "released":  # back in the queue: no worker has it now
            sets.update(worker=None, error=f"stopped and handed back: {e.get('reason')}")
        elif state == "resubmitted":
            sets.update(attempt=1, dead_reason=None, worker=None, retry_delay=None, completed=None)
    if state == "dead" and e.get("error"):
        db.execute("UPDATE jobs SET error = COALESCE(error, ?) WHERE id = ?", (e["error"], job_id))
    if sets:
        assigns = ", ".join(f"{k} = ?" for k in sets)
        db.execute(f"UPDATE jobs SET {assigns} WHERE id = ?", (*sets.values(), job_id))
    if state != "resubmitted" and e.get("job"):
        db.execute(
            "INSERT INTO job_counts (job, state, n) VALUES (?, ?, 1) "
            "ON CONFLICT (job, state) DO UPDATE SET n = n + 1", (e["job"], state),
        )
    if state in ("started", "succeeded", "failed", "dead", "released", "revoked"):
        _track_slot(db, state, e)


def _count_run(db: sqlite3.Connection, job_id: str, attempt: Any) -> None:
    """Count a completed run; a second completion of the same attempt is a repeat (also
    counted in ``runner_jobs_total{state="repeated"}``)."""
    job, raw = db.execute("SELECT job, completed FROM jobs WHERE id = ?", (job_id,)).fetchone()
    completed = json.loads(raw) if raw else []
    repeat = attempt in completed
    if not repeat:
        completed.append(attempt)
    db.execute(
        "UPDATE jobs SET runs = runs + 1, repeats = repeats + ?, completed = ? WHERE id = ?",
        (int(repeat), json.dumps(completed), job_id),
    )
    if repeat and job:
        db.execute(
            "INSERT INTO job_counts (job, state, n) VALUES (?, 'repeated', 1) "
            "ON CONFLICT (job, state) DO UPDATE SET n = n + 1", (job,),
        )


def _track_slot(db: sqlite3.Connection, state: str, e: Mapping[str, Any]) -> None:
    """Keep a worker's running jobs current between heartbeats (which have the last word)."""
    row = db.execute(
        "SELECT running, last_seen FROM workers WHERE name = ?", (e.get("worker"),)
    ).fetchone()
    if row is None or row[1] > e["ts"]:
        return
    running = [r for r in json.loads(row[0] or "[]") if r.get("job_id") != e["job_id"]]
    if state == "started":
        running.append({k: e.get(k) for k in ("job_id", "job", "attempt", "route")}
                       | {"started_at": e["ts"]})
    db.execute(
        "UPDATE workers SET running = ?, busy = ? WHERE name = ?",
        (js(running), len(running), e["worker"]),
    )


def moves_state(
    state: str, attempt: Any, ts: float, current: str, updated: float, current_attempt: Any
) -> bool:
    """Whether an event changes the job's state, or only joins its timeline.

    Events can arrive out of order: attempt n+1 may start on another slot before attempt n's
    last events are out, and the monitor's own Retry note races the worker taking the job.
    """
    if state == "resubmitted":
        return current in ("failed", "dead")  # unless a worker already took it again
    if current == "queued":
        return True  # sent back by Retry: the next worker event is the new run
    if ts < updated:
        return False
    earlier = isinstance(attempt, int) and isinstance(current_attempt, int) and (
        attempt < current_attempt
    )
    # A dead job retried (here or with `runner dead retry`) starts again at attempt 1.
    new_run = current in ("failed", "dead") and attempt == 1
    return not earlier or new_run


def _count_duration(db: sqlite3.Connection, e: Mapping[str, Any]) -> None:
    duration = e.get("duration")
    if not isinstance(duration, (int, float)) or not e.get("job"):
        return
    row = db.execute("SELECT buckets FROM durations WHERE job = ?", (e["job"],)).fetchone()
    buckets = json.loads(row[0]) if row else [0] * len(BUCKETS)
    for i, bound in enumerate(BUCKETS):
        if duration <= bound:
            buckets[i] += 1
    db.execute(
        "INSERT INTO durations (job, buckets, sum, count) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (job) DO UPDATE SET buckets = excluded.buckets, sum = sum + excluded.sum, "
        "count = count + 1",
        (e["job"], json.dumps(buckets), float(duration)),
    )


def _fold_worker(db: sqlite3.Connection, state: str, e: Mapping[str, Any]) -> None:
    ts, name = float(e["ts"]), str(e.get("worker") or "?")
    row = db.execute("SELECT last_seen FROM workers WHERE name = ?", (name,)).fetchone()
    if row is not None and row[0] > ts:
        return  # an older event arriving late says nothing new
    status = {"heartbeat": "stopping" if e.get("stopping") else "online"}.get(state, state)
    db.execute(
        "INSERT INTO workers (name, host, pid, queue, bindings, concurrency, interval, state, "
        "started_at, last_seen, busy, running, processed, dropped) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
        "host = excluded.host, pid = excluded.pid, queue = excluded.queue, "
        "bindings = excluded.bindings, concurrency = excluded.concurrency, "
        "interval = excluded.interval, state = excluded.state, "
        "started_at = COALESCE(excluded.started_at, started_at), last_seen = excluded.last_seen,"
        " busy = excluded.busy, running = excluded.running, "
        "processed = COALESCE(excluded.processed, processed), dropped = excluded.dropped",
        (name, e.get("host"), e.get("pid"), e.get("queue"), js(e.get("bindings") or []),
         e.get("concurrency"), e.get("interval"), status, ts if state == "online" else None,
         ts, e.get("busy", 0), js(e.get("running") or []), e.get("processed"),
         e.get("dropped", 0)),
    )
    if e.get("queue"):
        db.execute(
            "INSERT INTO queues (name, last_seen) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            (e["queue"], ts),
        )


def js(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)

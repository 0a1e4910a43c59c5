"""The store's logic in SQL both SQLite and PostgreSQL run; each subclass owns its connection.

Statements are written with ``?`` placeholders; a subclass translates them if its driver wants
another style.  Every method runs in one transaction (:meth:`SqlStore._tx`), so a member's
result, its count in the group and the claim to publish the callback commit together or not at
all.  Counting once: a member row moves from pending (``status IS NULL``) to ended by one
``UPDATE ... WHERE status IS NULL``; only the transaction that moved it increments the group.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from runner.broker import Envelope
from runner.message import FileData, JobResult, JobStatus
from runner.results.store import (
    PUBLISH_LEASE,
    GroupSpec,
    GroupState,
    GroupStatus,
    Member,
    OnFailure,
    ResultStore,
    StoreError,
    envelope_from_json,
    envelope_to_json,
)

_COUNT_SQL = (
    "UPDATE runner_groups SET done = done + 1, failed = failed + ? WHERE group_id = ? "
    "RETURNING done, total, failed, on_failure, callback, callback_id, callback_group"
)


def schema(real: str, blob: str) -> list[str]:
    """The tables, with the engine's names for a float and a byte string column."""
    return [
        "CREATE TABLE IF NOT EXISTS runner_results (job_id TEXT PRIMARY KEY, job TEXT NOT NULL,"
        f" status TEXT NOT NULL, group_id TEXT, finished_at {real} NOT NULL, record TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS runner_results_finished ON runner_results (finished_at)",
        "CREATE TABLE IF NOT EXISTS runner_outputs (job_id TEXT NOT NULL,"
        f" position INTEGER NOT NULL, data {blob} NOT NULL, PRIMARY KEY (job_id, position))",
        "CREATE TABLE IF NOT EXISTS runner_groups (group_id TEXT PRIMARY KEY,"
        " total INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,"
        " failed INTEGER NOT NULL DEFAULT 0, on_failure TEXT NOT NULL, status TEXT NOT NULL,"
        " callback_id TEXT, callback TEXT, callback_group TEXT, claimed_until "
        f"{real}, created_at {real} NOT NULL, completed_at {real}, published_at {real})",
        "CREATE INDEX IF NOT EXISTS runner_groups_status ON runner_groups (status, claimed_until)",
        "CREATE TABLE IF NOT EXISTS runner_members (group_id TEXT NOT NULL,"
        " job_id TEXT NOT NULL, position INTEGER NOT NULL, job TEXT NOT NULL, status TEXT,"
        " error TEXT, PRIMARY KEY (group_id, job_id))",
    ]


class Cursor(abc.ABC):
    """What :class:`SqlStore` needs of a DB-API cursor."""

    rowcount: int

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    @abc.abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...

    @abc.abstractmethod
    def fetchone(self) -> Any: ...

    @abc.abstractmethod
    def fetchall(self) -> list[Any]: ...


class SqlStore(ResultStore):
    """The contract on SQL; subclasses provide :meth:`_tx`."""

    @abc.abstractmethod
    def _tx(self) -> AbstractContextManager[Cursor]:
        """A cursor in a write transaction, committed on exit (rolled back on an error)."""

    # --- results ----------------------------------------------------------------------------
    def put(self, result: JobResult, group: str | None = None, now: float | None = None,
            lease: float = PUBLISH_LEASE) -> Envelope | None:
        now = time.time() if now is None else now
        with self._tx() as cur:
            _store_result(cur, result, group, now)
            if group:
                return _count(cur, group, result.id, result.status.value, result.error, now, lease)
        return None

    def get(self, job_id: str) -> JobResult | None:
        with self._tx() as cur:
            cur.execute("SELECT record FROM runner_results WHERE job_id = ?", (job_id,))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("SELECT position, data FROM runner_outputs WHERE job_id = ?", (job_id,))
            blobs = {pos: bytes(data) for pos, data in cur.fetchall()}
        record = json.loads(row[0])
        outputs = tuple(_file(meta, blobs.get(i, b"")) for i, meta in enumerate(record["outputs"]))
        record["outputs"] = []
        return replace(JobResult.from_json(record), outputs=outputs)

    def group_of(self, job_id: str) -> str | None:
        with self._tx() as cur:
            cur.execute("SELECT group_id FROM runner_results WHERE job_id = ?", (job_id,))
            row = cur.fetchone()
        return row[0] if row is not None else None

    # --- groups -----------------------------------------------------------------------------
    def create_group(self, spec: GroupSpec, now: float | None = None) -> None:
        if not spec.members:
            raise StoreError(f"group {spec.id} has no members")
        now = time.time() if now is None else now
        callback = envelope_to_json(spec.callback) if spec.callback is not None else None
        with self._tx() as cur:
            cur.execute("SELECT 1 FROM runner_groups WHERE group_id = ?", (spec.id,))
            if cur.fetchone() is not None:
                raise StoreError(f"group {spec.id} exists already")
            cur.execute(
                "INSERT INTO runner_groups (group_id, total, on_failure, status, callback_id,"
                " callback, callback_group, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (spec.id, len(spec.members), spec.on_failure.value, GroupStatus.RUNNING.value,
                 spec.callback_id, callback, spec.callback_group, now),
            )
            cur.executemany(
                "INSERT INTO runner_members (group_id, job_id, position, job) VALUES (?, ?, ?, ?)",
                [(spec.id, job_id, i, job) for i, (job_id, job) in enumerate(spec.members)],
            )

    def group(self, group_id: str) -> GroupState | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT total, done, failed, status, on_failure, callback_id, created_at,"
                " completed_at, published_at FROM runner_groups WHERE group_id = ?", (group_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("SELECT job_id, job, status, error FROM runner_members WHERE group_id = ?"
                        " ORDER BY position", (group_id,))
            members = tuple(Member(*m) for m in cur.fetchall())
        total, done, failed, status, on_failure, callback_id, created, completed, published = row
        return GroupState(
            id=group_id, total=total, done=done, failed=failed, status=GroupStatus(status),
            on_failure=OnFailure(on_failure), callback_id=callback_id, created_at=created,
            completed_at=completed, published_at=published, members=members,
        )

    def published(self, group_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute(
                "UPDATE runner_groups SET status = ?, published_at = ? WHERE group_id = ?"
                " AND status = ?",
                (GroupStatus.PUBLISHED.value, now, group_id, GroupStatus.COMPLETE.value),
            )

    def claim_stale(self, now: float | None = None,
                    lease: float = PUBLISH_LEASE) -> list[tuple[str, Envelope]]:
        now = time.time() if now is None else now
        claimed = []
        with self._tx() as cur:
            cur.execute("SELECT group_id FROM runner_groups WHERE status = ? AND claimed_until < ?",
                        (GroupStatus.COMPLETE.value, now))
            for (group_id,) in cur.fetchall():
                # Conditional: of two reconcilers racing, one moves the claim, the other none.
                cur.execute(
                    "UPDATE runner_groups SET claimed_until = ? WHERE group_id = ? AND status = ?"
                    " AND claimed_until < ? RETURNING callback",
                    (now + lease, group_id, GroupStatus.COMPLETE.value, now),
                )
                row = cur.fetchone()
                if row is not None:
                    claimed.append((group_id, envelope_from_json(row[0])))
        return claimed

    def purge(self, before: float) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT job_id FROM runner_results WHERE finished_at < ?", (before,))
            ids = [row[0] for row in cur.fetchall()]
            cur.execute("DELETE FROM runner_outputs WHERE job_id IN"
                        " (SELECT job_id FROM runner_results WHERE finished_at < ?)", (before,))
            cur.execute("DELETE FROM runner_results WHERE finished_at < ?", (before,))
            cur.execute("DELETE FROM runner_members WHERE group_id IN"
                        " (SELECT group_id FROM runner_groups WHERE created_at < ?)", (before,))
            cur.execute("DELETE FROM runner_groups WHERE created_at < ?", (before,))
        return ids


def _store_result(cur: Cursor, result: JobResult, group: str | None, now: float) -> None:
    record = result.to_json()
    record["outputs"] = [_meta(f) for f in result.outputs]
    cur.execute(
        "INSERT INTO runner_results (job_id, job, status, group_id, finished_at, record)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET job = excluded.job,"
        " status = excluded.status, group_id = excluded.group_id,"
        " finished_at = excluded.finished_at, record = excluded.record",
        (result.id, result.job, result.status.value, group, now, json.dumps(record)),
    )
    cur.execute("DELETE FROM runner_outputs WHERE job_id = ?", (result.id,))
    rows = [(result.id, i, f.data) for i, f in enumerate(result.outputs) if not f.ref]
    if rows:
        cur.executemany("INSERT INTO runner_outputs (job_id, position, data) VALUES (?, ?, ?)", rows)


def _count(cur: Cursor, group: str, job_id: str, status: str, error: str | None,
           now: float, lease: float) -> Envelope | None:
    """Count one member's end; return the callback when it completed the group."""
    while True:  # a loop, not recursion: a skipped callback ends a member of the next group
        cur.execute(
            "UPDATE runner_members SET status = ?, error = ? WHERE group_id = ? AND job_id = ?"
            " AND status IS NULL", (status, (error or "")[:1000] or None, group, job_id),
        )
        if cur.rowcount != 1:
            return None  # not a member, or counted already (a redelivered job's second result)
        cur.execute(_COUNT_SQL, (1 if status != JobStatus.SUCCEEDED.value else 0, group))
        done, total, failed, on_failure, callback, callback_id, callback_group = cur.fetchone()
        if done < total:
            return None
        if callback is None:
            cur.execute("UPDATE runner_groups SET status = ?, completed_at = ?, published_at = ?"
                        " WHERE group_id = ?", (GroupStatus.PUBLISHED.value, now, now, group))
            return None
        if failed and on_failure == OnFailure.SKIP.value:
            cur.execute("UPDATE runner_groups SET status = ?, completed_at = ? WHERE group_id = ?",
                        (GroupStatus.SKIPPED.value, now, group))
            error = f"skipped: {failed} of {total} members of group {group} failed"
            env = envelope_from_json(callback)
            skipped = JobResult(id=callback_id, job=env.type, status=JobStatus.FAILED,
                                attempts=0, error=error)
            _store_result(cur, skipped, callback_group, now)
            if not callback_group:
                return None
            group, job_id, status = callback_group, callback_id, JobStatus.FAILED.value
            continue
        cur.execute(
            "UPDATE runner_groups SET status = ?, completed_at = ?, claimed_until = ?"
            " WHERE group_id = ?", (GroupStatus.COMPLETE.value, now, now + lease, group),
        )
        return envelope_from_json(callback)


def _meta(item: FileData) -> dict[str, Any]:
    out: dict[str, Any] = {"name": item.name, "size": item.size, "sha256": item.sha256}
    if item.ref:
        out["ref"] = item.ref
    return out


def _file(meta: dict[str, Any], data: bytes) -> FileData:
    if meta.get("ref"):
        return FileData(name=meta["name"], ref=meta["ref"], ref_size=meta["size"],
                        ref_sha256=meta["sha256"])
    return FileData(name=meta["name"], data=data)

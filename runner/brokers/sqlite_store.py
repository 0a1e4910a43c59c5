"""Storage for the embedded broker: its schema, and rows <-> envelopes.

Kept apart from :mod:`runner.brokers.sqlite` so that the broker module reads as the protocol
(claim, lease, settle) and this one as the plumbing underneath it; the file itself (creating,
opening, wake-ups) is :mod:`runner.brokers.sqlite_file`.

Tables (schema version 1, ``PRAGMA user_version``):

* ``queues`` and ``bindings``: worker queues and their topic patterns on ``runner.jobs``;
* ``messages``: one row per copy of a job in a queue, with ``visible_at`` (delays),
  ``rank`` (priority clamped to 0..9), and a lease (``lease_owner``, ``lease_token``,
  ``lease_until``) while a consumer holds it; ``deliveries`` counts hand-outs never settled;
* ``dead``: the dead letters (``runner.dead``);
* ``inboxes`` and ``replies``: open reply addresses and the replies waiting in them;
* ``event_queues`` and ``events``: queues bound to ``runner.events`` by topic patterns (a
  monitor's), with how many events each holds, and the events waiting in them.  Reading is
  a cursor over ``events.id``: a consumer deletes what it has handled.  Added to schema 1
  without a version change: older code ignores the two tables.
* ``control``: remote control broadcasts (``runner.control``), kept five minutes; each
  consumer reads the rows after the newest one it saw when it started (no deletes per reader).
  Added to schema 1 like the event tables.
* ``revoked``: revoked job ids and until when the revocation holds (``runner revoke``).
* ``leaders`` (a lease per leadership: holder, until when) and ``records`` (named small
  bodies, last value wins): ``runner beat``'s leader lock and its last fired slots.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from runner.broker import Envelope, Outgoing, Target, topic_matches
from runner.message import H_DEAD_REASON

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_PRIORITY = 9

# The envelope as columns, in Envelope field order; shared by messages, dead and replies.
ENVELOPE_COLUMNS = (
    "body",
    "message_id",
    "type",
    "routing_key",
    "headers",
    "priority",
    "reply_to",
    "correlation_id",
    "timestamp",
    "content_type",
)
_ENVELOPE_DDL = """
    body BLOB NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    headers TEXT NOT NULL,
    priority INTEGER NOT NULL,
    reply_to TEXT,
    correlation_id TEXT,
    timestamp INTEGER,
    content_type TEXT NOT NULL
"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    queue TEXT NOT NULL, pattern TEXT NOT NULL, PRIMARY KEY (queue, pattern));
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    rank INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    lease_owner TEXT,
    lease_token TEXT,
    lease_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    {_ENVELOPE_DDL});
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, rank DESC, visible_at, id);
CREATE INDEX IF NOT EXISTS messages_owner ON messages (lease_owner);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dead_at REAL NOT NULL, {_ENVELOPE_DDL});
CREATE INDEX IF NOT EXISTS dead_message_id ON dead (message_id);
CREATE TABLE IF NOT EXISTS inboxes (address TEXT PRIMARY KEY, opened_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, {_ENVELOPE_DDL});
CREATE INDEX IF NOT EXISTS replies_address ON replies (address, correlation_id);
CREATE TABLE IF NOT EXISTS event_queues (
    name TEXT PRIMARY KEY, patterns TEXT NOT NULL, max_length INTEGER NOT NULL,
    length INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, {_ENVELOPE_DDL});
CREATE INDEX IF NOT EXISTS events_queue ON events (queue, id);
CREATE TABLE IF NOT EXISTS revoked (job_id TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS control (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sent_at REAL NOT NULL, {_ENVELOPE_DDL});
CREATE TABLE IF NOT EXISTS leaders (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, body BLOB NOT NULL);
"""
CONTROL_KEEP = 300.0  # seconds a broadcast stays readable (consumers poll far more often)


# Leases.  A message is ready when it is due and nobody holds a live lease on it.
READY = (
    "FROM messages WHERE queue = ? AND visible_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
)
LEASE = (
    "UPDATE messages SET lease_owner = ?, lease_token = ?, lease_until = ?, "
    "deliveries = deliveries + 1 WHERE id = ?"
)
RENEW = "UPDATE messages SET lease_until = ? WHERE id = ? AND lease_token = ?"
HELD = "SELECT 1 FROM messages WHERE id = ? AND lease_token = ?"
ACK = "DELETE FROM messages WHERE id = ?"
REQUEUE = (
    "UPDATE messages SET lease_owner = NULL, lease_token = NULL, lease_until = NULL, "
    "deliveries = MAX(deliveries - 1, 0) WHERE id = ?"
)
RELEASE = (
    "UPDATE messages SET lease_owner = NULL, lease_token = NULL, lease_until = NULL "
    "WHERE lease_owner = ?"
)


def envelope_values(env: Envelope) -> tuple[Any, ...]:
    """The envelope as a row, in :data:`ENVELOPE_COLUMNS` order."""
    return (
        bytes(env.body),
        env.message_id,
        env.type,
        env.routing_key,
        json.dumps(dict(env.headers), separators=(",", ":")),
        int(env.priority),
        env.reply_to,
        env.correlation_id,
        env.timestamp,
        env.content_type,
    )


def row_envelope(row: Sequence[Any]) -> Envelope:
    """Rebuild an envelope from a row in :data:`ENVELOPE_COLUMNS` order."""
    body, message_id, type_, key, headers, priority, reply_to, corr, stamp, ctype = row
    return Envelope(
        body=bytes(body),
        message_id=message_id,
        type=type_,
        routing_key=key,
        headers=json.loads(headers),
        priority=priority,
        reply_to=reply_to,
        correlation_id=corr,
        timestamp=stamp,
        content_type=ctype,
    )


_COLS = ", ".join(ENVELOPE_COLUMNS)
_MARKS = ", ".join("?" * len(ENVELOPE_COLUMNS))
ENVELOPE_SQL = _COLS  # for SELECTs whose rows go to row_envelope()


def route(db: sqlite3.Connection, routing_key: str) -> list[str]:
    """Queues bound to ``routing_key`` on ``runner.jobs`` (each once, however many bindings)."""
    rows = db.execute("SELECT queue, pattern FROM bindings").fetchall()
    return sorted({queue for queue, pattern in rows if topic_matches(pattern, routing_key)})


def insert_message(db: sqlite3.Connection, queue: str, env: Envelope, visible_at: float) -> None:
    """Add one copy of ``env`` to ``queue``, deliverable from ``visible_at`` (epoch seconds)."""
    rank = max(0, min(MAX_PRIORITY, int(env.priority)))
    db.execute(
        f"INSERT INTO messages (queue, rank, visible_at, {_COLS}) VALUES (?, ?, ?, {_MARKS})",
        (queue, rank, visible_at, *envelope_values(env)),
    )


def insert_dead(db: sqlite3.Connection, env: Envelope, now: float) -> None:
    """Add ``env`` to the dead letters."""
    db.execute(
        f"INSERT INTO dead (dead_at, {_COLS}) VALUES (?, {_MARKS})", (now, *envelope_values(env))
    )


def insert_reply(db: sqlite3.Connection, env: Envelope) -> bool:
    """Store a reply for the open inbox at ``env.routing_key``; False if no inbox is open there.

    Like RabbitMQ's direct reply-to, a reply to a client that stopped waiting is dropped.
    """
    address = env.routing_key
    if db.execute("SELECT 1 FROM inboxes WHERE address = ?", (address,)).fetchone() is None:
        return False
    db.execute(
        f"INSERT INTO replies (address, {_COLS}) VALUES (?, {_MARKS})",
        (address, *envelope_values(env)),
    )
    return True


def send(db: sqlite3.Connection, out: Outgoing, queue: str, now: float) -> None:
    """Store one outgoing message of a settle, inside the settle's transaction.

    A retry (``Target.JOBS``) goes back to ``queue``, the one the delivery came from, as with
    RabbitMQ; a reply to an inbox that is not open is dropped; events go to the event queues
    bound for them (none: dropped).
    """
    env = out.envelope
    if out.target is Target.JOBS:
        insert_message(db, queue, env, now + max(0.0, out.delay))
    elif out.target is Target.DEAD:
        insert_dead(db, env, now)
    elif out.target is Target.REPLY:
        if not insert_reply(db, env):
            log.debug("dropped reply %s: no inbox is open at %s", env.message_id, env.routing_key)
    else:
        insert_event(db, env, event_queues(db))


def event_queues(db: sqlite3.Connection) -> list[tuple[str, list[str], int]]:
    """Every event queue: name, topic patterns on ``runner.events``, most events it keeps."""
    rows = db.execute("SELECT name, patterns, max_length FROM event_queues").fetchall()
    return [(name, json.loads(patterns), int(limit)) for name, patterns, limit in rows]


def insert_event(
    db: sqlite3.Connection, env: Envelope, queues: list[tuple[str, list[str], int]]
) -> int:
    """Store ``env`` in each event queue of ``queues`` it matches; return in how many.

    A full queue drops its oldest events first, like RabbitMQ's ``x-overflow: drop-head``.
    """
    stored = 0
    for name, patterns, limit in queues:
        if not any(topic_matches(p, env.routing_key) for p in patterns):
            continue
        db.execute(
            f"INSERT INTO events (queue, {_COLS}) VALUES (?, {_MARKS})",
            (name, *envelope_values(env)),
        )
        db.execute("UPDATE event_queues SET length = length + 1 WHERE name = ?", (name,))
        length = db.execute("SELECT length FROM event_queues WHERE name = ?", (name,)).fetchone()[0]
        if length > limit:
            drop_events(db, name, length - limit)
        stored += 1
    return stored


def drop_events(db: sqlite3.Connection, queue: str, count: int, up_to: int | None = None) -> None:
    """Delete the oldest ``count`` events of ``queue`` (only ids up to ``up_to`` if given)."""
    dropped = db.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE queue = ? AND id <= ? "
        "ORDER BY id LIMIT ?)",
        (queue, 2**62 if up_to is None else up_to, count),
    ).rowcount
    db.execute(
        "UPDATE event_queues SET length = MAX(length - ?, 0) WHERE name = ?", (dropped, queue)
    )


def read_events(db: sqlite3.Connection, queue: str, limit: int) -> list[tuple[int, Envelope]]:
    """The oldest ``limit`` events of ``queue`` with their row ids, leaving them in place."""
    rows = db.execute(
        f"SELECT id, {_COLS} FROM events WHERE queue = ? ORDER BY id LIMIT ?", (queue, limit)
    ).fetchall()
    return [(int(row[0]), row_envelope(row[1:])) for row in rows]


def dead_letter(
    db: sqlite3.Connection, row_id: int, env: Envelope, reason: str, now: float
) -> None:
    """Move message ``row_id`` (as ``env``) to the dead letters, saying why."""
    log.warning("dead-lettering job %s: %s", env.message_id, reason)
    insert_dead(db, env.with_headers(**{H_DEAD_REASON: reason}), now)
    db.execute(ACK, (row_id,))


def header_int(env: Envelope, name: str) -> int:
    """An integer header, 0 when absent or not an integer."""
    value = env.headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def list_dead(db: sqlite3.Connection, limit: int) -> list[Envelope]:
    rows = db.execute(f"SELECT {_COLS} FROM dead ORDER BY id LIMIT ?", (limit,)).fetchall()
    return [row_envelope(row) for row in rows]


def take_dead(db: sqlite3.Connection, message_id: str) -> Envelope | None:
    """Remove and return the oldest dead letter with ``message_id``."""
    sql = f"SELECT id, {_COLS} FROM dead WHERE message_id = ? ORDER BY id LIMIT 1"
    row = db.execute(sql, (message_id,)).fetchone()
    if row is None:
        return None
    db.execute("DELETE FROM dead WHERE id = ?", (row[0],))
    return row_envelope(row[1:])


_REPLY = f"SELECT id, {_COLS} FROM replies WHERE address = ? AND correlation_id = ? ORDER BY id"


def find_reply(db: sqlite3.Connection, address: str, correlation_id: str) -> int | None:
    """The row id of the oldest reply waiting for ``correlation_id`` at ``address``."""
    row = db.execute(f"{_REPLY} LIMIT 1", (address, correlation_id)).fetchone()
    return None if row is None else int(row[0])


def take_reply(db: sqlite3.Connection, address: str, correlation_id: str) -> Envelope | None:
    """Remove and return the oldest reply waiting for ``correlation_id`` at ``address``."""
    row = db.execute(f"{_REPLY} LIMIT 1", (address, correlation_id)).fetchone()
    if row is None:
        return None
    db.execute("DELETE FROM replies WHERE id = ?", (row[0],))
    return row_envelope(row[1:])


def insert_broadcast(db: sqlite3.Connection, env: Envelope, now: float) -> None:
    """Store a remote control broadcast; forget the ones older than :data:`CONTROL_KEEP`."""
    db.execute("DELETE FROM control WHERE sent_at < ?", (now - CONTROL_KEEP,))
    db.execute(
        f"INSERT INTO control (sent_at, {_COLS}) VALUES (?, {_MARKS})", (now, *envelope_values(env))
    )


def last_broadcast(db: sqlite3.Connection) -> int:
    """The row id of the newest broadcast (0 if none): a new consumer reads after it."""
    return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM control").fetchone()[0])


def read_broadcasts(db: sqlite3.Connection, after: int) -> list[tuple[int, Envelope]]:
    """Broadcasts with a row id above ``after``, oldest first."""
    rows = db.execute(f"SELECT id, {_COLS} FROM control WHERE id > ? ORDER BY id", (after,))
    return [(int(row[0]), row_envelope(row[1:])) for row in rows.fetchall()]

"""The embedded single-box broker: one SQLite file shared by the processes of one machine.

It keeps the :class:`~runner.broker.Broker` contract of the RabbitMQ transport:

* **Routing.** Queues are bound to ``runner.jobs`` by topic patterns; a publish stores one copy
  per matching queue in one transaction, or raises :class:`~runner.errors.UnroutableError`.
  Routing is decided at publish time, delayed jobs included.
* **Durability.** WAL journal with ``synchronous=FULL`` by default: a job is on disk (fsynced)
  before :meth:`SqliteBroker.publish` returns, like a RabbitMQ publisher confirm, so it survives
  a SIGKILL and a power cut.  ``synchronous="NORMAL"`` still survives a killed process, but the
  last commits may be lost on power failure.
* **Leases.** A consumer claims a message (``BEGIN IMMEDIATE``: one writer at a time across
  processes) by writing its lease; :meth:`consume` renews its leases every third of the lease
  while they are unsettled.  A process that dies stops renewing, so its messages become
  deliverable again after ``lease`` seconds, with ``redelivered=True``.  :meth:`close` gives
  unsettled deliveries back at once.  Hand-outs that were never settled are counted in the
  ``x-runner-deliveries`` header; past ``max_redeliveries`` the message is dead-lettered, as
  the amqp transport does.  A deliberate ``settle(requeue=True)`` is not counted.
* **Stopping.** :meth:`stop_consuming` stops the hand-outs; :meth:`consume` keeps renewing the
  leases of what it handed out and returns once all of it is settled.
* **Waiting.** Other processes' changes are found by polling with a backoff (5 ms growing to
  ``poll_interval``); changes made in this process wake waiters at once.
* **Events** (:meth:`SqliteBroker.publish_event`, ``Target.EVENTS``) are stored in the event
  queues bound for them (a monitor's, :meth:`SqliteBroker.declare_event_queue`), each bounded
  (oldest dropped first), and dropped when none is.  A consumer reads them in order and
  deletes what it handled, so events survive its restart.
  A retry (``Target.JOBS`` in a settle) goes back to the delivery's own queue.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from runner.broker import EVENTS_QUEUE_MAX, Broker, Delivery, Envelope, Outgoing, ReplyInbox
from runner.brokers import sqlite_file
from runner.brokers import sqlite_store as store
from runner.errors import BrokerError, ConfigError, UnroutableError
from runner.message import H_DELIVERIES

log = logging.getLogger(__name__)
POLL_MIN = 0.005


@dataclass(frozen=True)
class _Tag:
    owner: str
    row_id: int
    token: str


class SqliteBroker(Broker):
    """:class:`~runner.broker.Broker` over one SQLite file.

    Args:
        url: ``sqlite:///absolute/path/broker.sqlite3``; missing directories are created.
        lease: seconds a claimed message stays with a consumer that stopped renewing it.
        max_redeliveries: unsettled hand-outs tolerated before the broker itself dead-letters a
            message (``None``: only count them in ``x-runner-deliveries``; the worker decides).
        poll_interval: longest pause between two looks for work made by other processes.
        busy_timeout: seconds to wait for another process's write lock before failing.
        synchronous: ``FULL`` (durable on power loss, default), ``NORMAL`` or ``EXTRA``.
    """

    def __init__(
        self,
        url: str,
        lease: float = 30.0,
        max_redeliveries: int | None = None,
        poll_interval: float = 0.1,
        busy_timeout: float = 30.0,
        synchronous: str = "FULL",
    ) -> None:
        if lease <= 0 or poll_interval <= 0:
            raise ConfigError("the sqlite broker's lease and poll_interval must be positive")
        self.url = url
        self._path = sqlite_file.database_path(url)
        self._lease = lease
        self._max_redeliveries = max_redeliveries
        self._poll_max = max(POLL_MIN, poll_interval)
        self._db: sqlite3.Connection | None = sqlite_file.open_database(
            self._path, busy_timeout, synchronous
        )
        self._pid = os.getpid()
        self._lock = threading.RLock()  # one connection, shared by consume/settle/inbox threads
        self._signal = sqlite_file.signal_for(self._path)
        self._owner = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:12]}"
        self._tokens = itertools.count(1)
        self._unsettled: dict[str, int] = {}  # lease token -> message row id
        self._state = threading.Lock()
        self._stopping = threading.Event()
        self._abandoned = threading.Event()  # stop even with deliveries unsettled
        self._inboxes: set[SqliteInbox] = set()
        self._closed = False
        self._prefetch = 1

    # --- database access --------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise BrokerError(f"the sqlite broker {self._path} is closed")
        if os.getpid() != self._pid:
            raise BrokerError("a SqliteBroker cannot cross fork(); open a new one in the child")
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (``BEGIN IMMEDIATE``), committed on a clean exit."""
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise BrokerError(f"sqlite broker {self._path}: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads outside a write transaction (autocommit)."""
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as exc:
                raise BrokerError(f"sqlite broker {self._path}: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as db:
            return db.execute(sql, params).fetchall()

    def _require_queue(self, queue: str) -> None:
        if not self._read("SELECT 1 FROM queues WHERE name = ?", (queue,)):
            raise BrokerError(f"queue {queue!r} does not exist; declare it first")

    # --- topology ---------------------------------------------------------------------------
    def declare_queue(self, queue: str, bindings: Sequence[str]) -> None:
        if not queue or isinstance(bindings, str):
            raise ValueError("declare_queue needs a queue name and a sequence of patterns")
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO queues (name, created_at) VALUES (?, ?)",
                (queue, time.time()),
            )
            db.executemany(
                "INSERT OR IGNORE INTO bindings (queue, pattern) VALUES (?, ?)",
                [(queue, pattern) for pattern in bindings],
            )

    def unbind(self, queue: str, binding: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM bindings WHERE queue = ? AND pattern = ?", (queue, binding))

    def delete_queue(self, queue: str) -> None:
        with self._write() as db:
            for table, column in (
                ("bindings", "queue"), ("messages", "queue"), ("queues", "name"),
                ("events", "queue"), ("event_queues", "name"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (queue,))

    def queue_depth(self, queue: str) -> int:
        self._require_queue(queue)
        now = time.time()
        return int(self._read(f"SELECT COUNT(*) {store.READY}", (queue, now, now))[0][0])

    # --- publishing -------------------------------------------------------------------------
    def publish(self, envelope: Envelope, delay: float = 0.0) -> None:
        with self._write() as db:
            queues = store.route(db, envelope.routing_key)
            if not queues:
                raise UnroutableError(envelope.routing_key)
            visible_at = time.time() + max(0.0, delay)
            for queue in queues:
                store.insert_message(db, queue, envelope, visible_at)
        self._signal.notify()

    def reply_inbox(self) -> ReplyInbox:
        address = f"sqlite-reply.{uuid.uuid4().hex}"
        with self._write() as db:
            db.execute(
                "INSERT INTO inboxes (address, opened_at) VALUES (?, ?)", (address, time.time())
            )
        inbox = SqliteInbox(self, address)
        self._inboxes.add(inbox)
        return inbox

    def _take_reply(self, address: str, correlation_id: str) -> Envelope | None:
        with self._reading() as db:
            if store.find_reply(db, address, correlation_id) is None:
                return None
        with self._write() as db:  # look again under the write lock: another thread may race
            return store.take_reply(db, address, correlation_id)

    def _close_inbox(self, inbox: SqliteInbox) -> None:
        self._inboxes.discard(inbox)
        if self._closed:
            return
        with self._write() as db:
            db.execute("DELETE FROM replies WHERE address = ?", (inbox.address,))
            db.execute("DELETE FROM inboxes WHERE address = ?", (inbox.address,))

    # --- consuming --------------------------------------------------------------------------
    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._require_queue(queue)
        # A stop requested before this starts is kept; the flag is cleared when consuming ends.
        try:
            self._consume_until_stopped(queue, prefetch, on_delivery)
        finally:
            self._stopping.clear()
            self._abandoned.clear()

    def _consume_until_stopped(
        self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]
    ) -> None:
        self._prefetch = prefetch  # set_prefetch changes it while this runs
        renew_at = time.monotonic() + self._lease / 3
        delay = POLL_MIN
        while not self._closed:
            seen = self._signal.generation
            with self._state:
                held = len(self._unsettled)
            stopping = self._stopping.is_set()
            if stopping and (not held or self._abandoned.is_set()):
                return
            try:
                if time.monotonic() >= renew_at:
                    self._renew()
                    renew_at = time.monotonic() + self._lease / 3
                free = 0 if stopping else self._prefetch - held
                batch, found = self._claim(queue, free) if free > 0 else ([], False)
            except BrokerError as exc:
                if self._closed:
                    return
                log.warning("sqlite broker: %s; trying again", exc)
                batch, found, delay = [], False, self._poll_max
            self._hand_out(batch, on_delivery)
            if found:
                delay = POLL_MIN
                continue
            pause = min(delay, max(0.0, renew_at - time.monotonic()))
            woke = self._signal.wait(seen, pause)
            delay = POLL_MIN if woke else min(delay * 2, self._poll_max)

    def _claim(self, queue: str, limit: int) -> tuple[list[Delivery], bool]:
        """Lease up to ``limit`` ready messages; also say whether any ready row was seen."""
        now = time.time()
        if not self._read(f"SELECT 1 {store.READY} LIMIT 1", (queue, now, now)):
            return [], False  # the common idle case costs one read, never the write lock
        batch: list[Delivery] = []
        with self._write() as db:
            now = time.time()
            rows = db.execute(
                f"SELECT id, deliveries, {store.ENVELOPE_SQL} {store.READY} "
                "ORDER BY rank DESC, visible_at, id LIMIT ?",
                (queue, now, now, limit),
            ).fetchall()
            for row_id, unsettled, *columns in rows:
                env = store.row_envelope(columns)
                if unsettled:
                    count = store.header_int(env, H_DELIVERIES) + unsettled
                    env = env.with_headers(**{H_DELIVERIES: count})
                    if self._max_redeliveries is not None and count > self._max_redeliveries:
                        reason = f"delivered {count} times without being settled"
                        store.dead_letter(db, row_id, env, f"{reason}; it may crash workers", now)
                        continue
                token = f"{self._owner}:{next(self._tokens)}"
                db.execute(store.LEASE, (self._owner, token, now + self._lease, row_id))
                batch.append(Delivery(env, unsettled > 0, queue, _Tag(self._owner, row_id, token)))
        with self._state:
            self._unsettled.update((d.tag.token, d.tag.row_id) for d in batch)
        return batch, bool(rows)

    def _hand_out(self, batch: list[Delivery], on_delivery: Callable[[Delivery], None]) -> None:
        for i, delivery in enumerate(batch):
            try:
                on_delivery(delivery)
            except BaseException:
                for rest in batch[i + 1 :]:
                    self.settle(rest, requeue=True)
                raise

    def _renew(self) -> None:
        """Extend the leases of every unsettled delivery (the heartbeat)."""
        with self._state:
            held = list(self._unsettled.items())
        if held:
            with self._write() as db:
                until = time.time() + self._lease
                db.executemany(store.RENEW, [(until, row_id, tok) for tok, row_id in held])

    def stop_consuming(self) -> None:
        self._stopping.set()
        self._signal.notify()

    def abandon(self) -> None:
        self._abandoned.set()
        self.stop_consuming()

    def settle(
        self, delivery: Delivery, outgoing: Sequence[Outgoing] = (), requeue: bool = False
    ) -> Future[None]:
        future: Future[None] = Future()
        tag = delivery.tag
        try:
            if not isinstance(tag, _Tag) or tag.owner != self._owner:
                raise BrokerError("this delivery was not handed out by this broker object")
            with self._write() as db:
                if not db.execute(store.HELD, (tag.row_id, tag.token)).fetchone():
                    raise BrokerError(
                        f"delivery of {delivery.envelope.message_id} is no longer held here "
                        "(its lease expired or the broker was closed); it will be delivered again"
                    )
                now = time.time()
                for out in outgoing:
                    store.send(db, out, delivery.queue, now)
                # A deliberate requeue is not a failed delivery: it is not counted.
                db.execute(store.REQUEUE if requeue else store.ACK, (tag.row_id,))
        except Exception as exc:  # noqa: BLE001 - reported through the future
            future.set_exception(exc)
        else:
            future.set_result(None)
        finally:
            if isinstance(tag, _Tag):
                # Settled, or not ours any more: stop renewing it either way, so a failed
                # settle ends with the lease expiring and the message delivered again.
                with self._state:
                    self._unsettled.pop(tag.token, None)
            self._signal.notify()
        return future

    def set_prefetch(self, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._prefetch = prefetch
        self._signal.notify()

    def reply_now(self, envelope: Envelope) -> None:
        try:
            with self._write() as db:
                store.insert_reply(db, envelope)
            self._signal.notify()
        except Exception:  # best effort by contract
            log.debug("progress reply dropped", exc_info=True)

    # --- dead letters -----------------------------------------------------------------------
    def dead_letters(self, limit: int = 1000) -> list[Envelope]:
        with self._reading() as db:
            return store.list_dead(db, limit)

    def take_dead(self, message_id: str) -> Envelope | None:
        with self._write() as db:
            return store.take_dead(db, message_id)

    def purge_dead(self) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM dead").rowcount

    # --- events -----------------------------------------------------------------------------
    def declare_event_queue(
        self, queue: str, patterns: Sequence[str] = ("#",), max_length: int = EVENTS_QUEUE_MAX
    ) -> None:
        if not queue or isinstance(patterns, str) or max_length < 1:
            raise ValueError("declare_event_queue needs a name, a sequence of patterns, a limit")
        with self._write() as db:
            row = db.execute(
                "SELECT patterns FROM event_queues WHERE name = ?", (queue,)
            ).fetchone()
            known = json.loads(row[0]) if row else []
            merged = json.dumps(list(dict.fromkeys([*known, *patterns])))
            db.execute(
                "INSERT INTO event_queues (name, patterns, max_length, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET patterns = excluded.patterns, "
                "max_length = excluded.max_length",
                (queue, merged, max_length, time.time()),
            )

    def publish_event(self, envelope: Envelope) -> None:
        with self._reading() as db:
            queues = store.event_queues(db)
        if not queues:
            return  # nobody listens: no write lock taken on the job path's file
        with self._write() as db:
            stored = store.insert_event(db, envelope, store.event_queues(db))
        if stored:
            self._signal.notify()

    def consume_events(
        self, queue: str, on_events: Callable[[list[Envelope]], None], batch: int = 200
    ) -> None:
        if not self._read("SELECT 1 FROM event_queues WHERE name = ?", (queue,)):
            raise BrokerError(f"event queue {queue!r} does not exist; declare it first")
        # A stop requested before this starts is kept; the flag is cleared when consuming ends.
        try:
            self._consume_events(queue, on_events, batch)
        finally:
            self._stopping.clear()

    def _consume_events(
        self, queue: str, on_events: Callable[[list[Envelope]], None], batch: int
    ) -> None:
        delay = POLL_MIN
        while not self._closed and not self._stopping.is_set():
            seen = self._signal.generation
            with self._reading() as db:
                rows = store.read_events(db, queue, batch)
            if rows:
                on_events([env for _, env in rows])
                with self._write() as db:
                    store.drop_events(db, queue, len(rows), up_to=rows[-1][0])
                delay = POLL_MIN
                continue
            woke = self._signal.wait(seen, delay)
            delay = POLL_MIN if woke else min(delay * 2, self._poll_max)

    # --- revocations ----------------------------------------------------------------------
    def record_revocations(self, job_ids: Sequence[str], ttl: float) -> None:
        until = time.time() + ttl
        with self._write() as db:
            db.executemany(
                "INSERT INTO revoked (job_id, until) VALUES (?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET until = MAX(until, excluded.until)",
                [(job_id, until) for job_id in job_ids],
            )

    def revocations(self) -> dict[str, float]:
        with self._write() as db:
            db.execute("DELETE FROM revoked WHERE until <= ?", (time.time(),))
            return {job_id: until for job_id, until in db.execute("SELECT job_id, until FROM revoked")}

    # --- leadership and records (runner beat) ----------------------------------------------
    def acquire_leader(self, name: str, ttl: float = 10.0) -> bool:
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO leaders (name, holder, until) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET holder = excluded.holder, until = excluded.until "
                "WHERE leaders.holder = excluded.holder OR leaders.until < ?",
                (name, self._owner, now + ttl, now),
            )
            row = db.execute("SELECT holder FROM leaders WHERE name = ?", (name,)).fetchone()
        return bool(row and row[0] == self._owner)

    def release_leader(self, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM leaders WHERE name = ? AND holder = ?", (name, self._owner))

    def load_record(self, name: str) -> bytes | None:
        rows = self._read("SELECT body FROM records WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def store_record(self, name: str, body: bytes) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO records (name, body) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (name, body),
            )

    # --- remote control -------------------------------------------------------------------
    def broadcast(self, envelope: Envelope, gather: float = 0.0) -> list[Envelope]:
        inbox = self.reply_inbox() if gather > 0 else None
        env = replace(envelope, reply_to=None, correlation_id=None)
        if inbox is not None:
            env = replace(envelope, reply_to=inbox.address, correlation_id=envelope.message_id)
        try:
            with self._write() as db:
                store.insert_broadcast(db, env, time.time())
            self._signal.notify()
            replies: list[Envelope] = []
            if inbox is not None:
                deadline = time.monotonic() + gather
                while (left := deadline - time.monotonic()) > 0:
                    reply = inbox.get(envelope.message_id, left)
                    if reply is not None:
                        replies.append(reply)
            return replies
        finally:
            if inbox is not None:
                inbox.close()

    def consume_broadcast(
        self,
        consumer: str,
        on_message: Callable[[Envelope], Envelope | None],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        # A stop requested before this starts is kept (it used to be cleared here, and lost);
        # the flag is cleared when consuming ends.
        try:
            self._consume_broadcast(on_message, on_ready)
        finally:
            self._stopping.clear()

    def _consume_broadcast(
        self, on_message: Callable[[Envelope], Envelope | None], on_ready: Callable[[], None] | None
    ) -> None:
        with self._reading() as db:
            last = store.last_broadcast(db)
        if on_ready is not None:
            on_ready()
        delay = POLL_MIN
        while not self._closed and not self._stopping.is_set():
            seen = self._signal.generation
            try:
                with self._reading() as db:
                    rows = store.read_broadcasts(db, last)
            except BrokerError as exc:
                if self._closed:
                    return
                log.warning("sqlite broker: %s; trying again", exc)
                rows = []
            for row_id, env in rows:
                last = row_id
                try:
                    reply = on_message(env)
                    if reply is not None and env.reply_to:
                        reply = replace(
                            reply, routing_key=env.reply_to, correlation_id=env.correlation_id
                        )
                        with self._write() as db:
                            store.insert_reply(db, reply)
                        self._signal.notify()
                except Exception:  # a bad command must not stop remote control
                    log.exception("control message %s failed", env.message_id)
            if rows:
                delay = POLL_MIN
                continue
            woke = self._signal.wait(seen, delay)
            delay = POLL_MIN if woke else min(delay * 2, self._poll_max)

    def close(self) -> None:
        """Give unsettled deliveries back (counted as redeliveries) and close the file.

        Unlike the rest of the object, safe to call while :meth:`consume` runs in another
        thread: it makes :meth:`consume` return.
        """
        if self._closed or os.getpid() != self._pid:
            return
        self._stopping.set()
        for inbox in list(self._inboxes):
            inbox.close()
        with self._lock:
            try:
                with self._write() as db:
                    db.execute(store.RELEASE, (self._owner,))
            except BrokerError as exc:
                log.warning(
                    "could not give back unsettled deliveries (their leases expire): %s", exc
                )
            self._closed = True
            conn, self._db = self._db, None
            if conn is not None:
                conn.close()
        self._signal.notify()


class SqliteInbox(ReplyInbox):
    """Replies stored under a unique address until :meth:`get` takes them."""

    def __init__(self, broker: SqliteBroker, address: str) -> None:
        self.address = address
        self._broker = broker
        self._closed = False

    def get(self, correlation_id: str, timeout: float | None) -> Envelope | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        signal, delay = self._broker._signal, POLL_MIN
        while True:
            if self._closed:
                raise BrokerError(f"reply inbox {self.address} is closed")
            seen = signal.generation
            reply = self._broker._take_reply(self.address, correlation_id)
            if reply is not None:
                return reply
            pause = delay
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    return None
            woke = signal.wait(seen, pause)
            delay = POLL_MIN if woke else min(delay * 2, self._broker._poll_max)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broker._close_inbox(self)

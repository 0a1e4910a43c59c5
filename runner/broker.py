"""The transport-neutral broker contract.

Two transports implement it: ``amqp://`` (RabbitMQ through pika, :mod:`runner.brokers.amqp`) and
``sqlite://`` (the embedded single-box broker, :mod:`runner.brokers.sqlite`).  Everything above
this module (client, worker, CLI) speaks only to :class:`Broker`, so switching the URL switches the
transport and nothing else.

The names below are part of the protocol (docs/protocol.md):

* jobs are published to the topic exchange ``runner.jobs`` with routing key ``<route>.<job>``;
* worker queues are bound to it by patterns (``default.#``); ``*`` matches one word, ``#`` zero or
  more;
* dead letters go to the queue ``runner.dead``;
* replies go to the address a :class:`ReplyInbox` hands out;
* remote control broadcasts go to the fanout exchange ``runner.control``, replies to the
  sender's reply address;
* lifecycle events go to the topic exchange ``runner.events`` (routing key ``job.<state>.<job>``
  or ``worker.<state>``); a monitor reads them from its own durable event queue
  (``runner.monitor`` by default).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from runner.config import redact_url

JOBS_EXCHANGE = "runner.jobs"
DEAD_QUEUE = "runner.dead"
EVENTS_EXCHANGE = "runner.events"
EVENTS_QUEUE = "runner.monitor"  # the monitor's durable event queue, unless it is told another
REVOKED_QUEUE = "runner.revoked"  # durable revocations, each message expiring with its revocation
CONTROL_EXCHANGE = "runner.control"  # fanout: remote control broadcasts to every live worker
EVENTS_QUEUE_MAX = 100_000  # events an event queue keeps while nobody reads it (oldest go first)
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Envelope:
    """One message as it travels: a body and the properties every transport carries.

    ``headers`` holds only JSON-compatible values (str, int, float, bool, None).
    """

    body: bytes
    message_id: str
    type: str
    routing_key: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    reply_to: str | None = None
    correlation_id: str | None = None
    timestamp: int | None = None
    content_type: str = CONTENT_TYPE

    def with_headers(self, **changes: Any) -> Envelope:
        """Return a copy with some headers added or replaced."""
        return replace(self, headers={**self.headers, **changes})


@dataclass(frozen=True)
class Delivery:
    """An envelope handed to a consumer; settle it exactly once with :meth:`Broker.settle`."""

    envelope: Envelope
    redelivered: bool
    queue: str
    tag: Any = None  # transport handle, opaque above the broker


class Target(str, enum.Enum):
    """Where an :class:`Outgoing` message goes when a delivery is settled."""

    JOBS = "jobs"  # a retry: back to the queue the delivery came from (optionally after a delay)
    DEAD = "dead"  # the dead-letter queue
    REPLY = "reply"  # envelope.routing_key is a reply address from a ReplyInbox
    EVENTS = "events"  # runner.events, routed by envelope.routing_key; best effort


@dataclass(frozen=True)
class Outgoing:
    """A message to publish as part of settling a delivery."""

    envelope: Envelope
    target: Target
    delay: float = 0.0


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""
    pat = pattern.split(".")
    key = routing_key.split(".")

    def match(i: int, j: int) -> bool:
        while i < len(pat):
            if pat[i] == "#":
                return any(match(i + 1, k) for k in range(j, len(key) + 1))
            if j >= len(key) or (pat[i] != "*" and pat[i] != key[j]):
                return False
            i, j = i + 1, j + 1
        return j == len(key)

    return match(0, 0)


class ReplyInbox(abc.ABC):
    """Where a waiting client receives replies; :attr:`address` goes into ``reply_to``."""

    address: str

    @abc.abstractmethod
    def get(self, correlation_id: str, timeout: float | None) -> Envelope | None:
        """Return the reply for ``correlation_id``, or ``None`` when ``timeout`` passes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving replies."""


class Broker(abc.ABC):
    """The contract both transports keep.

    A broker object is used by one thread, except :meth:`settle` and :meth:`stop_consuming`,
    which are safe to call from any thread while :meth:`consume` runs.
    """

    url: str

    @abc.abstractmethod
    def declare_queue(self, queue: str, bindings: Sequence[str]) -> None:
        """Create the durable queue if needed and bind it to ``runner.jobs`` by ``bindings``."""

    @abc.abstractmethod
    def unbind(self, queue: str, binding: str) -> None:
        """Remove one binding of a queue (missing bindings are ignored)."""

    @abc.abstractmethod
    def delete_queue(self, queue: str) -> None:
        """Delete a queue and its messages (tests and operators only)."""

    @abc.abstractmethod
    def publish(self, envelope: Envelope, delay: float = 0.0) -> None:
        """Publish a job durably to ``runner.jobs`` and return once the broker has it.

        With ``delay`` the broker holds it that many seconds before routing it.  Raises
        :class:`~runner.errors.UnroutableError` when no queue matches the routing key.
        """

    def publish_many(self, items: Sequence[tuple[Envelope, float]]) -> None:
        """Publish several jobs (each with its delay); return once the broker has them all.

        A transport may pipeline them (RabbitMQ: one round trip of confirms for the lot).  On
        an error, jobs before the failing one may have been accepted, as with one publish each.
        """
        for envelope, delay in items:
            self.publish(envelope, delay)

    @abc.abstractmethod
    def reply_inbox(self) -> ReplyInbox:
        """Open an inbox for replies to jobs this broker object publishes."""

    @abc.abstractmethod
    def consume(
        self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]
    ) -> None:
        """Deliver messages of ``queue`` to ``on_delivery`` until :meth:`stop_consuming`.

        Blocks the calling thread.  At most ``prefetch`` deliveries are unsettled at a time.
        ``on_delivery`` must return quickly (hand the work to another thread).  Unsettled
        deliveries go back to the queue when the consumer stops or dies.
        """

    @abc.abstractmethod
    def stop_consuming(self) -> None:
        """Stop handing out new deliveries; thread-safe.

        :meth:`consume` keeps serving :meth:`settle` calls (and renewing leases) for the
        deliveries it already handed out, and returns once all of them are settled.
        """

    def abandon(self) -> None:
        """Stop consuming now, even with deliveries unsettled; thread-safe.

        The last resort of a worker whose jobs will not end: the broker takes the unsettled
        deliveries back (a closed connection, an expired lease) and delivers them again.
        """
        self.stop_consuming()

    @abc.abstractmethod
    def settle(
        self, delivery: Delivery, outgoing: Sequence[Outgoing] = (), requeue: bool = False
    ) -> Future[None]:
        """Publish ``outgoing`` (confirmed), then acknowledge ``delivery``; thread-safe.

        With ``requeue`` the delivery goes back to its queue instead of being acknowledged.
        The future fails if a publish failed; the delivery is then left unacknowledged, so the
        broker delivers it again.
        """

    #: True when a delivery must not stay unsettled for long (RabbitMQ's ``consumer_timeout``):
    #: the worker then hands long jobs over with :meth:`hand_over` (docs/fleet.md).  The sqlite
    #: broker renews its leases itself and keeps the default ``False``.
    needs_handover: bool = False

    def hand_over(self, delivery: Delivery, guard: Outgoing) -> Future[None]:
        """Publish ``guard`` (confirmed), then acknowledge ``delivery`` while its job runs on;
        thread-safe.

        ``guard`` is a copy of the job (``Target.JOBS`` with a delay) that brings it back if
        the worker dies.  Afterwards the delivery is *handed over*: it keeps its slot, a
        further ``hand_over`` only publishes another guard, and :meth:`settle` only publishes
        (``requeue`` publishes a fresh copy) since there is nothing left to acknowledge.  The
        future fails with nothing acknowledged if the guard could not be published, or (for
        a delivery not yet handed over) if its connection was lost.
        """
        raise NotImplementedError(f"{type(self).__name__} does not hand deliveries over")

    def set_prefetch(self, prefetch: int) -> None:
        """Change how many deliveries :meth:`consume` may hand out unsettled; thread-safe.

        Takes effect for deliveries from now on (a worker growing or shrinking its pool).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot change its prefetch")

    @abc.abstractmethod
    def reply_now(self, envelope: Envelope) -> None:
        """Send a reply (``envelope.routing_key`` is the address) while a job still runs.

        Thread-safe and best effort: progress updates to a waiting client.  It never raises
        and never delays the job; a reply that cannot go out is dropped.
        """

    @abc.abstractmethod
    def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting unacknowledged ones)."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 1000) -> list[Envelope]:
        """List dead-lettered envelopes, oldest first, leaving them in place."""

    @abc.abstractmethod
    def take_dead(self, message_id: str) -> Envelope | None:
        """Remove one dead letter by message id and return it (``None`` if absent)."""

    @abc.abstractmethod
    def purge_dead(self) -> int:
        """Remove every dead letter; return how many."""

    # --- events: not abstract, so a transport without them still loads -----------------------
    def declare_event_queue(
        self, queue: str, patterns: Sequence[str] = ("#",), max_length: int = EVENTS_QUEUE_MAX
    ) -> None:
        """Create a durable queue bound to ``runner.events`` by topic ``patterns`` (a monitor's).

        It keeps the events published while its consumer is away, at most ``max_length`` of
        them: past that the oldest are dropped first.  Delete it with :meth:`delete_queue`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not carry events")

    def publish_event(self, envelope: Envelope) -> None:
        """Publish one event to ``runner.events``, routed by ``envelope.routing_key``.

        Best effort: an event no queue is bound for is dropped without an error.  Like
        :meth:`publish`, for the thread that owns the broker object.  Raises
        :class:`~runner.errors.BrokerError` when the broker cannot be reached.
        """
        raise NotImplementedError(f"{type(self).__name__} does not carry events")

    def consume_events(
        self, queue: str, on_events: Callable[[list[Envelope]], None], batch: int = 200
    ) -> None:
        """Hand the events of an event queue to ``on_events``, in batches, until
        :meth:`stop_consuming`; blocks the calling thread.

        A batch is acknowledged once ``on_events`` returns; if it raises, the error propagates
        and the batch stays queued.  Delivery is at least once (events carry unique ids, so a
        consumer drops duplicates), in publish order.  One consumer per event queue.
        """
        raise NotImplementedError(f"{type(self).__name__} does not carry events")

    # --- remote control: not abstract either ------------------------------------------------
    def broadcast(self, envelope: Envelope, gather: float = 0.0) -> list[Envelope]:
        """Send ``envelope`` to every consumer of broadcasts that is live now (``runner.control``).

        Not durable: a consumer that is not running misses it.  With ``gather`` > 0, wait that
        many seconds and return the replies (their ``correlation_id`` is the envelope's
        ``message_id``), in arrival order; otherwise return ``[]`` at once.
        """
        raise NotImplementedError(f"{type(self).__name__} does not carry broadcasts")

    def consume_broadcast(
        self,
        consumer: str,
        on_message: Callable[[Envelope], Envelope | None],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Hand every broadcast sent from now on to ``on_message`` until :meth:`stop_consuming`;
        blocks the calling thread.  ``on_ready`` is called once broadcasts are being received
        (again after each reconnect).

        ``consumer`` names this consumer (a worker name).  When ``on_message`` returns an
        envelope and the broadcast asked for replies, that envelope (its body and headers) goes
        to the sender as a reply.  An exception in ``on_message`` is logged, not propagated.
        """
        raise NotImplementedError(f"{type(self).__name__} does not carry broadcasts")

    def record_revocations(self, job_ids: Sequence[str], ttl: float) -> None:
        """Remember durably, for ``ttl`` seconds, that ``job_ids`` must never start.

        Workers read every revocation in force when they start (:meth:`revocations`); live
        workers also hear of it through a control broadcast.
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep revocations")

    def revocations(self) -> dict[str, float]:
        """Every revocation in force: job id -> until when (epoch seconds)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep revocations")

    # --- leadership and records (runner beat): not abstract either --------------------------
    def acquire_leader(self, name: str, ttl: float = 10.0) -> bool:
        """Take or keep the leadership ``name``; ``True`` while this broker object holds it.

        Holder and standbys call it periodically (every few seconds, well within ``ttl``): the
        holder keeps it, a standby takes over once the holder is gone.  amqp: an exclusive
        queue ``name`` on this connection (gone when the connection closes); sqlite: a lease
        row that lapses ``ttl`` seconds after the holder's last call.
        """
        raise NotImplementedError(f"{type(self).__name__} does not elect leaders")

    def release_leader(self, name: str) -> None:
        """Give up the leadership ``name`` if this object holds it."""
        raise NotImplementedError(f"{type(self).__name__} does not elect leaders")

    def load_record(self, name: str) -> bytes | None:
        """The body last stored under ``name`` by :meth:`store_record` (``None``: none yet)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep records")

    def store_record(self, name: str, body: bytes) -> None:
        """Durably replace the record ``name``; returns once the broker has it."""
        raise NotImplementedError(f"{type(self).__name__} does not keep records")

    @abc.abstractmethod
    def close(self) -> None:
        """Close connections; the object is unusable afterwards."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Tuning the embedded broker from its URL: sqlite:///path?lease=10&poll_interval=0.05
SQLITE_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "lease": float,
    "poll_interval": float,
    "busy_timeout": float,
    "synchronous": str.upper,
}


def _url_options(query: str, known: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    from urllib.parse import parse_qsl

    from runner.errors import ConfigError

    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in known:
            raise ConfigError(f"unknown broker URL option {key!r} (known: {', '.join(known)})")
        try:
            out[key] = known[key](value)
        except ValueError:
            raise ConfigError(f"broker URL option {key}={value!r} is not valid") from None
    return out


def connect(url: str, **options: Any) -> Broker:
    """Open the broker that ``url`` names (``amqp://…`` or ``sqlite:///path[?options]``)."""
    from runner.errors import ConfigError

    scheme = url.split(":", 1)[0].lower()
    if scheme in ("amqp", "amqps"):
        from runner.brokers.amqp import AmqpBroker

        return AmqpBroker(url, **options)
    if scheme == "sqlite":
        from runner.brokers.sqlite import SqliteBroker

        base, _, query = url.partition("?")
        return SqliteBroker(base, **{**_url_options(query, SQLITE_URL_OPTIONS), **options})
    raise ConfigError(f"unsupported broker URL {redact_url(url)!r}: use amqp://… or sqlite:///path")

"""RabbitMQ transport (pika). The only module that imports pika.

Topology (docs/protocol.md):

* ``runner.jobs``: durable topic exchange; jobs are published ``mandatory`` with publisher
  confirms, so an unroutable job is an error at submit time, not a silent drop;
* worker queues: durable, ``x-max-priority`` (classic) or quorum, dead-lettering to
  ``runner.dead``;
* ``runner.delay.<queue>.<ms>``: delay queues with a message TTL that dead-letter back into
  ``<queue>`` through the default exchange.  A delayed job is first routed (so routing errors
  surface at once) and carries ``x-runner-not-before``; the consumer parks it in a delay queue
  instead of delivering it, so no worker ever holds a delayed message in memory;
* ``runner.dead``: durable queue of dead letters;
* results: direct reply-to (``amq.rabbitmq.reply-to``);
* ``runner.events``: durable topic exchange of lifecycle events, published persistent but not
  ``mandatory`` (nobody listening is not an error); a monitor's event queue is durable with
  ``x-max-length`` and ``x-overflow: drop-head``.

The fleet operations (events, remote control, leadership, records, revocations) live in
:mod:`runner.brokers.amqp_fleet`, and what both parts share in :mod:`runner.brokers.amqp_wire`.

One connection per broker object.  pika is not thread-safe: :meth:`AmqpBroker.settle`, called
from job slot threads, hands its work to the connection's thread with
``add_callback_threadsafe``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pika
import pika.exceptions as pe
from pika.exchange_type import ExchangeType
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from runner import headers as bounded
from runner.broker import (
    DEAD_QUEUE,
    EVENTS_EXCHANGE,
    JOBS_EXCHANGE,
    Broker,
    Delivery,
    Envelope,
    Outgoing,
    ReplyInbox,
    Target,
)
from runner.brokers.amqp_batch import ConfirmBatch
from runner.brokers.amqp_settle import Publish, SettleChannel
from runner.brokers.amqp_wire import (  # noqa: F401 - re-exported
    CONNECTION_ERRORS,
    H_DEAD_REASON,
    H_DELIVERIES,
    H_NOT_BEFORE,
    H_ROUTING_KEY,
    MAX_DELAY_MS,
    MAX_TTL_MS,
    RECORD_ARGS as _RECORD_ARGS,
    REPLY_TO,
    StaleDelivery,
    connect_with_retries,
    delay_bucket_ms,
    delivery_count,
    Tag as _Tag,
    envelope_from as _envelope,
)
from runner.brokers.amqp_fleet import AmqpFleet
from runner.errors import BrokerError, MessageError, UnroutableError

log = logging.getLogger(__name__)


class AmqpBroker(AmqpFleet, Broker):
    """:class:`~runner.broker.Broker` over RabbitMQ.

    Args:
        url: ``amqp://user:pass@host:port/vhost``.
        connect_for: seconds to keep retrying the first connect (``None``: forever).
        max_redeliveries: deliveries without a settle before the broker itself dead-letters a
            message (``None``: only count them in ``x-runner-deliveries``; the worker decides).
        queue_type: ``classic`` (with priorities) or ``quorum``.
    """

    needs_handover = True  # RabbitMQ's consumer_timeout takes back deliveries held too long

    def __init__(
        self,
        url: str,
        connect_for: float | None = 10.0,
        max_redeliveries: int | None = None,
        queue_type: str = "classic",
        heartbeat: int = 30,
    ) -> None:
        self.url = url
        self._params = pika.URLParameters(url)
        self._params.heartbeat = heartbeat
        self._params.blocked_connection_timeout = 300
        self._connect_for = connect_for
        self._max_redeliveries = max_redeliveries
        self._queue_type = queue_type
        self._conn: BlockingConnection | None = None
        self._ch: BlockingChannel | None = None
        self._generation = 0
        self._declared: dict[str, tuple[str, ...]] = {}
        self._delay_declared: dict[str, float] = {}
        self._stopping = threading.Event()
        self._abandoned = threading.Event()  # stop even with deliveries unsettled
        self._unsettled = 0
        # Deliveries handed over (acknowledged, a guard copy parked) whose jobs still run: they
        # outlive reconnects, keep a slot busy (prefetch is lowered by their number) and keep
        # :meth:`consume` serving until their outcome is published.
        self._detached: set[_Tag] = set()
        self._prefetch = 0
        self._restart_consumer: Callable[[], None] | None = None
        self._replies: dict[str, Envelope] = {}
        self._reply_generation: dict[str, int] = {}  # job id -> connection its reply comes on
        self._consuming = False
        self._consumer: tuple[BlockingChannel, str] | None = None
        self._inboxes: list[_AmqpInbox] = []
        self._batch: ConfirmBatch | None = None
        self._settle_ch: SettleChannel | None = None
        self._leaders: dict[str, int] = {}  # leadership name -> connection generation holding it

    # --- connection -------------------------------------------------------------------------
    def _channel(self) -> BlockingChannel:
        if self._ch is None or not self._ch.is_open:
            self._reconnect(self._connect_for)
        assert self._ch is not None
        return self._ch

    def _reconnect(self, give_up_after: float | None) -> None:
        self._drop_connection()

        conn = connect_with_retries(self._params, self._safe_url, give_up_after, self._stopping)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(JOBS_EXCHANGE, ExchangeType.topic, durable=True)  # type: ignore[arg-type]
        ch.exchange_declare(EVENTS_EXCHANGE, ExchangeType.topic, durable=True)  # type: ignore[arg-type]
        ch.queue_declare(DEAD_QUEUE, durable=True)
        self._conn, self._ch = conn, ch
        self._generation += 1
        self._delay_declared.clear()
        self._replies.clear()
        for queue, bindings in self._declared.items():
            self._declare(queue, bindings)

    @property
    def _safe_url(self) -> str:
        p = self._params
        return f"amqp://{p.host}:{p.port}/{p.virtual_host.lstrip('/')}"

    def _drop_connection(self) -> None:
        settler, self._settle_ch = self._settle_ch, None
        if settler is not None:  # their deliveries go with the connection: delivered again
            settler.fail(StaleDelivery("the connection to RabbitMQ was lost; delivered again"))
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # already broken: nothing to tidy
                pass

    def close(self) -> None:
        self._drop_connection()

    # --- topology ---------------------------------------------------------------------------
    def _queue_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": DEAD_QUEUE,
        }
        if self._queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        else:
            args["x-max-priority"] = 9
        return args

    def _declare(self, queue: str, bindings: Sequence[str]) -> None:
        ch = self._channel()
        ch.queue_declare(queue, durable=True, arguments=self._queue_args())
        for pattern in bindings:
            ch.queue_bind(queue, JOBS_EXCHANGE, routing_key=pattern)

    def declare_queue(self, queue: str, bindings: Sequence[str]) -> None:
        self._translate(lambda: self._declare(queue, bindings))
        known = self._declared.get(queue, ())
        self._declared[queue] = tuple(dict.fromkeys([*known, *bindings]))

    def unbind(self, queue: str, binding: str) -> None:
        self._translate(lambda: self._channel().queue_unbind(queue, JOBS_EXCHANGE, binding))
        self._declared[queue] = tuple(b for b in self._declared.get(queue, ()) if b != binding)

    def delete_queue(self, queue: str) -> None:
        self._translate(lambda: self._channel().queue_delete(queue))
        self._declared.pop(queue, None)

    def queue_depth(self, queue: str) -> int:
        def passive() -> int:
            frame = self._channel().queue_declare(queue, passive=True)
            return int(frame.method.message_count or 0)

        return self._translate(passive)

    def _delay_queue(self, queue: str, delay: float, floor: bool = False) -> str:
        ms = delay_bucket_ms(delay, floor)
        name = f"runner.delay.{queue}.{ms}"
        expires = ms + 600_000
        last = self._delay_declared.get(name)
        # Re-declaring resets x-expires; the queue outlives its last message by ten minutes.
        if last is None or time.monotonic() - last > expires / 2000:
            self._channel().queue_declare(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": ms,
                    "x-expires": min(expires, MAX_TTL_MS),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
            self._delay_declared[name] = time.monotonic()
        return name

    # --- publishing -------------------------------------------------------------------------
    @staticmethod
    def _props(env: Envelope, **headers: Any) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=env.content_type,
            delivery_mode=2,
            message_id=env.message_id,
            type=env.type,
            priority=env.priority,
            reply_to=env.reply_to,
            correlation_id=env.correlation_id,
            timestamp=env.timestamp,
            headers={**env.headers, **headers},
        )

    def _publish_raw(
        self, exchange: str, key: str, env: Envelope, mandatory: bool, **headers: Any
    ) -> None:
        # Inside the consumer's own callbacks the channel must not be replaced by a reconnect.
        ch = self._ch if self._consuming else self._channel()
        if ch is None:
            raise StaleDelivery("the connection to RabbitMQ was lost")
        try:
            ch.basic_publish(exchange, key, env.body, self._wire(exchange, key, env, headers),
                             mandatory=mandatory)
        except pe.UnroutableError:
            raise UnroutableError(key) from None
        except pe.NackError as exc:
            raise BrokerError(f"RabbitMQ refused message {env.message_id}: {exc}") from exc

    def _wire(self, exchange: str, key: str, env: Envelope, headers: dict[str, Any]) -> pika.BasicProperties:
        """The properties ``env`` goes out with, or BrokerError when its headers are too big."""
        if exchange == "" and key != env.routing_key:
            # Sent straight to a queue (retry, delay, dead letter): keep the job's own key.
            headers[H_ROUTING_KEY] = env.routing_key
        if bounded.total({**env.headers, **headers}) > bounded.FRAME_BUDGET:
            # Refused here, for this message alone: past frame_max RabbitMQ would close the
            # connection, and every job in flight on it would run again.
            raise BrokerError(f"the headers of message {env.message_id} are over "
                              f"{bounded.FRAME_BUDGET} bytes; not sent")
        return self._props(env, **headers)

    def publish(self, envelope: Envelope, delay: float = 0.0) -> None:
        extra = {}
        if delay > 0:
            extra[H_NOT_BEFORE] = int((time.time() + delay) * 1000)

        def send() -> None:
            if envelope.reply_to == REPLY_TO:
                for inbox in self._inboxes:
                    inbox.subscribe()
                # Direct reply-to is bound to this connection: a reply to a job sent on an
                # earlier one can never arrive (the inbox says so instead of waiting for ever).
                self._reply_generation[envelope.correlation_id or envelope.message_id] = self._generation
                if len(self._reply_generation) > 100_000:  # jobs sent with wait=True, never waited for
                    del self._reply_generation[next(iter(self._reply_generation))]
            self._publish_raw(JOBS_EXCHANGE, envelope.routing_key, envelope, True, **extra)

        self._translate(send, retry=True)

    def publish_many(self, items: Sequence[tuple[Envelope, float]]) -> None:
        """Publish jobs with their confirms pipelined (:mod:`runner.brokers.amqp_batch`).

        Not retried after a lost connection: some of the jobs may already be accepted.  A job
        whose result is awaited (direct reply-to) must be published on the channel that
        consumes the replies, so those go one at a time, on it, as :meth:`publish` sends them.
        """
        awaited = [(env, delay) for env, delay in items if env.reply_to == REPLY_TO]
        for env, delay in awaited:
            self.publish(env, delay)
        now = time.time()
        prepared = [(env, {H_NOT_BEFORE: int((now + delay) * 1000)} if delay > 0 else {})
                    for env, delay in items if env.reply_to != REPLY_TO]

        def send() -> None:
            self._channel()  # connected, exchanges declared
            if self._batch is None or self._batch.conn is not self._conn or not self._batch.usable:
                assert self._conn is not None
                self._batch = ConfirmBatch(self._conn)
            self._batch.publish(prepared, self._props)

        if prepared:
            self._translate(send)

    def _translate(self, fn: Callable[[], Any], retry: bool = False) -> Any:
        """Run a channel operation; map pika errors to BrokerError (one reconnect if asked)."""
        for tries in (1, 2):
            try:
                return fn()
            except CONNECTION_ERRORS as exc:
                if retry and tries == 1:
                    log.warning("lost the connection to RabbitMQ (%s); reconnecting", exc)
                    self._drop_connection()
                    continue
                raise BrokerError(f"RabbitMQ connection failed: {exc}") from exc
            except pe.ChannelClosedByBroker as exc:
                self._ch = None
                raise BrokerError(f"RabbitMQ refused: {exc.reply_text}") from exc
        raise AssertionError("unreachable")

    def reply_inbox(self) -> ReplyInbox:
        return _AmqpInbox(self)

    # --- consuming --------------------------------------------------------------------------
    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        # A stop requested before this starts (a SIGTERM right at start-up) is kept, not lost:
        # the flag is cleared when consuming ends, so the broker object can consume again.
        try:
            self._consume_until_stopped(queue, prefetch, on_delivery)
        finally:
            self._stopping.clear()
            self._abandoned.clear()

    def _consume_until_stopped(
        self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]
    ) -> None:
        self._prefetch = prefetch  # set_prefetch changes it; a reconnect keeps the change
        while True:
            try:
                self._consuming = True
                self._consume_once(queue, prefetch, on_delivery)
                return
            except CONNECTION_ERRORS + (pe.ChannelClosedByBroker, pe.ChannelWrongStateError) as exc:
                if self._stopping.is_set() and (not self._detached or self._abandoned.is_set()):
                    log.info("connection lost while stopping (%s); unsettled jobs requeue", exc)
                    return
                log.warning("lost the connection to RabbitMQ (%s); reconnecting", exc)
                self._unsettled = 0  # their deliveries are void; the broker requeues them
                self._consuming = False
                self._reconnect(give_up_after=None)
            finally:
                self._consuming = False

    def _consume_once(
        self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]
    ) -> None:
        ch = self._channel()
        generation = self._generation

        def on_message(
            _ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
        ) -> None:
            try:
                env = _envelope(method.routing_key, props, body)
                count = delivery_count(env)  # before anything acts on the message
                if self._divert(queue, method, env, count):
                    return
            except CONNECTION_ERRORS:
                raise  # the consume loop reconnects; the message is delivered again
            except BrokerError as exc:  # parking or counting it was refused: try again later
                log.warning("could not divert message %s (%s); it is delivered again",
                            props.message_id, exc)
                _ch.basic_nack(method.delivery_tag, requeue=True)
                return
            except Exception as exc:  # noqa: BLE001 - one message must not end the worker
                self._refuse(method, props, body, exc)
                return
            self._unsettled += 1
            tag = _Tag(method.delivery_tag, generation)
            # A copy re-published after a lost delivery counts as redelivered too.
            redelivered = bool(method.redelivered) or count > 0
            on_delivery(Delivery(env, redelivered, queue, tag))

        def start() -> None:
            # Slots held by handed-over jobs are not offered to RabbitMQ: prefetch applies to a
            # consumer when it starts, so the consumer is restarted whenever that number changes.
            self._cancel_consumer()
            window = self._prefetch - len(self._detached)
            if window > 0 and not self._stopping.is_set() and ch.is_open:
                ch.basic_qos(prefetch_count=window)
                self._consumer = (ch, ch.basic_consume(queue, on_message))

        self._restart_consumer = start
        start()
        live = self._conn
        assert live is not None

        def tick() -> None:
            current = self._conn
            if current is not None and current is live and current.is_open:
                current.call_later(1.0, tick)

        # Without a time limit pika returns after each dispatch (a delivery, a settle handed
        # over from a slot, this tick) and sets no timer per call: a timer per call was a heap
        # push and pop per job.  The tick bounds how long a closed channel or a stop goes unseen.
        tick()
        while True:
            live.process_data_events(time_limit=None)
            if not ch.is_open:  # closed by RabbitMQ (e.g. consumer_timeout): pika does not raise
                raise pe.ChannelWrongStateError("the channel was closed by RabbitMQ")
            if self._stopping.is_set():
                self._cancel_consumer()
                if self._unsettled <= 0 and not self._detached or self._abandoned.is_set():
                    return

    def _cancel_consumer(self) -> None:
        """Stop deliveries (connection thread only); requeued copies then wait for others."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None and consumer[0].is_open:
            consumer[0].basic_cancel(consumer[1])

    def _refuse(self, method: Any, props: pika.BasicProperties, body: bytes, exc: Exception) -> None:
        """Dead-letter a message the transport itself cannot handle, with the reason.

        Runs in the connection thread.  If even that fails, RabbitMQ dead-letters it (the
        queue's dead-letter exchange) without a reason.
        """
        ch = self._ch
        assert ch is not None
        reason = f"malformed message: {exc}"[:1000]
        log.error("message %s dead-lettered: %s", getattr(props, "message_id", None) or "?", reason)
        try:
            dead = _envelope(method.routing_key, props, body).with_headers(**{H_DEAD_REASON: reason})
            self._publish_raw("", DEAD_QUEUE, replace(dead, reply_to=None), True)
        except CONNECTION_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - the queue's own dead-lettering is the fallback
            log.exception("could not publish the dead letter; rejecting the message instead")
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        ch.basic_ack(method.delivery_tag)

    def _divert(self, queue: str, method: Any, env: Envelope, count: int) -> bool:
        """Park a not-yet-due message in a delay queue, or dead-letter a crash loop.

        Runs in the connection thread; returns True when the message is dealt with here.
        """
        ch = self._ch
        assert ch is not None
        not_before = env.headers.get(H_NOT_BEFORE)
        if not_before is not None and (not isinstance(not_before, int) or isinstance(not_before, bool)):
            raise MessageError(f"header {H_NOT_BEFORE}: expected epoch milliseconds")
        if not_before is not None:
            remaining = not_before / 1000 - time.time()
            if remaining > 0.05:
                name = self._delay_queue(queue, remaining, floor=True)
                log.info("job %s parked in %s (due in %.1fs)", env.message_id, name, remaining)
                self._publish_raw("", name, env, True)
                ch.basic_ack(method.delivery_tag)
                return True
        if method.redelivered:
            count += 1
            if self._max_redeliveries is not None and count > self._max_redeliveries:
                reason = f"delivered {count} times without finishing; it may crash workers"
                dead = env.with_headers(**{H_DEAD_REASON: reason})
                self._publish_raw("", DEAD_QUEUE, dead, True)
            else:
                # Classic queues do not count deliveries: count in a header on a fresh copy.
                self._publish_raw("", queue, env.with_headers(**{H_DELIVERIES: count}), True)
            ch.basic_ack(method.delivery_tag)
            return True
        return False

    def abandon(self) -> None:
        self._abandoned.set()
        self.stop_consuming()

    def stop_consuming(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None and conn.is_open:
            try:
                conn.add_callback_threadsafe(self._cancel_consumer)
            except Exception:  # connection closing: the loop notices on its own
                pass

    def settle(
        self, delivery: Delivery, outgoing: Sequence[Outgoing] = (), requeue: bool = False
    ) -> Future[None]:
        """Publish the outcome on the settle channel; acknowledge once all of it is confirmed.

        The connection's thread does not wait for the confirms (:mod:`runner.brokers.amqp_settle`):
        the returned future completes from the confirm callback, after the ``basic_ack``.
        """
        future: Future[None] = Future()
        tag: _Tag = delivery.tag

        def done(error: BaseException | None) -> None:
            if error is None and tag.generation == self._generation and self._ch is not None \
                    and self._ch.is_open:
                self._ch._impl.basic_ack(tag.delivery_tag)  # noqa: SLF001 - no flush in a callback
                self._unsettled -= 1
                future.set_result(None)
                return
            self._give_back(tag, flush=False)
            future.set_exception(error or StaleDelivery(
                f"the connection of delivery {delivery.envelope.message_id} was lost; "
                "RabbitMQ delivers it again"))

        def work() -> None:
            if tag in self._detached:
                self._settle_detached(delivery, outgoing, requeue, future)
                return
            try:
                if tag.generation != self._generation or self._ch is None:
                    raise StaleDelivery(
                        f"the connection of delivery {delivery.envelope.message_id} was lost; "
                        "RabbitMQ delivers it again"
                    )
                messages = [self._route(delivery.queue, out) for out in outgoing]
                if requeue:
                    if self._stopping.is_set():
                        self._cancel_consumer()
                    # A fresh copy, so that a deliberate requeue (shutdown) is not counted as a
                    # crash the way a redelivery would be.
                    messages.append(self._route(delivery.queue, Outgoing(delivery.envelope, Target.JOBS)))
                self._settler().send(messages, done)
            except BaseException as exc:  # noqa: BLE001 - reported through the future
                self._give_back(tag)
                future.set_exception(exc)

        self._call_soon(work, future, "settle")
        return future

    def _settler(self) -> SettleChannel:
        """The settle channel of the current connection, opened on first use."""
        if self._settle_ch is None or self._settle_ch.conn is not self._conn or not self._settle_ch.usable:
            assert self._conn is not None
            self._settle_ch = SettleChannel(self._conn)
        return self._settle_ch

    def _settle_detached(
        self, delivery: Delivery, outgoing: Sequence[Outgoing], requeue: bool, future: Future[None]
    ) -> None:
        """Settle a handed-over delivery: publish only (it was acknowledged at the handover)."""
        try:
            if self._ch is None or not self._ch.is_open:
                raise StaleDelivery("not connected to RabbitMQ; the guard copy is still parked")
            for out in outgoing:
                self._send(delivery.queue, out)
            if requeue:
                self._publish_raw("", delivery.queue, delivery.envelope, True)
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            future.set_exception(exc)
            return
        self._detached.discard(delivery.tag)
        if self._restart_consumer is not None and not self._stopping.is_set():
            try:
                self._restart_consumer()
            except Exception:  # the channel is going away: the consume loop reconnects
                log.debug("could not restart the consumer", exc_info=True)
        future.set_result(None)

    def hand_over(self, delivery: Delivery, guard: Outgoing) -> Future[None]:
        future: Future[None] = Future()
        tag: _Tag = delivery.tag

        def work() -> None:
            detached = tag in self._detached
            try:
                if not detached and (tag.generation != self._generation or self._ch is None):
                    raise StaleDelivery(
                        f"the connection of delivery {delivery.envelope.message_id} was lost; "
                        "RabbitMQ delivers it again"
                    )
                if self._ch is None or not self._ch.is_open:
                    raise StaleDelivery("not connected to RabbitMQ")
                self._send(delivery.queue, guard)  # confirmed before the original goes
                if not detached:
                    self._ch.basic_ack(tag.delivery_tag)
                    self._unsettled -= 1
                    self._detached.add(tag)
            except BaseException as exc:  # noqa: BLE001 - reported through the future
                future.set_exception(exc)
                return
            future.set_result(None)
            if not detached and self._restart_consumer is not None and not self._stopping.is_set():
                try:
                    self._restart_consumer()
                except Exception:  # the channel is going away: the consume loop reconnects
                    log.debug("could not restart the consumer", exc_info=True)

        self._call_soon(work, future, "hand over")
        return future

    def _call_soon(self, work: Callable[[], None], future: Future[None], what: str) -> None:
        """Run ``work`` in the connection's thread (pika is not thread-safe), or fail ``future``."""
        conn = self._conn
        try:
            if conn is None:
                raise StaleDelivery("not connected")
            conn.add_callback_threadsafe(work)
        except Exception as exc:
            future.set_exception(StaleDelivery(f"cannot {what}: {exc}"))

    def set_prefetch(self, prefetch: int) -> None:
        def apply() -> None:
            self._prefetch = prefetch
            if self._restart_consumer is not None and not self._stopping.is_set():
                self._restart_consumer()  # RabbitMQ applies a prefetch when a consumer starts

        conn = self._conn
        if conn is not None and conn.is_open:
            conn.add_callback_threadsafe(apply)
        else:
            self._prefetch = prefetch

    def reply_now(self, envelope: Envelope) -> None:
        def send() -> None:
            try:
                self._publish_raw("", envelope.routing_key, envelope, False)
            except Exception:  # best effort by contract
                log.debug("progress reply dropped", exc_info=True)

        conn = self._conn
        try:
            if conn is not None and conn.is_open:
                conn.add_callback_threadsafe(send)
        except Exception:
            log.debug("progress reply dropped", exc_info=True)

    def _give_back(self, tag: _Tag, flush: bool = True) -> None:
        """A settle failed half-way: return the delivery so that it is delivered again.

        ``flush=False`` from a confirm callback, inside pika's I/O loop, which sends the frame.
        """
        if tag.generation == self._generation and self._ch is not None and self._ch.is_open:
            try:
                if flush:
                    self._ch.basic_nack(tag.delivery_tag, requeue=True)
                else:
                    self._ch._impl.basic_nack(tag.delivery_tag, requeue=True)  # noqa: SLF001
                self._unsettled -= 1
            except Exception:  # the channel is going away: RabbitMQ requeues it anyway
                log.debug("could not nack delivery %s", tag.delivery_tag, exc_info=True)

    def _send(self, queue: str, out: Outgoing) -> None:
        """Publish one outgoing message and wait for its confirm (the rare paths: handover)."""
        exchange, key, body, props, mandatory = self._route(queue, out)
        ch = self._ch
        if ch is None:
            raise StaleDelivery("the connection to RabbitMQ was lost")
        try:
            ch.basic_publish(exchange, key, body, props, mandatory=mandatory)
        except pe.UnroutableError:
            raise UnroutableError(key) from None
        except pe.NackError as exc:
            raise BrokerError(f"RabbitMQ refused message {out.envelope.message_id}: {exc}") from exc

    def _route(self, queue: str, out: Outgoing) -> Publish:
        """Where an outgoing message of a delivery from ``queue`` goes, and how."""
        env = out.envelope
        extra: dict[str, Any] = {}
        if out.target is Target.JOBS:
            # A retry goes back to the queue it came from, directly or through a delay queue.
            exchange, key, mandatory = "", self._delay_queue(queue, out.delay) if out.delay > 0 else queue, True
            if out.delay * 1000 > MAX_DELAY_MS:  # longer than one park: re-parked until due
                extra[H_NOT_BEFORE] = int((time.time() + out.delay) * 1000)
        elif out.target is Target.DEAD:
            exchange, key, mandatory = "", DEAD_QUEUE, True
        elif out.target is Target.REPLY:
            # Not mandatory: a client that stopped waiting is not an error.
            exchange, key, mandatory = "", env.routing_key, False
        else:
            exchange, key, mandatory = EVENTS_EXCHANGE, env.routing_key, False
        return exchange, key, env.body, self._wire(exchange, key, env, extra), mandatory

    # --- dead letters -----------------------------------------------------------------------
    def _scan_dead(self, take: str | None, limit: int) -> tuple[list[Envelope], Envelope | None]:
        """Read dead letters on a throwaway channel; closing it puts them back unchanged."""
        ch = self._channel().connection.channel()
        seen: list[Envelope] = []
        taken = None
        try:
            while len(seen) < limit:
                method, props, body = ch.basic_get(DEAD_QUEUE)
                if method is None:
                    break
                assert props is not None and isinstance(body, bytes)
                env = replace(_envelope(method.routing_key, props, body), reply_to=None)
                if take is not None and env.message_id == take:
                    ch.basic_ack(method.delivery_tag or 0)
                    taken = env
                    break
                seen.append(env)
        finally:
            ch.close()
        return seen, taken

    def dead_letters(self, limit: int = 1000) -> list[Envelope]:
        return self._translate(lambda: self._scan_dead(None, limit)[0])

    def take_dead(self, message_id: str) -> Envelope | None:
        return self._translate(lambda: self._scan_dead(message_id, 10**9)[1])

    def purge_dead(self) -> int:
        return self._translate(
            lambda: int(self._channel().queue_purge(DEAD_QUEUE).method.message_count or 0)
        )


class _AmqpInbox(ReplyInbox):
    """Direct reply-to on the broker's own channel (RabbitMQ requires the same channel)."""

    def __init__(self, broker: AmqpBroker) -> None:
        self.broker = broker
        self.address = REPLY_TO
        self._generation = -1
        self._ch: BlockingChannel = broker._channel()
        self._tag = ""
        self.subscribe()
        broker._inboxes.append(self)

    def subscribe(self) -> None:
        """(Re)start consuming replies on the broker's current channel.

        After a reconnect the old consumer is gone with its channel, and RabbitMQ refuses a
        publish with ``reply_to`` on a channel that has none; replies to jobs published before
        the reconnect are lost (the jobs are not).
        """
        if self._generation == self.broker._generation and self._ch.is_open and self._tag:
            return
        broker = self.broker
        self._ch = broker._channel()

        def on_reply(_ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
            if props.correlation_id:
                broker._replies[props.correlation_id] = _envelope(REPLY_TO, props, body)

        self._tag = self._ch.basic_consume(REPLY_TO, on_reply, auto_ack=True)
        self._generation = broker._generation

    def get(self, correlation_id: str, timeout: float | None) -> Envelope | None:
        """Wait for a reply; :class:`BrokerError` once it cannot come any more.

        A reply travels on the connection its job was sent on: after that connection is lost,
        every wait for the job raises (never a raw pika error); jobs sent after the reconnect
        (which the next publish makes) are waited for as usual.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        broker = self.broker
        job_id = correlation_id.rpartition(":")[0] if correlation_id.endswith(":progress") else correlation_id
        while correlation_id not in broker._replies:
            sent_on = broker._reply_generation.get(job_id, self._generation)
            if sent_on != broker._generation or not self._ch.is_open:
                raise self._lost(correlation_id, "the connection it was sent on is gone")
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._ch.connection.process_data_events(time_limit=min(left, 1.0))  # type: ignore[arg-type]
            except Exception as exc:  # pika raises more than connection errors on a dead link
                broker._drop_connection()  # the next publish reconnects
                raise self._lost(correlation_id, str(exc) or type(exc).__name__) from exc
        broker._reply_generation.pop(job_id, None)
        return broker._replies.pop(correlation_id)

    @staticmethod
    def _lost(correlation_id: str, why: str) -> BrokerError:
        return BrokerError(
            f"lost the connection to RabbitMQ while waiting for job {correlation_id} ({why}); "
            "the job itself is safe: check it with `runner dead list` or resubmit"
        )

    def close(self) -> None:
        if self in self.broker._inboxes:
            self.broker._inboxes.remove(self)
        if self._ch.is_open:
            try:
                self._ch.basic_cancel(self._tag)
            except Exception:
                pass

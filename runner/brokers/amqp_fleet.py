"""RabbitMQ transport, fleet part: events, remote control, leadership, records, revocations.

A mixin of :class:`runner.brokers.amqp.AmqpBroker`, kept apart so that the core transport
(connection, topology, publishing, consuming, settling) reads on its own.  It uses the core's
connection and channel through the attributes and methods declared below.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exchange_type import ExchangeType

from runner.broker import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    EVENTS_QUEUE_MAX,
    REVOKED_QUEUE,
    Envelope,
)
from runner.brokers.amqp_wire import CONNECTION_ERRORS, RECORD_ARGS as _RECORD_ARGS, REPLY_TO
from runner.brokers.amqp_wire import envelope_from as _envelope
from runner.errors import BrokerError

log = logging.getLogger(__name__)


class AmqpFleet:
    """Fleet operations over the transport's own connection (see the module docstring)."""

    # Provided by AmqpBroker.
    url: str
    _conn: BlockingConnection | None
    _ch: BlockingChannel | None
    _generation: int
    _stopping: threading.Event
    _leaders: dict[str, Any]
    _consumer: tuple[BlockingChannel, str] | None

    def _channel(self) -> BlockingChannel:
        raise NotImplementedError

    def _translate(self, fn: Callable[[], Any], retry: bool = False) -> Any:
        raise NotImplementedError

    def _reconnect(self, give_up_after: float | None) -> None:
        raise NotImplementedError

    def _publish_raw(
        self, exchange: str, key: str, env: Envelope, mandatory: bool, **headers: Any
    ) -> None:
        raise NotImplementedError

    @staticmethod
    def _props(env: Envelope, **headers: Any) -> pika.BasicProperties:
        raise NotImplementedError

    def _cancel_consumer(self) -> None:
        raise NotImplementedError

    # --- events ---------------------------------------------------------------------------
    def declare_event_queue(
        self, queue: str, patterns: Sequence[str] = ("#",), max_length: int = EVENTS_QUEUE_MAX
    ) -> None:
        def declare() -> None:
            ch = self._channel()
            args = {"x-max-length": max_length, "x-overflow": "drop-head"}
            ch.queue_declare(queue, durable=True, arguments=args)
            for pattern in patterns:
                ch.queue_bind(queue, EVENTS_EXCHANGE, routing_key=pattern)

        self._translate(declare)

    def publish_event(self, envelope: Envelope) -> None:
        self._translate(
            lambda: self._publish_raw(EVENTS_EXCHANGE, envelope.routing_key, envelope, False),
            retry=True,
        )

    def consume_events(
        self, queue: str, on_events: Callable[[list[Envelope]], None], batch: int = 200
    ) -> None:
        self._stopping.clear()
        while not self._stopping.is_set():
            try:
                self._consume_events_once(queue, on_events, batch)
                return
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    return
                log.warning("lost the connection to RabbitMQ (%s); reconnecting", exc)
                self._reconnect(give_up_after=None)
            except (pe.ChannelClosedByBroker, pe.ChannelWrongStateError) as exc:
                self._ch = None
                raise BrokerError(f"RabbitMQ refused to deliver events of {queue}: {exc}") from exc

    def _consume_events_once(
        self, queue: str, on_events: Callable[[list[Envelope]], None], batch: int
    ) -> None:
        ch = self._channel()
        ch.basic_qos(prefetch_count=batch)
        pending: list[tuple[int, Envelope]] = []

        def on_message(
            _ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
        ) -> None:
            pending.append((method.delivery_tag, _envelope(method.routing_key, props, body)))

        self._consumer = (ch, ch.basic_consume(queue, on_message))
        while not self._stopping.is_set():
            # Returns as soon as something arrived; the batch is whatever came meanwhile.
            self._conn.process_data_events(time_limit=0.5)  # type: ignore[union-attr,arg-type]
            if pending:
                on_events([env for _, env in pending])
                ch.basic_ack(pending[-1][0], multiple=True)
                pending.clear()
        self._cancel_consumer()


    # --- remote control -------------------------------------------------------------------
    def broadcast(self, envelope: Envelope, gather: float = 0.0) -> list[Envelope]:
        def send() -> list[Envelope]:
            # A channel of its own: direct reply-to needs the consumer and the publish on the
            # same channel, and the replies of a broadcast must not mix with job replies.
            ch = self._channel().connection.channel()
            replies: list[Envelope] = []
            try:
                ch.exchange_declare(CONTROL_EXCHANGE, ExchangeType.fanout, durable=True)  # type: ignore[arg-type]
                env = replace(envelope, reply_to=None, correlation_id=None)
                if gather > 0:

                    def on_reply(_ch: Any, _m: Any, props: pika.BasicProperties, body: bytes) -> None:
                        if props.correlation_id == envelope.message_id:
                            replies.append(_envelope(REPLY_TO, props, body))

                    ch.basic_consume(REPLY_TO, on_reply, auto_ack=True)
                    env = replace(envelope, reply_to=REPLY_TO, correlation_id=envelope.message_id)
                ch.basic_publish(CONTROL_EXCHANGE, "", env.body, self._props(env))
                deadline = time.monotonic() + gather
                while (left := deadline - time.monotonic()) > 0:
                    ch.connection.process_data_events(time_limit=min(left, 0.5))  # type: ignore[arg-type]
            finally:
                if ch.is_open:
                    ch.close()
            return replies

        return self._translate(send, retry=True)

    def consume_broadcast(
        self,
        consumer: str,
        on_message: Callable[[Envelope], Envelope | None],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._stopping.clear()
        while not self._stopping.is_set():
            try:
                self._consume_broadcast_once(consumer, on_message, on_ready)
                return
            except CONNECTION_ERRORS + (pe.ChannelClosedByBroker, pe.ChannelWrongStateError) as exc:
                if self._stopping.is_set():
                    return
                log.warning("control: lost the connection to RabbitMQ (%s); reconnecting", exc)
                self._reconnect(give_up_after=None)

    def _consume_broadcast_once(
        self,
        consumer: str,
        on_message: Callable[[Envelope], Envelope | None],
        on_ready: Callable[[], None] | None,
    ) -> None:
        ch = self._channel()
        ch.exchange_declare(CONTROL_EXCHANGE, ExchangeType.fanout, durable=True)  # type: ignore[arg-type]
        # Exclusive: it lives as long as this connection; a stale command is of no use later.
        queue = f"runner.control.{consumer}.{uuid.uuid4().hex[:8]}"
        ch.queue_declare(queue, exclusive=True, auto_delete=True, arguments={"x-message-ttl": 60_000})
        ch.queue_bind(queue, CONTROL_EXCHANGE)

        def on_msg(_ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            env = _envelope(method.routing_key, props, body)
            try:
                reply = on_message(env)
            except Exception:  # a bad command must not stop remote control
                log.exception("control message %s failed", env.message_id)
                reply = None
            if reply is not None and env.reply_to:
                reply = replace(reply, routing_key=env.reply_to, correlation_id=env.correlation_id)
                self._publish_raw("", env.reply_to, reply, False)
            ch.basic_ack(method.delivery_tag)

        self._consumer = (ch, ch.basic_consume(queue, on_msg))
        if on_ready is not None:
            on_ready()
        while not self._stopping.is_set():
            self._conn.process_data_events(time_limit=0.5)  # type: ignore[union-attr,arg-type]
        self._cancel_consumer()


    # --- leadership and records (runner beat) ----------------------------------------------
    def acquire_leader(self, name: str, ttl: float = 10.0) -> bool:
        # An exclusive queue lives exactly as long as the connection that declared it, so
        # RabbitMQ itself hands the lock over when the holder's connection dies; ttl is unused.
        def attempt() -> bool:
            ch = self._channel()
            if self._leaders.get(name) == self._generation:
                ch.connection.process_data_events(time_limit=0)  # heartbeats; fails if gone
                return True
            probe = ch.connection.channel()  # a refusal (405) closes the channel it came on
            try:
                probe.queue_declare(name, exclusive=True, auto_delete=True)
            except pe.ChannelClosedByBroker as exc:
                if exc.reply_code == 405:  # RESOURCE_LOCKED: another connection holds it
                    return False
                raise
            probe.close()
            self._leaders[name] = self._generation
            return True

        return bool(self._translate(attempt, retry=True))

    def release_leader(self, name: str) -> None:
        if self._leaders.pop(name, None) == self._generation and self._ch is not None:
            self._translate(lambda: self._channel().queue_delete(name))

    def load_record(self, name: str) -> bytes | None:
        def read() -> bytes | None:
            ch = self._channel().connection.channel()  # closing it puts the message back
            try:
                ch.queue_declare(name, durable=True, arguments=_RECORD_ARGS)
                method, _props, body = ch.basic_get(name)
                return None if method is None else bytes(body)  # type: ignore[arg-type]
            finally:
                if ch.is_open:
                    ch.close()

        return self._translate(read, retry=True)  # type: ignore[no-any-return]

    def store_record(self, name: str, body: bytes) -> None:
        def store() -> None:
            ch = self._channel()
            ch.queue_declare(name, durable=True, arguments=_RECORD_ARGS)
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            ch.basic_publish("", name, body, props, mandatory=True)

        self._translate(store, retry=True)

    # --- revocations ----------------------------------------------------------------------
    def record_revocations(self, job_ids: Sequence[str], ttl: float) -> None:
        until = time.time() + ttl
        body = json.dumps({"ids": list(job_ids), "until": until}).encode()
        env = Envelope(body=body, message_id=uuid.uuid4().hex, type="revoke", routing_key=REVOKED_QUEUE)

        def record() -> None:
            ch = self._channel()
            ch.queue_declare(REVOKED_QUEUE, durable=True)
            props = self._props(env)
            props.expiration = str(max(1, int(ttl * 1000)))  # RabbitMQ drops it when it lapses
            ch.basic_publish("", REVOKED_QUEUE, body, props, mandatory=True)

        self._translate(record, retry=True)

    def revocations(self) -> dict[str, float]:
        def read() -> dict[str, float]:
            # Read without acknowledging on a throwaway channel: closing it puts them all back.
            ch = self._channel().connection.channel()
            out: dict[str, float] = {}
            now = time.time()
            try:
                ch.queue_declare(REVOKED_QUEUE, durable=True)
                for _ in range(1_000_000):
                    method, _props, body = ch.basic_get(REVOKED_QUEUE)
                    if method is None:
                        break
                    try:
                        record = json.loads(body or b"")
                        until = float(record["until"])
                        ids = [str(i) for i in record["ids"]]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if until > now:
                        out.update((i, max(until, out.get(i, 0.0))) for i in ids)
            finally:
                if ch.is_open:
                    ch.close()
            return out

        return self._translate(read, retry=True)

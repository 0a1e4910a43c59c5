"""Settling deliveries with pipelined publisher confirms (the worker's outcome path).

pika's blocking channel waits for each publisher confirm before it returns: the connection's
thread would stop for a round trip on every job's result, and every other slot's result and
every new delivery would wait behind it.  Outcomes (reply, retry, dead letter) therefore go
out on a confirm-mode channel of their own, driven through pika's asynchronous channel under
the blocking adapter (``BlockingChannel._impl``, as :mod:`runner.brokers.amqp_batch` does):
publishing only writes frames, and the broker's ``Basic.Ack`` (one may cover many delivery
tags: ``multiple``) calls back.

The no-loss rule is unchanged: a delivery is acknowledged only from that callback, once
*every* message of its outcome is confirmed.  A message RabbitMQ returns (``mandatory``, no
bound queue) or refuses (``Basic.Nack``), or a channel that closes first, fails the settle:
the delivery is given back (``basic_nack`` with requeue) and RabbitMQ delivers it again.
Everything here runs in the connection's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingConnection

from runner.brokers.amqp_wire import StaleDelivery
from runner.errors import BrokerError, UnroutableError

# exchange, routing key, body, properties, mandatory
Publish = tuple[str, str, bytes, pika.BasicProperties, bool]
Done = Callable[[BaseException | None], None]


class _Settlement:
    """One delivery's outcome: how many of its messages are still unconfirmed, and why it failed."""

    __slots__ = ("done", "left", "error")

    def __init__(self, done: Done, left: int) -> None:
        self.done = done
        self.left = left
        self.error: BaseException | None = None


class SettleChannel:
    """A confirm-mode channel whose confirms call back per delivery instead of being awaited."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.channel = conn.channel()
        self._impl: Any = self.channel._impl  # noqa: SLF001 - see the module docstring
        self._sent = 0  # delivery tags are numbered per channel from 1
        # tag -> (its settlement, (routing key, message id) when mandatory and not yet returned)
        self._tags: dict[int, tuple[_Settlement, tuple[str, str | None] | None]] = {}
        ready: list[bool] = []
        self._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                    callback=lambda _frame: ready.append(True))
        self._impl.add_on_return_callback(self._on_return)
        self._impl.add_on_close_callback(self._on_close)
        while not ready:  # the Confirm.SelectOk; I/O only when called from a callback
            if not self.usable:
                raise StaleDelivery("the settle channel closed while it was being opened")
            conn.process_data_events(time_limit=0.05)

    @property
    def usable(self) -> bool:
        return bool(self.channel.is_open and self.conn.is_open)

    @property
    def pending(self) -> int:
        """Messages published and not yet confirmed."""
        return len(self._tags)

    def send(self, messages: Sequence[Publish], done: Done) -> None:
        """Publish ``messages``; ``done(None)`` once all are confirmed, ``done(error)`` if not."""
        if not messages:
            done(None)
            return
        settlement = _Settlement(done, len(messages))
        for exchange, key, body, props, mandatory in messages:
            self._impl.basic_publish(exchange, key, body, props, mandatory)
            self._sent += 1
            self._tags[self._sent] = (settlement, (key, props.message_id) if mandatory else None)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = sorted(t for t in self._tags if t <= method.delivery_tag)
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._tags else []
        for tag in tags:
            settlement, _ = self._tags.pop(tag)
            if not acked and settlement.error is None:
                settlement.error = BrokerError("RabbitMQ refused the outcome (nack); delivered again")
            settlement.left -= 1
            if settlement.left == 0:
                settlement.done(settlement.error)

    def _on_return(self, _channel: Any, method: Any, props: pika.BasicProperties, _body: bytes) -> None:
        # RabbitMQ returns a message before it confirms it, and in publishing order: the
        # returned one is the oldest unconfirmed mandatory message with that key and id.
        wanted = (method.routing_key, props.message_id)
        for tag in sorted(self._tags):
            settlement, key = self._tags[tag]
            if key == wanted:
                self._tags[tag] = (settlement, None)
                if settlement.error is None:
                    settlement.error = UnroutableError(method.routing_key)
                return

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.fail(StaleDelivery(f"the settle channel closed ({reason}); RabbitMQ delivers it again"))

    def fail(self, error: BaseException) -> None:
        """Fail every settle still waiting for a confirm (the channel or connection is gone)."""
        waiting = {id(s): s for s, _ in self._tags.values()}
        self._tags.clear()
        for settlement in waiting.values():
            settlement.done(settlement.error or error)

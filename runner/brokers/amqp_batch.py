"""Publishing many jobs with their publisher confirms pipelined (``Client.submit_many``).

pika's blocking channel waits for each confirm before it sends the next message: one round
trip per job.  This channel of its own is driven through pika's asynchronous channel under the
blocking adapter (``BlockingChannel._impl``, the object ``BlockingChannel`` itself drives): all
messages go out at once, then the connection's I/O loop runs until the broker has acknowledged
every delivery tag (one ``Basic.Ack`` may cover many: ``multiple``).  The guarantee is the one
``publish`` gives: nothing is reported accepted before its confirm, and a message RabbitMQ
returns (``mandatory``, no bound queue) or refuses (``Basic.Nack``) is an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingConnection

from runner.broker import JOBS_EXCHANGE, Envelope
from runner.errors import BrokerError, UnroutableError

CONFIRM_TIMEOUT = 60.0


class ConfirmBatch:
    """A confirm-mode channel whose confirms are collected, not waited for one by one."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.channel = conn.channel()
        self._impl: Any = self.channel._impl  # noqa: SLF001 - see the module docstring
        self._sent = 0  # delivery tags are numbered per channel from 1
        self._pending: set[int] = set()  # tags sent, not yet confirmed
        self._confirmed: dict[int, bool] = {}  # tag -> acknowledged (False: nacked)
        self._returned: set[str] = set()  # message ids RabbitMQ returned as unroutable
        ready: list[bool] = []
        self._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                    callback=lambda _frame: ready.append(True))
        self._impl.add_on_return_callback(self._on_return)
        self._run_until(lambda: bool(ready), "confirm mode")

    @property
    def usable(self) -> bool:
        return bool(self.channel.is_open and self.conn.is_open)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            self._pending.discard(tag)
            self._confirmed[tag] = acked

    def _on_return(self, _channel: Any, _method: Any, props: pika.BasicProperties, _body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def _run_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while not done():
            if not self.usable:
                raise BrokerError(f"the channel closed while waiting for {what}")
            if time.monotonic() > deadline:
                raise BrokerError(f"RabbitMQ did not confirm {what} within {CONFIRM_TIMEOUT:g}s")
            self.conn.process_data_events(time_limit=0.05)

    def publish(
        self, items: Sequence[tuple[Envelope, dict[str, Any]]],
        props: Callable[..., pika.BasicProperties],
    ) -> None:
        """Send every ``(envelope, extra headers)`` to ``runner.jobs``; return once all confirmed."""
        first = self._sent + 1
        for envelope, headers in items:
            self._impl.basic_publish(exchange=JOBS_EXCHANGE, routing_key=envelope.routing_key,
                                     body=envelope.body, properties=props(envelope, **headers),
                                     mandatory=True)
            self._sent += 1
            self._pending.add(self._sent)
        last = self._sent
        self._run_until(lambda: all(t in self._confirmed for t in range(first, last + 1)),
                        f"{len(items)} messages")
        refused = [t for t in range(first, last + 1) if not self._confirmed.pop(t)]
        returned = [env for env, _ in items if env.message_id in self._returned]
        self._returned.difference_update(env.message_id for env, _ in items)
        if returned:
            raise UnroutableError(returned[0].routing_key)
        if refused:
            raise BrokerError(f"RabbitMQ refused {len(refused)} of {len(items)} messages (nack)")

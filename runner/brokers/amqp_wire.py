"""What the RabbitMQ transport's parts share: header names, limits, delivery tags, envelopes."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any

import pika
import pika.data
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingConnection

from runner.broker import Envelope
from runner.errors import BrokerError, MessageError
from runner.retry import retrying_call

H_NOT_BEFORE = "x-runner-not-before"  # epoch milliseconds
H_DELIVERIES = "x-runner-deliveries"
H_DEAD_REASON = "x-runner-dead-reason"
H_ROUTING_KEY = "x-runner-routing-key"  # original key of a message sent straight to a queue
REPLY_TO = "amq.rabbitmq.reply-to"
MAX_TTL_MS = 2**31 - 1
# The longest single park (~23 days): the delay queue's x-expires (TTL + 10 min) must stay
# within 2**31-1 ms, or RabbitMQ could delete the queue with the message still in it.
MAX_DELAY_MS = 2_000_000_000
CONNECTION_ERRORS = (pe.AMQPConnectionError, pe.ConnectionClosed, pe.StreamLostError, OSError)
# A record is a queue holding only its newest message (last value wins).
RECORD_ARGS = {"x-max-length": 1, "x-overflow": "drop-head"}


def connection_reason(exc: BaseException) -> str:
    """What went wrong connecting, in words: pika's own errors often print as nothing."""
    # pika wraps the cause: its text is in the repr of the error's arguments
    text = " ".join(repr(a) for a in exc.args) if isinstance(exc, pe.AMQPConnectionError) else ""
    text = text or str(exc) or type(exc).__name__
    for cause, words in (("ConnectionRefusedError", "connection refused"),
                         ("TimeoutError", "timed out"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host name"),
                         ("Temporary failure in name resolution", "host name lookup failed"),
                         ("No route to host", "no route to host")):
        if cause in text:
            return words
    return text


def connect_with_retries(
    params: pika.URLParameters, where: str, give_up_after: float | None,
    cancel: threading.Event | None = None,
) -> BlockingConnection:
    """A connection to RabbitMQ, retried with backoff while the broker may come back.

    Refused credentials and an unknown vhost are permanent: they fail at once, never retried.
    ``cancel`` (a stop request) ends the retries at once.

    Raises:
        BrokerError: the reason in words (``connection refused``, ``refused the credentials``).
    """
    def attempt() -> BlockingConnection:
        try:
            return BlockingConnection(params)
        except pe.ProbableAuthenticationError as exc:
            raise BrokerError(f"RabbitMQ refused the credentials in {where}") from exc
        except pe.ProbableAccessDeniedError as exc:
            raise BrokerError(f"RabbitMQ refused access to the vhost of {where} (does it exist, "
                              f"and may this user use it?)") from exc

    try:
        return retrying_call(attempt, CONNECTION_ERRORS, f"connect to {where}", 10.0,
                             give_up_after, cancel, connection_reason)
    except CONNECTION_ERRORS as exc:
        if cancel is not None and cancel.is_set():
            raise BrokerError(f"stopped while waiting for RabbitMQ at {where}") from exc
        raise BrokerError(f"cannot connect to RabbitMQ at {where}: {connection_reason(exc)}") from exc


class StaleDelivery(BrokerError):
    """The connection a delivery came on is gone; the broker delivers the message again."""


@dataclass(frozen=True)
class Tag:
    delivery_tag: int
    generation: int


def delay_bucket_ms(delay: float, floor: bool = False) -> int:
    """Round a delay to two significant figures, so retries with jitter share few queues.

    With ``floor`` it rounds down, for a job that must not start early: its copy comes back at
    most 10% early and is parked again for the rest.  Never more than :data:`MAX_DELAY_MS`:
    a longer delay is parked several times.
    """
    ms = max(1, int(delay * 1000))
    digits = len(str(ms))
    if digits > 2:
        scale = 10 ** (digits - 2)
        ms = (ms // scale if floor else round(ms / scale)) * scale
    return min(MAX_DELAY_MS, ms)


def delivery_count(env: Envelope) -> int:
    """The ``x-runner-deliveries`` count; anything but a non-negative integer is malformed."""
    value = env.headers.get(H_DELIVERIES, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(f"header {H_DELIVERIES}: expected a count, got {type(value).__name__}")
    return value


def envelope_from(routing_key: str, props: pika.BasicProperties, body: bytes) -> Envelope:
    """An envelope from what pika delivers; restores the key of a message sent to a queue."""
    headers = dict(props.headers or {})
    return Envelope(
        body=body,
        message_id=props.message_id or "",
        type=props.type or "",
        routing_key=str(headers.pop(H_ROUTING_KEY, routing_key)),
        headers=headers,
        priority=props.priority or 0,
        reply_to=props.reply_to,
        correlation_id=props.correlation_id,
        timestamp=props.timestamp,
        content_type=props.content_type or "",
    )


def _tolerate_timestamps() -> None:
    """Keep an AMQP timestamp header that no date can hold as its integer.

    pika turns a timestamp header (type ``T``) into a ``datetime``; any producer can send one
    past the year 9999 (2**62), and pika's frame parser then raises, drops the connection and
    gets the same message again, for ever.  Decoded as the plain integer, it reaches the
    worker, whose checks refuse it where it matters.  pika offers no hook for this, so its
    decoder is wrapped once, here, the only place that knows pika's wire details.
    """
    original = pika.data.decode_value
    if getattr(original, "runner_tolerant", False):
        return

    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        try:
            return original(encoded, offset)
        except (OverflowError, OSError, ValueError):
            if encoded[offset : offset + 1] != b"T":
                raise
            return struct.unpack_from(">Q", encoded, offset + 1)[0], offset + 9

    decode_value.runner_tolerant = True  # type: ignore[attr-defined]
    pika.data.decode_value = decode_value


_tolerate_timestamps()

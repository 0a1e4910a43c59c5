"""What the RabbitMQ transport's parts share: header names, limits, delivery tags, envelopes."""

from __future__ import annotations

from dataclasses import dataclass

import pika
import pika.exceptions as pe

from runner.broker import Envelope
from runner.errors import BrokerError

H_NOT_BEFORE = "x-runner-not-before"  # epoch milliseconds
H_DELIVERIES = "x-runner-deliveries"
H_ROUTING_KEY = "x-runner-routing-key"  # original key of a message sent straight to a queue
REPLY_TO = "amq.rabbitmq.reply-to"
MAX_TTL_MS = 2**31 - 1
# The longest single park (~23 days): the delay queue's x-expires (TTL + 10 min) must stay
# within 2**31-1 ms, or RabbitMQ could delete the queue with the message still in it.
MAX_DELAY_MS = 2_000_000_000
CONNECTION_ERRORS = (pe.AMQPConnectionError, pe.ConnectionClosed, pe.StreamLostError, OSError)
# A record is a queue holding only its newest message (last value wins).
RECORD_ARGS = {"x-max-length": 1, "x-overflow": "drop-head"}


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

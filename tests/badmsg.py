"""Building and publishing malformed job messages, as a buggy or hostile producer would.

The broker's own ``publish`` is used wherever it can carry the value; a raw pika publish (with a
hand-encoded header) for what no well-behaved client can send, such as an AMQP timestamp past
the year 9999.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from typing import Any

import pika
import pika.data

from runner.broker import JOBS_EXCHANGE, Envelope


class RawValue(bytes):
    """A header value already encoded as an AMQP field (type byte + payload)."""


def timestamp_field(seconds: int) -> RawValue:
    return RawValue(b"T" + struct.pack(">Q", seconds))


_encode = pika.data.encode_value


def _encode_raw(pieces: list[bytes], value: Any) -> int:
    if isinstance(value, RawValue):
        pieces.append(bytes(value))
        return len(value)
    return _encode(pieces, value)


pika.data.encode_value = _encode_raw  # test producers only: lets a header carry any AMQP field


def body(job: str, params: dict[str, Any], route: str, **fields: Any) -> dict[str, Any]:
    """A protocol v1 job body (valid unless ``fields`` spoil it)."""
    return {
        "protocol": 1, "id": uuid.uuid4().hex, "job": job, "route": route, "params": params,
        "files": {}, "options": {"timeout": None, "retries": None, "priority": 0},
        "created_at": time.time(), **fields,
    }


def envelope(
    obj: dict[str, Any] | bytes, route: str, job: str = "noop", headers: dict[str, Any] | None = None,
    raw: dict[str, str] | None = None, reply_to: str | None = None, **props: Any,
) -> Envelope:
    """An envelope for ``obj``; ``raw`` replaces quoted placeholders by raw JSON text.

    ``{"params": {"n": "@big"}}`` with ``raw={"@big": "1" * 5000}`` gives a body no JSON encoder
    would write: that is how NaN, 1e999 or a 5,000-digit number reach a worker.
    """
    if isinstance(obj, bytes):
        data, msg_id = obj, uuid.uuid4().hex
    else:
        text = json.dumps(obj)
        for mark, value in (raw or {}).items():
            text = text.replace(json.dumps(mark), value)
        data, msg_id = text.encode(), str(obj.get("id", uuid.uuid4().hex))
    return Envelope(
        body=data, message_id=msg_id, type=job, routing_key=f"{route}.{job}",
        headers={"x-runner-protocol": 1, "x-runner-attempt": 1, **(headers or {})},
        reply_to=reply_to, correlation_id=msg_id if reply_to else None, **props,
    )


def publish_raw(url: str, env: Envelope) -> None:
    """Publish through pika itself, so that headers may hold :class:`RawValue` fields."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(
            content_type=env.content_type, delivery_mode=2, message_id=env.message_id,
            type=env.type, headers=dict(env.headers), timestamp=env.timestamp,
            priority=env.priority,
        )
        ch.basic_publish(JOBS_EXCHANGE, env.routing_key, env.body, props, mandatory=True)
    finally:
        conn.close()


def dead_letter(broker: Any, message_id: str) -> Envelope | None:
    """The dead letter with this id (taken off the queue), or None."""
    return broker.take_dead(message_id)

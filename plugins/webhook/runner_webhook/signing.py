"""Webhook signatures, as the Standard Webhooks spec defines them (standardwebhooks.com).

Each POST carries ``webhook-id`` (the delivery id, the same on every try), ``webhook-timestamp``
(unix seconds of this try) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``"<id>.<timestamp>." + body``), so a receiver verifies with an off-the-shelf library such as
``standardwebhooks``.  The HMAC key is the secret file's content; receivers that want the
``whsec_`` form of it use :func:`receiver_secret`.

The older ``Runner-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` is still
sent and verified for one release (deprecated in 0.2, gone in 0.3), so existing receivers keep
working while they move.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Mapping

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

HEADER = "Runner-Signature"  # the deprecated scheme's header
TOLERANCE = 300.0


def receiver_secret(secret: bytes) -> str:
    """The secret in the ``whsec_<base64>`` form Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(secret).decode()


def headers(secret: bytes, delivery_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The signature headers of one try of a delivery: the standard ones and the deprecated one."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(delivery_id, moment, body),
        HEADER: signature(secret, timestamp, body),
    }


def verify_request(secret: bytes, request_headers: Mapping[str, str], body: bytes) -> bool:
    """Whether a received request is signed with ``secret``: Standard Webhooks headers, or the
    deprecated ``Runner-Signature`` when those are absent."""
    lowered = {k.lower(): v for k, v in request_headers.items()}
    if "webhook-signature" in lowered:
        try:
            Webhook(secret).verify(body, lowered, json_parse=False)
        except WebhookVerificationError:
            return False
        return True
    return verify(secret, lowered.get(HEADER.lower(), ""), body)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The deprecated ``Runner-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: bytes, header: str, body: bytes, tolerance: float = TOLERANCE, now: float | None = None
) -> bool:
    """Whether a deprecated ``Runner-Signature`` header signs ``body``, at most ``tolerance`` s ago."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split(",v1=", 1)[1]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))

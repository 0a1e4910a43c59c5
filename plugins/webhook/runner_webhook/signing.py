"""Webhook signatures: ``Runner-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The HMAC key is the shared secret; the signed bytes are the timestamp in decimal, a full stop,
then the exact request body: ``b"1700000000." + body``.  Signing the timestamp lets a receiver
refuse a replayed request; comparing in constant time keeps the secret from leaking through
timing.  docs/webhooks.md shows a receiver that does not need runner installed.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Runner-Signature"
TOLERANCE = 300.0


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: bytes, header: str, body: bytes, tolerance: float = TOLERANCE, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, at most ``tolerance`` seconds ago."""
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

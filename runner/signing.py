"""Ed25519-signed job messages: producers sign, workers verify with public keys only.

A compromised worker holds no key that can mint jobs.  The signature covers the whole envelope a
worker acts on: the body (job, params, options, the input files and their sha256), content type,
routing key, job id, job type, issued-at and expiry, behind a domain-separation tag.  It does
not cover the attempt number and attempt history, which the worker changes when it re-publishes
a job for a retry (a retry carries the producer's original signature), nor the reply address,
which RabbitMQ rewrites for direct reply-to.

Headers (docs/security.md): ``x-runner-sig`` (base64), ``x-runner-sig-kid``, ``x-runner-sig-alg``
(``ed25519``), ``x-runner-sig-digest`` (sha256 of the signed bytes, only to tell tampering from
forgery in the dead-letter reason), ``x-runner-issued-at`` and ``x-runner-expires`` (epoch ms).

Replays: a worker remembers, until the signature expires, the highest attempt of each signed job
it has settled, and refuses a delivery of that job at or below that attempt.  The memory is per
worker process: a captured message can still be replayed to another worker, or after a restart,
within its validity (``ttl``), at most as many times as the job type's retry policy allows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import os
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runner.broker import Envelope, topic_matches
from runner.errors import ConfigError, MessageError

log = logging.getLogger(__name__)
ALG = "ed25519"
DOMAIN = b"runner-job-signature-v1"
H_SIG, H_KID, H_ALG = "x-runner-sig", "x-runner-sig-kid", "x-runner-sig-alg"
H_DIGEST, H_ISSUED, H_EXPIRES = "x-runner-sig-digest", "x-runner-issued-at", "x-runner-expires"
SIGNATURE_HEADERS = (H_SIG, H_KID, H_ALG, H_DIGEST, H_ISSUED, H_EXPIRES)
DEFAULT_TTL = 24 * 3600.0
DEFAULT_SKEW = 300.0
MAX_KID = 64
REPLAY_CACHE_SIZE = 200_000


class SignatureError(MessageError):
    """A job message failed verification; the text is the dead-letter reason."""


def signed_bytes(env: Envelope, kid: str, issued_ms: int, expires_ms: int) -> bytes:
    """The exact bytes an Ed25519 signature covers (length-prefixed fields, unambiguous)."""
    fields = (
        DOMAIN, ALG.encode(), kid.encode(), env.content_type.encode(), env.routing_key.encode(),
        env.message_id.encode(), env.type.encode(), str(issued_ms).encode(), str(expires_ms).encode(),
        hashlib.sha256(env.body).digest(),
    )
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def generate(out: Path, kid: str) -> tuple[Path, Path]:
    """Write ``KID.key`` (private, mode 0600) and ``KID.pub`` in ``out``; never overwrite."""
    _check_kid(kid, "--kid")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_path, pub_path = out / f"{kid}.key", out / f"{kid}.pub"
    for path, data, mode in ((key_path, private, 0o600), (pub_path, public, 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise ConfigError(f"{path} exists; choose another --kid or --out") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return key_path, pub_path


class Signer:
    """Signs job envelopes with one private key (producers: client, API, scheduler)."""

    def __init__(self, key: Ed25519PrivateKey, kid: str, ttl: float = DEFAULT_TTL) -> None:
        self.key = key
        self.kid = _check_kid(kid, "key_id")
        self.ttl = ttl

    @classmethod
    def from_file(cls, path: Path, kid: str | None = None, ttl: float = DEFAULT_TTL) -> Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key, kid or path.stem, ttl)

    def sign(self, env: Envelope, delay: float = 0.0, now: float | None = None) -> Envelope:
        """Return ``env`` with signature headers; valid from now until ``delay + ttl`` later."""
        issued = int((time.time() if now is None else now) * 1000)
        expires = issued + int((max(delay, 0.0) + self.ttl) * 1000)
        data = signed_bytes(env, self.kid, issued, expires)
        return env.with_headers(**{
            H_SIG: base64.b64encode(self.key.sign(data)).decode(), H_KID: self.kid, H_ALG: ALG,
            H_DIGEST: hashlib.sha256(data).hexdigest(), H_ISSUED: issued, H_EXPIRES: expires,
        })


@dataclass(frozen=True)
class Signed:
    """A verified signature: who signed, and until when it is valid."""

    kid: str
    issued_ms: int
    expires_ms: int


class ReplayCache:
    """Highest settled attempt per signed job, until the signature expires (in memory)."""

    def __init__(self, limit: int = REPLAY_CACHE_SIZE) -> None:
        self._seen: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.limit = limit

    def seen(self, key: tuple[str, str, int]) -> int:
        with self._lock:
            return self._seen.get(key, (0, 0))[0]

    def forget(self, key: tuple[str, str, int], attempt: int) -> None:
        with self._lock:
            seen, expires = self._seen.get(key, (0, 0))
            if seen == attempt:
                self._seen[key] = (attempt - 1, expires)

    def remember(self, key: tuple[str, str, int], attempt: int, expires_ms: int) -> None:
        with self._lock:
            previous = self._seen.get(key, (0, 0))[0]
            self._seen[key] = (max(previous, attempt), expires_ms)
            if len(self._seen) > self.limit:
                now = int(time.time() * 1000)
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
                while len(self._seen) > self.limit:  # all still valid: forget the oldest
                    self._seen.pop(next(iter(self._seen)))


class Verifier:
    """Checks job envelopes against trusted public keys, the worker's bindings and the clock."""

    def __init__(
        self, keys: Mapping[str, Ed25519PublicKey], bindings: Sequence[str],
        skew: float = DEFAULT_SKEW, replays: ReplayCache | None = None,
    ) -> None:
        if not keys:
            raise ConfigError("[signing] trusted: no public keys")
        self.keys = dict(keys)
        self.bindings = tuple(bindings)
        self.skew_ms = int(skew * 1000)
        self.replays = replays or ReplayCache()

    def verify(self, env: Envelope, attempt: int, now: float | None = None) -> Signed:
        """Verify before anything decodes the body.

        Raises:
            SignatureError: with a reason that starts with one of ``unsigned``, ``wrong key``,
                ``tampered``, ``forged``, ``expired``, ``not yet valid``, ``replayed``,
                ``wrongly routed``.
        """
        h = env.headers
        sig, kid = h.get(H_SIG), h.get(H_KID)
        if sig is None and kid is None:
            raise SignatureError("unsigned: this worker runs only signed jobs")
        if not isinstance(kid, str) or not isinstance(sig, str) or len(sig) > 200:
            raise SignatureError("forged: malformed signature headers")
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"wrong key: key id {kid[:MAX_KID]!r} is not trusted by this worker")
        if h.get(H_ALG) != ALG:
            raise SignatureError(f"forged: algorithm {str(h.get(H_ALG))[:20]!r} is not {ALG}")
        issued, expires = h.get(H_ISSUED), h.get(H_EXPIRES)
        if not isinstance(issued, int) or not isinstance(expires, int) or isinstance(issued, bool) \
                or isinstance(expires, bool):
            raise SignatureError("forged: issued-at and expiry must be integers")
        data = signed_bytes(env, kid, issued, expires)
        try:
            key.verify(base64.b64decode(sig, validate=True), data)
        except (InvalidSignature, binascii.Error, ValueError):
            if h.get(H_DIGEST) not in (None, hashlib.sha256(data).hexdigest()):
                raise SignatureError("tampered: the message changed after it was signed") from None
            raise SignatureError(f"forged: the signature does not verify with key {kid!r}") from None
        now_ms = int((time.time() if now is None else now) * 1000)
        if now_ms > expires:
            raise SignatureError(f"expired: the signature expired {(now_ms - expires) / 1000:.0f}s ago")
        if issued > now_ms + self.skew_ms:
            raise SignatureError("not yet valid: issued in the future (check the clocks)")
        if not any(topic_matches(b, env.routing_key) for b in self.bindings):
            raise SignatureError(
                f"wrongly routed: routing key {env.routing_key!r} is not bound to this queue"
            )
        if attempt <= self.replays.seen((kid, env.message_id, issued)):
            raise SignatureError(f"replayed: job {env.message_id} attempt {attempt} already ran here")
        return Signed(kid, issued, expires)

    def settled(self, env: Envelope, signed: Signed, attempt: int) -> None:
        """Record that this attempt of the job is done, so a copy of it is a replay."""
        self.replays.remember((signed.kid, env.message_id, signed.issued_ms), attempt, signed.expires_ms)

    def unsettled(self, env: Envelope, signed: Signed, attempt: int) -> None:
        """Undo :meth:`settled` when the outcome could not be published: the broker delivers
        this attempt again, and that delivery is not a replay."""
        self.replays.forget((signed.kid, env.message_id, signed.issued_ms), attempt)


def signer_from_settings(table: Mapping[str, Any], base: Path) -> Signer | None:
    """A :class:`Signer` from ``[signing] key`` (and ``key_id``, ``ttl``), or ``None``."""
    from runner.config import parse_duration

    if not table.get("key"):
        return None
    ttl = parse_duration(table.get("ttl", DEFAULT_TTL), "[signing] ttl")
    return Signer.from_file(base / str(table["key"]), table.get("key_id"), ttl)


def verifier_from_settings(table: Mapping[str, Any], base: Path, bindings: Sequence[str]) -> Verifier | None:
    """A :class:`Verifier` from ``[signing] trusted = {kid = "file.pub"}``, or ``None``."""
    from runner.config import parse_duration

    trusted = table.get("trusted")
    if not trusted:
        return None
    if not isinstance(trusted, Mapping):
        raise ConfigError('[signing] trusted: expected a table of key id = "public key file"')
    keys = {}
    for kid, path in trusted.items():
        _check_kid(str(kid), "[signing] trusted")
        file = base / str(path)
        try:
            key = serialization.load_pem_public_key(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the public key {file}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{file} is not an Ed25519 public key")
        keys[str(kid)] = key
    skew = parse_duration(table.get("skew", DEFAULT_SKEW), "[signing] skew")
    return Verifier(keys, bindings, skew)


def _check_kid(kid: str, where: str) -> str:
    if not kid or len(kid) > MAX_KID or not all(c.isalnum() or c in "-_." for c in kid):
        raise ConfigError(f"{where}: key id {kid!r} must be 1-{MAX_KID} letters, digits, - _ .")
    return kid



def refuse_unsigned(settings: Any, url: str | None = None) -> None:
    """Refuse to run unsigned jobs from a broker that is not on this host.

    Checked by ``runner worker`` before it connects (a broker that cannot be reached would be
    waited for), and by the worker itself when signing is off.

    Raises:
        ConfigError: no ``[signing.trusted]``, a broker off this host (``url``, default the
            configured one), and no ``allow_unsigned``.
    """
    if settings.allow_unsigned or on_this_host(url or settings.broker_url):
        return
    if url is None and verifier_from_settings(
        settings.signing, settings.base_dir("signing"), settings.effective_bindings
    ) is not None:
        return
    raise ConfigError(
        "message signing is off ([signing.trusted] is not set) and the broker is not on this "
        "host: anyone who can publish to it could run jobs here. Set up signing (runner "
        "keygen), or start the worker with --allow-unsigned"
    )


def on_this_host(url: str) -> bool:
    """Whether the broker at ``url`` is reachable from this host only (loopback or a file)."""
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

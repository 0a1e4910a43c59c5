"""The ``http`` job itself; it runs in the job's child interpreter, inside the sandbox.

One attempt makes up to ``tries`` requests in place (tenacity, exponential backoff with
jitter): connection errors, 408, 429 and 5xx are tried again, honouring ``Retry-After``.  A wait
longer than ``max_wait`` is not slept here: the job raises :class:`runner.Retry` with that
delay, so the broker holds the job and no slot is kept busy.  Any other status outside the
expected ones fails at once (:class:`runner.Reject`) with the status and body in the error.
Redirects are not followed: a 3xx is a response like any other (and a credential never
travels to a host it was not configured for).  Loopback, private and link-local addresses are
refused unless ``allowed_hosts`` names the host, checked after resolution, and the request goes
to the address that was checked (:mod:`runner_http.address`).
"""

from __future__ import annotations

import base64
import email.utils
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tenacity

from runner import JobContext, Reject, Retry
from runner_http.address import checked_address, pinned_handlers
from runner_http.config import host_allowed

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
ERROR_BODY = 2000  # characters of a failed response's body quoted in the error


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool


class Transient(Exception):
    """A try that may work if repeated; ``retry_after`` is the server's own wish, in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as an HTTPError carrying the response


def request(
    ctx: JobContext,
    url: str,
    method: str = "GET",
    header: list[str] | None = None,
    json_body: str | None = None,
    expect: list[int] | None = None,
    credential: str | None = None,
    worker_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make the request; return the response as a JSON-friendly dict."""
    config = worker_config
    if not isinstance(config, dict):
        raise Reject("the http job needs the worker's [jobs.http] configuration")
    host = urlsplit(url).hostname or ""
    if not host_allowed(host, config["allowed_hosts"]):  # checked on submit too; never trust
        raise Reject(f"host {host} is not in [jobs.http] allowed_hosts")
    headers: list[tuple[str, str]] = []
    for line in header or ():
        name, _, value = line.partition(": ")
        headers.append((name, value))
    if credential:
        headers.append(_credential(config, credential, host))
    data = None
    if json_body is not None:
        data = json_body.encode()
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "application/json"))
    if method in ("POST", "PATCH") and not any(k.lower() == "idempotency-key" for k, _ in headers):
        headers.append(("Idempotency-Key", ctx.job_id))  # the same on every attempt of this job
    ok = set(expect or ()) or set(range(200, 300))
    tries = 0

    def one_try() -> Response:
        nonlocal tries
        tries += 1
        response = _send(method, url, headers, data, config)
        if response.status in ok:
            return response
        summary = _summary(method, url, response)
        if response.status in RETRYABLE:
            raise Transient(summary, _retry_after(response, config["max_retry_after"]))
        raise Reject(summary)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(config["tries"]) | _wait_too_long(config["max_wait"]),
        wait=_wait(config["wait"], config["max_wait"]),
        retry=tenacity.retry_if_exception_type(Transient),
        reraise=True,
    )
    try:
        response = retrying(one_try)
    except Transient as exc:
        raise Retry(str(exc), delay=exc.retry_after) from None
    return _result(method, url, response, tries)


def _credential(config: dict[str, Any], name: str, host: str) -> tuple[str, str]:
    cred = config["credentials"].get(name)
    if cred is None:
        raise Reject(f"credential {name!r} is not configured in this worker's [jobs.http.credentials]")
    if not host_allowed(host, cred["hosts"]):
        raise Reject(f"credential {name!r} may not be sent to {host} (its hosts: {', '.join(cred['hosts'])})")
    try:
        secret = Path(cred["value_file"]).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The path is the operator's own config; the value is never quoted.
        raise Reject(f"credential {name!r}: cannot read its value_file: {exc.__class__.__name__}") from None
    if not secret or any(c in secret for c in "\r\n\0"):
        raise Reject(f"credential {name!r}: its value_file must hold one non-empty line")
    return cred["header"], cred["prefix"] + secret


def _send(method: str, url: str, headers: list[tuple[str, str]], data: bytes | None,
          config: dict[str, Any]) -> Response:
    req = urllib.request.Request(url, data=data, method=method)
    for name, value in headers:
        req.add_header(name, value)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = checked_address(parts.hostname or "", port, config["allowed_hosts"])
    opener = urllib.request.build_opener(_NoRedirects(), *pinned_handlers(address))
    limit = config["max_body"]
    try:
        with opener.open(req, timeout=config["request_timeout"]) as resp:
            body = resp.read(limit + 1)
            return Response(resp.status, resp.reason, list(resp.headers.items()), body[:limit],
                            len(body) > limit)
    except urllib.error.HTTPError as exc:  # a response with a non-2xx status
        with exc:
            body = exc.read(limit + 1) if exc.fp else b""
        return Response(exc.code, str(exc.reason), list((exc.headers or {}).items()),
                        body[:limit], len(body) > limit)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):  # it will not get better
            raise Reject(f"{method} {url}: certificate not trusted: {exc.reason}") from None
        raise Transient(f"{method} {url}: cannot connect: {exc.reason}") from None
    except (OSError, HTTPException) as exc:  # reset, refused, timed out, truncated response
        if isinstance(exc, TimeoutError):
            raise Transient(f"{method} {url}: no response within {config['request_timeout']:g}s") from None
        raise Transient(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None


def _summary(method: str, url: str, response: Response) -> str:
    text = response.body.decode("utf-8", errors="replace")
    if len(text) > ERROR_BODY:
        text = text[:ERROR_BODY] + "…"
    return f"HTTP {response.status} {response.reason} from {method} {url}: {text}".rstrip(": ")


def _retry_after(response: Response, cap: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), at most ``cap``."""
    value = next((v for k, v in response.headers if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), cap)


def _wait(initial: float, cap: float) -> Any:
    backoff = tenacity.wait_exponential_jitter(multiplier=initial, max=cap, jitter=min(1.0, initial))

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(backoff(state))

    return wait


def _wait_too_long(cap: float) -> Any:
    """Stop trying in place when the server asks for a longer wait than ``cap``."""

    def stop(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return isinstance(exc, Transient) and exc.retry_after is not None and exc.retry_after > cap

    return stop


def _result(method: str, url: str, response: Response, tries: int) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in response.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    out: dict[str, Any] = {
        "status": response.status,
        "reason": response.reason,
        "method": method,
        "url": url,
        "headers": headers,
        "truncated": response.truncated,
        "tries": tries,
    }
    try:
        out["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_base64"] = base64.b64encode(response.body).decode("ascii")
    content_type = next((v for k, v in response.headers if k.lower() == "content-type"), "")
    if "json" in content_type and not response.truncated and "body" in out:
        try:
            out["json"] = json.loads(out["body"])
        except ValueError:
            pass
    return out

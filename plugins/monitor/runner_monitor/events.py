"""Lifecycle events: what a worker tells ``runner.events``, as JSON envelopes (schema 1).

docs/monitor.md describes every field.  Events are flat JSON objects; every one carries
``schema``, ``id`` (unique, so a consumer drops duplicates), ``event``, ``ts``, ``seq``,
``worker``, ``host`` and ``pid``; job events add ``job_id``, ``job``, ``route``, ``queue`` and
``attempt``.  Routing keys: ``job.<state>.<job>`` and ``worker.<state>``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from runner.broker import Envelope
from runner.errors import MessageError

SCHEMA = 1
H_EVENT_SCHEMA = "x-runner-event-schema"
JOB_STATES = ("received", "started", "progress", "succeeded", "failed", "retried", "dead")
WORKER_STATES = ("online", "heartbeat", "offline")
FUTURE_JOB_STATES = ("revoked",)  # named in the protocol; the core has no hook yet

# Caps keep one event small whatever a job prints or returns.
TRACEBACK_CAP = 16 * 1024
TAIL_CAP = 8 * 1024
VALUE_CAP = 4 * 1024
PARAMS_CAP = 16 * 1024
SECRET_NAME = re.compile(r"pass|secret|token|api_?key|auth|credential|cookie|private", re.I)
REDACTED = "***"


def new_event(name: str, origin: Mapping[str, Any], seq: int, **fields: Any) -> dict[str, Any]:
    """An event ``name`` (``job.failed``, ``worker.heartbeat``) from ``origin`` (worker, host,
    pid), numbered ``seq`` by its worker."""
    return {
        "schema": SCHEMA,
        "id": uuid.uuid4().hex,
        "event": name,
        "ts": round(time.time(), 6),
        "seq": seq,
        **origin,
        **fields,
    }


def routing_key(event: Mapping[str, Any]) -> str:
    """``job.<state>.<job>`` or ``worker.<state>``."""
    name = str(event["event"])
    if name.startswith("job."):
        return f"{name}.{event.get('job') or 'unknown'}"
    return name


def to_envelope(event: Mapping[str, Any]) -> Envelope:
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return Envelope(
        body=body,
        message_id=str(event["id"]),
        type=str(event["event"]),
        routing_key=routing_key(event),
        headers={H_EVENT_SCHEMA: SCHEMA},
        timestamp=int(event["ts"]),
    )


def from_envelope(env: Envelope) -> dict[str, Any]:
    """Decode one event; :class:`MessageError` when it is not an event of a known schema."""
    try:
        event = json.loads(env.body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"event {env.message_id or '?'} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise MessageError(f"event {env.message_id or '?'} is not a JSON object")
    if event.get("schema") != SCHEMA:
        raise MessageError(f"event schema {event.get('schema')!r} is not {SCHEMA}")
    for key, kind in (("id", str), ("event", str), ("ts", (int, float))):
        if not isinstance(event.get(key), kind) or isinstance(event.get(key), bool):
            raise MessageError(f"event {env.message_id or '?'}: field {key!r} is missing or bad")
    return event


# --- payload helpers ---------------------------------------------------------------------------
def tail(text: str | None, cap: int) -> str:
    """The end of ``text``, at most ``cap`` characters (``…`` marks a cut)."""
    if not text:
        return ""
    return text if len(text) <= cap else "…" + text[-cap:]


def secret_names(job: Any, params: Mapping[str, Any]) -> set[str]:
    """Parameters not to report: the job type's ``secret_params``, click options declared with
    ``hide_input=True``, and names that look secret."""
    declared = {
        *getattr(job, "secret_params", ()),
        *(p.name for p in getattr(job, "params", ()) if getattr(p, "hide_input", False)),
    }
    return {str(k) for k in params if k in declared or SECRET_NAME.search(str(k))}


def redact(params: Mapping[str, Any], job: Any = None) -> dict[str, Any]:
    """Parameters with secret ones masked, capped as a whole."""
    hidden = secret_names(job, params)
    out = {k: REDACTED if k in hidden else v for k, v in params.items()}
    raw = json.dumps(out, default=str)
    if len(raw) > PARAMS_CAP:
        return {"_truncated": raw[:PARAMS_CAP] + "…"}
    return out


def secret_values(params: Mapping[str, Any], job: Any = None) -> list[str]:
    """The values of secret parameters, longest first (to mask them in tracebacks and output)."""
    values = {str(params[k]) for k in secret_names(job, params) if params[k] not in (None, "")}
    return sorted((v for v in values if len(v) >= 3), key=len, reverse=True)


def scrub(text: str | None, secrets: list[str]) -> str | None:
    """``text`` with every secret value replaced by ``***``."""
    if not text:
        return text
    for value in secrets:
        text = text.replace(value, REDACTED)
    return text


def small_value(value: Any) -> Any:
    """A job's return value, or a preview string when its JSON is larger than the cap."""
    raw = json.dumps(value, default=str)
    return value if len(raw) <= VALUE_CAP else raw[:VALUE_CAP] + "…"

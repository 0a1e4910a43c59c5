"""What a function job hands back, read as hostile input: bounded first, then validated.

The child interpreter writes its outcome (value, or error, traceback and retry wish) to a file
the worker reads after the job ended.  A compromised job (an image decoder exploit is enough)
writes whatever it likes there, of any size up to its file-size limit; so the worker reads at
most :data:`RESULT_FILE_LIMIT` bytes, parses with non-finite numbers and deep nesting refused,
and checks every field against the schema below.  Anything else is the job's failure, reported
with a clear error: it never reaches the worker's own code paths or the broker.

Schema (the child's :func:`runner.sandbox.child.main` writes exactly this)::

    {"ok": true,  "value": <JSON value, at most VALUE_LIMIT bytes encoded>}
    {"ok": false, "kind": "error" | "retry" | "reject", "exc_type": str, "error": str,
     "traceback": str | null, "delay": null | number from 0 to MAX_RETRY_DELAY}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

RESULT_FILE_LIMIT = 8 << 20  # bytes of the result file read at most (\uXXXX escapes included)
VALUE_LIMIT = 1 << 20  # bytes of a function job's return value (JSON); files go in out/
ERROR_LIMIT = 4096  # characters of an error line kept
TRACEBACK_LIMIT = 32 * 1024  # characters of a traceback kept (its tail)
EXC_TYPE_LIMIT = 200
MAX_DEPTH = 64  # nesting of the returned value
MAX_RETRY_DELAY = 7 * 24 * 3600.0  # seconds a job may ask to wait with Retry(delay=...)
KINDS = ("error", "retry", "reject")


class BadOutcome(ValueError):
    """The result file does not follow the schema; the message says how."""


@dataclass(frozen=True)
class Outcome:
    """A validated result file."""

    ok: bool
    value: Any = None
    kind: str = "error"
    exc_type: str = ""
    error: str = ""
    traceback: str | None = None
    delay: float | None = None


def read(path: str | os.PathLike[str]) -> Outcome | None:
    """The outcome in ``path``; ``None`` when the job wrote nothing (it died first).

    Raises:
        BadOutcome: too large, not JSON, or not the schema.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(RESULT_FILE_LIMIT + 1)
    except OSError:
        return None
    if not data:
        return None
    if len(data) > RESULT_FILE_LIMIT:
        raise BadOutcome(f"the result is larger than {RESULT_FILE_LIMIT} bytes "
                         "(return large data as output files)")
    return parse(data)


def parse(data: bytes) -> Outcome:
    """Validate the bytes of a result file (see the module docstring for the schema)."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadOutcome(f"the result is not JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise BadOutcome("the result is not an object with a boolean 'ok'")
    if obj["ok"]:
        value = obj.get("value")
        check_value(value)
        return Outcome(ok=True, value=value)
    kind = obj.get("kind")
    if kind not in KINDS:
        raise BadOutcome(f"the result's kind must be one of {', '.join(KINDS)}")
    return Outcome(
        ok=False,
        kind=kind,
        exc_type=_text(obj.get("exc_type", ""), "exc_type", EXC_TYPE_LIMIT),
        error=_text(obj.get("error", ""), "error", ERROR_LIMIT),
        traceback=_tail(obj.get("traceback"), TRACEBACK_LIMIT),
        delay=_delay(obj.get("delay")),
    )


def check_value(value: Any) -> None:
    """A returned value: plain JSON, at most :data:`MAX_DEPTH` deep and :data:`VALUE_LIMIT` bytes."""
    depth = _depth(value)
    if depth > MAX_DEPTH:
        raise BadOutcome(f"the returned value is nested deeper than {MAX_DEPTH} levels")
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > VALUE_LIMIT:
        raise BadOutcome(f"the returned value is {size} bytes of JSON, over the limit of "
                         f"{VALUE_LIMIT} (return large data as output files)")


def _depth(value: Any) -> int:
    """Nesting depth, walked without recursion (the value may be hostile)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise BadOutcome(f"the result's {field} must be text")
    return value if len(value) <= limit else value[:limit] + "…"


def _tail(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadOutcome("the result's traceback must be text")
    return value if len(value) <= limit else "…" + value[-limit:]


def _delay(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= MAX_RETRY_DELAY  # False for NaN and infinities too
    ):
        raise BadOutcome(
            f"the retry delay {str(value)[:50]!r} is not a number of seconds "
            f"from 0 to {MAX_RETRY_DELAY:g}"
        )
    return float(value)

"""Byte budgets for the headers runner writes: checked after encoding, never in characters.

Headers travel in one AMQP content-header frame, and RabbitMQ closes the whole connection
(FRAME_ERROR, every job in flight on it re-run) when a frame exceeds ``frame_max`` (128 KiB by
default).  Text a job wrote (its error line, stderr) may be non-ASCII, which takes up to four
bytes a character in UTF-8 and six (``\\uXXXX``) in JSON, so every budget here is measured on
the encoded bytes.  Headers carry small, bounded summaries; the full result travels in a body
(the reply to a waiting client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from runner.broker import Envelope

if TYPE_CHECKING:
    from runner.message import JobResult

TEXT_BUDGET = 1000  # bytes of one short text header (a dead-letter reason, an error line)
RESULT_BUDGET = 16 * 1024  # bytes of the x-runner-result summary of a dead job
HISTORY_BUDGET = 16 * 1024  # bytes of the x-runner-history header
HISTORY_ERROR_BUDGET = 500  # bytes of each attempt's error in the history
FRAME_BUDGET = 96 * 1024  # all headers of one message, encoded (frame_max is 128 KiB)


def clip(text: str | None, budget: int, keep_end: bool = False) -> str:
    """``text`` cut to at most ``budget`` bytes of UTF-8 (an ellipsis marks the cut)."""
    text = text or ""
    data = text.encode("utf-8", "replace")
    if len(data) <= budget:
        return text
    room = max(0, budget - 3)  # the ellipsis is three bytes
    if keep_end:
        return "…" + data[len(data) - room:].decode("utf-8", "ignore")
    return data[:room].decode("utf-8", "ignore") + "…"


def encoded(obj: Any) -> str:
    """Compact JSON as stored in a header (UTF-8, not ``\\u``-escaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def fit_record(record: Mapping[str, Any], budget: int, shrink: Sequence[str]) -> str:
    """``record`` as JSON of at most ``budget`` bytes: the ``shrink`` fields (text, kept by
    their end) are halved, largest first, until it fits."""
    out = dict(record)
    text = encoded(out)
    while size(text) > budget:
        fields = [f for f in shrink if isinstance(out.get(f), str) and out[f]]
        if not fields:  # only short fields are left, and still too much: say so, briefly
            return encoded({"truncated": True, **{k: out[k] for k in ("id", "status") if k in out}})
        largest = max(fields, key=lambda f: size(out[f]))
        half = size(out[largest]) // 2
        out[largest] = clip(out[largest], half, keep_end=True) if half > 16 else ""
        text = encoded(out)
    return text


def history(entries: Sequence[Mapping[str, Any]], limit: int) -> str:
    """The attempt history header: each error clipped, the oldest entries dropped to fit."""
    kept = [
        {**e, "error": clip(e.get("error"), HISTORY_ERROR_BUDGET)} if isinstance(e.get("error"), str) else dict(e)
        for e in list(entries)[-limit:]
    ]
    text = encoded(kept)
    while size(text) > HISTORY_BUDGET and kept:
        kept.pop(0)
        text = encoded(kept)
    return text


def total(headers: Mapping[str, Any]) -> int:
    """About the encoded size of a header table (names, values and their framing)."""
    count = 0
    for key, value in headers.items():
        count += size(str(key)) + 6
        if isinstance(value, str):
            count += size(value)
        elif isinstance(value, bytes):
            count += len(value)
        elif isinstance(value, (Mapping, list, tuple)):
            count += size(encoded(value))
        else:
            count += 9
    return count


H_DEAD_RESULT = "x-runner-result"
# What the x-runner-result header keeps of the last attempt (outputs, value, history: not).
DEAD_RESULT_FIELDS = ("id", "job", "status", "attempts", "error", "traceback", "exit_code",
                      "stdout", "stderr", "duration", "worker")


def dead_envelope(env: Envelope, reason: str, result: JobResult | None) -> Envelope:
    """The original job, with why it died and a summary of what its last attempt reported.

    Every header fits its byte budget once encoded (:mod:`runner.headers`): the job's own text
    may be long and non-ASCII, and an oversized header frame would cost the whole connection.
    """
    from runner.message import H_DEAD_ERROR, H_DEAD_REASON  # message imports this module

    headers: dict[str, object] = {H_DEAD_REASON: clip(reason, TEXT_BUDGET)}
    if result is not None:
        record = {k: v for k, v in result.to_json().items() if k in DEAD_RESULT_FIELDS}
        headers[H_DEAD_RESULT] = fit_record(
            record, RESULT_BUDGET, ("traceback", "stderr", "stdout", "error")
        )
        headers[H_DEAD_ERROR] = clip(result.error, TEXT_BUDGET)
    return replace(env, reply_to=None).with_headers(**headers)

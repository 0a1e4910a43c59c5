"""Checks for the fields of a message, each raising :class:`MessageError` naming the field.

Every value read from a message goes through one of these before anything acts on it: a wrong
type or an out-of-range value makes the message a dead letter with that reason, never an
exception somewhere deeper (docs/protocol.md, "Validation").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from runner import safejson
from runner.errors import MessageError

MAX_NAME = 200
MAX_HISTORY = 20
MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant a datetime can show
MAX_TIMEOUT = 30 * 86400.0  # a month: longer is a mistake, and sleeps overflow far beyond
# Job ids name files and directories (work dirs, shared storage): no separators, no dots first.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}")


def check_file_name(name: Any, where: str) -> str:
    """Refuse names that are not a plain single path component."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 255
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise MessageError(f"{where}: file name {name!r} is not a plain file name")
    return name


def check_url(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or len(value) > 2000
        or not value.startswith(("http://", "https://"))
        or any(c.isspace() for c in value)
    ):
        raise MessageError(f"{where}: expected an http(s) URL")
    return value


def check_id(value: Any, where: str = "id") -> str:
    """A job id: 1-200 letters, digits and ``._:@+=-``, starting with a letter or digit."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise MessageError(f"{where}: expected 1-200 letters, digits or ._:@+=- (got {_short(value)})")
    return value


def name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise MessageError(f"{where}: expected a non-empty name")
    return value


def number(
    value: Any, where: str, positive: bool = False, high: float = math.inf
) -> float | None:
    """A finite number (``None`` when absent), optionally positive and at most ``high``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"{where}: expected a number (got {_short(value)})")
    if not math.isfinite(value):
        raise MessageError(f"{where}: {value} is not a finite number")
    if positive and value <= 0:
        raise MessageError(f"{where}: must be positive")
    if value > high:
        raise MessageError(f"{where}: must be at most {high:g} (got {_short(value)})")
    return float(value)


def integer(value: Any, where: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{where}: expected an integer from {low} to {high} (got {_short(value)})")
    return value


def group(value: Any, where: str = "options.group") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise MessageError(f"{where}: expected a short string")
    return value


def history(raw: Any) -> tuple[Mapping[str, Any], ...]:
    """The attempt history header: a JSON list of objects whose values are plain scalars."""
    if raw is None:
        return ()
    if not isinstance(raw, str):
        raise MessageError(f"history header: expected a JSON string (got {_short(raw)})")
    items = safejson.loads(raw, "history header", max_depth=2)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MessageError("history header: expected a list of objects")
    for item in items:
        if any(isinstance(v, (dict, list)) for v in item.values()):
            raise MessageError("history header: entries hold only plain values")
    return tuple(items[-MAX_HISTORY:])


def _short(value: Any) -> str:
    """A value for an error message: its type, and a little of it."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"

"""JSON from the network, decoded within bounds.

Whatever arrives from a broker is untrusted: ``json.loads`` alone accepts ``NaN`` and
``Infinity``, turns ``1e999`` into ``inf``, raises a bare ``ValueError`` on a 5,000-digit
integer and a ``RecursionError`` on deep nesting.  Each of those, raised in the middle of message
handling, once wedged a job slot.  :func:`loads` turns every one of them into a
:class:`~runner.errors.MessageError` naming the problem, and bounds depth and size.
"""

from __future__ import annotations

import json
import math
from typing import Any

from runner.errors import MessageError

MAX_DEPTH = 32  # arrays and objects inside one another
MAX_NODES = 100_000  # values in one document (inline file data is one string each)
MAX_INT = 2**63 - 1  # what a 64-bit field (SQLite, AMQP long-long, most languages) can hold
_MAX_DIGITS = len(str(MAX_INT)) + 1


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise MessageError(f"number {text[:20]}… has more than {_MAX_DIGITS} digits")
    value = int(text)
    if abs(value) > MAX_INT:
        raise MessageError(f"number {text} is larger than {MAX_INT}")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MessageError(f"number {text[:40]} is out of range")
    return value


def _constant(text: str) -> Any:
    raise MessageError(f"{text} is not a JSON number")


_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)
# Results: a job may return NaN (Python's json writes it); still bounded in size and depth.
_LENIENT = json.JSONDecoder(parse_int=_int)


def loads(
    data: str | bytes, what: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
    allow_nan: bool = False,
) -> Any:
    """Decode ``data`` (UTF-8 JSON) or raise :class:`MessageError` saying why not.

    Numbers must be finite (unless ``allow_nan``) and integers fit 64 bits; nesting stops at
    ``max_depth`` and the document at ``max_nodes`` values.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = (_LENIENT if allow_nan else _DECODER).decode(text)
    except MessageError as exc:
        raise MessageError(f"{what}: {exc}") from None
    except RecursionError:
        raise MessageError(f"{what}: nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise MessageError(f"{what} is not UTF-8 JSON: {exc}") from None
    check_shape(value, what, max_depth, max_nodes)
    return value


def check_shape(value: Any, what: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse a decoded value nested deeper than ``max_depth`` or with more than ``max_nodes``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise MessageError(f"{what}: more than {max_nodes} values")
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise MessageError(f"{what}: nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)

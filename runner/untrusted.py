"""Names and text that come from a job, made safe for a file system and a terminal.

A job may be compromised, so the names of its output files and any text it wrote (errors,
stdout, stderr, tracebacks) are untrusted: the worker refuses outputs with names that are not
one plain file name, and the client checks them again before writing (a worker, or whoever
can publish replies, may be hostile too) and strips control characters before printing.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_NAME_BYTES = 255
# C0 and C1 controls, DEL; and the escape sequences that start with ESC or CSI, whole.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|\x9b[0-?]*[ -/]*[@-~]")


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not one plain, visible file name; ``None`` when it is one."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name.startswith("."):
        return "a dot file (or . or ..)"
    if name.startswith("-"):
        return "starts with '-' (an option to many programs)"
    if any(_invisible(c) for c in name):
        return "contains control or invisible characters"
    return None


def _invisible(char: str) -> bool:
    # Cc: controls (escape sequences); Cf: format characters such as right-to-left overrides
    # that make a name read differently than it is; Cs: lone surrogates; Zl/Zp: line breaks.
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def printable(text: Any, keep_newlines: bool = True) -> str:
    """``text`` with escape sequences and control characters removed, for a terminal."""
    text = _ESCAPES.sub("", str(text))
    allowed = "\n\t" if keep_newlines else ""
    return "".join(
        c for c in text
        if c in allowed or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp")
    )

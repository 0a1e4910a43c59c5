"""Parameter declarations of a configured command -> click options that validate values.

``params = { db = "str", level = { type = "int", min = 0, max = 9 }, mode = { choices = ["a",
"b"] }, name = { pattern = "^[a-z]+$" }, image = "file" }``

The same click types check a value three times: when the CLI parses it, when the client
submits it, and in the worker before the argv is built (the worker trusts no message).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import click

from runner_commands.template import DIRECTORIES

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TYPES = ("str", "int", "float", "file")
KEYS = frozenset(
    {"type", "help", "default", "min", "max", "choices", "pattern", "allow_dash", "multiline",
     "max_length"}
)
MAX_LENGTH = 4096


class DeclarationError(ValueError):
    """A parameter declaration is invalid; ``field`` names the config key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SafeText(click.ParamType):
    """A text value that can only ever be one literal argument.

    Refused: NUL and control characters (newlines too, unless ``multiline``), a leading ``-``
    (an option smuggled into a positional place) unless ``allow_dash``, text longer than
    ``max_length``, and text the ``pattern`` (a full match) does not accept.
    """

    name = "text"

    def __init__(
        self,
        pattern: str | None = None,
        allow_dash: bool = False,
        multiline: bool = False,
        max_length: int = MAX_LENGTH,
    ) -> None:
        self.pattern = re.compile(pattern) if pattern is not None else None
        self.allow_dash = allow_dash
        self.multiline = multiline
        self.max_length = max_length

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(f"expected text, got {type(value).__name__}", param, ctx)
        text = str(value)
        allowed = "\n\r\t" if self.multiline else ""
        bad = [c for c in text if unicodedata.category(c) == "Cc" and c not in allowed]
        if bad:
            what = "a newline" if bad[0] in "\n\r" else f"control character {bad[0]!r}"
            self.fail(f"{text!r} contains {what}", param, ctx)
        if text.startswith("-") and not self.allow_dash:
            self.fail(f"{text!r} starts with '-' (it could be read as an option)", param, ctx)
        if len(text) > self.max_length:
            self.fail(f"longer than {self.max_length} characters", param, ctx)
        if self.pattern is not None and not self.pattern.fullmatch(text):
            self.fail(f"{text!r} does not match {self.pattern.pattern}", param, ctx)
        return text


class FiniteFloat(click.FloatRange):
    """A float in range; ``nan`` and ``inf`` are refused (they pass range checks)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def build_option(name: str, decl: Any) -> tuple[click.Option, bool]:
    """The click option for one declared parameter, and whether it is an input file.

    Raises:
        DeclarationError: naming the config field at fault.
    """
    where = f"params.{name}"
    if not NAME_RE.match(name):
        raise DeclarationError(where, f"parameter name {name!r} must match {NAME_RE.pattern}")
    if name in DIRECTORIES:
        raise DeclarationError(where, f"{name!r} is reserved for the job's {name}/ directory")
    if isinstance(decl, str):
        decl = {"type": decl}
    if not isinstance(decl, Mapping):
        raise DeclarationError(where, 'expected a type name ("str") or a table')
    unknown = sorted(set(decl) - KEYS)
    if unknown:
        raise DeclarationError(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(KEYS))})")
    kind = decl.get("type", "str")
    if kind not in TYPES:
        raise DeclarationError(f"{where}.type", f"{kind!r} is not one of {', '.join(TYPES)}")
    param_type = _param_type(where, kind, decl)
    required = "default" not in decl
    help_text = str(decl.get("help", ""))
    if "pattern" in decl:
        help_text = f"{help_text} (matching {decl['pattern']})".strip()
    flag = "--" + name.replace("_", "-")
    option = click.Option(
        [flag, name],
        type=param_type,
        required=required,
        default=None if required else decl["default"],
        show_default=not required,
        help=help_text or None,
    )
    if not required and kind != "file":
        try:  # the default must pass the same checks as any value
            option.type_cast_value(click.Context(click.Command(name)), decl["default"])
        except click.BadParameter as exc:
            raise DeclarationError(f"{where}.default", exc.message) from None
    return option, kind == "file"


def _param_type(where: str, kind: str, decl: Mapping[str, Any]) -> click.ParamType:
    def only(*keys: str) -> None:
        for key in sorted(set(decl) & (KEYS - {"type", "help", "default", *keys})):
            raise DeclarationError(f"{where}.{key}", f"does not apply to a {kind} parameter")

    if kind == "file":
        only()
        if "default" in decl:
            raise DeclarationError(f"{where}.default", "an input file cannot have a default")
        return click.Path(exists=True, dir_okay=False)
    if kind in ("int", "float"):
        only("min", "max")
        bounds = {k: decl[k] for k in ("min", "max") if k in decl}
        for key, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DeclarationError(f"{where}.{key}", f"{value!r} is not a number")
        if kind == "int":
            return click.IntRange(bounds.get("min"), bounds.get("max"))
        return FiniteFloat(bounds.get("min"), bounds.get("max"))
    if "choices" in decl:
        only("choices")
        choices = decl["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise DeclarationError(f"{where}.choices", "expected a non-empty list of strings")
        return click.Choice(choices)
    only("pattern", "allow_dash", "multiline", "max_length")
    for key in ("allow_dash", "multiline"):
        if key in decl and not isinstance(decl[key], bool):
            raise DeclarationError(f"{where}.{key}", "expected true or false")
    max_length = decl.get("max_length", MAX_LENGTH)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise DeclarationError(f"{where}.max_length", "expected a positive integer")
    pattern = decl.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise DeclarationError(f"{where}.pattern", f"{pattern!r} is not a regular expression: {exc}") from None
    return SafeText(
        pattern=pattern,
        allow_dash=bool(decl.get("allow_dash", False)),
        multiline=bool(decl.get("multiline", False)),
        max_length=max_length,
    )

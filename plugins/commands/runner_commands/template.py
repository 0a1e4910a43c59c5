"""Argv templates: ``["pg_dump", "--dbname", "{db}", "--file", "{out}/dump.sql"]``.

Each element is compiled once, when the configuration is read, into literal text and whole
placeholders.  Rendering substitutes the validated values element by element: a value becomes
part of exactly one argument whatever characters it holds, and no shell ever sees it.

The syntax is :meth:`str.format`'s, reduced to what is safe: ``{name}`` and ``{{``/``}}``.
Attribute or index access (``{db.__class__}``, ``{x[0]}``), conversions (``{x!r}``), format
specs (``{x:>10}``) and positional fields (``{}``, ``{0}``) are refused, because each of them
would let a value reach more than its own text.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The job's own directories, always available; parameters may not take these names.
DIRECTORIES = ("in", "out", "tmp")


class TemplateError(ValueError):
    """An argv element is not a valid template; the message says which part."""


@dataclass(frozen=True)
class Element:
    """One compiled argv element: literal text and placeholder names, in order."""

    parts: tuple[tuple[str, str | None], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(text + (values[name] if name is not None else "") for text, name in self.parts)


def compile_element(text: str) -> Element:
    """Split one argv element into literal text and placeholder names.

    Raises:
        TemplateError: a field uses anything but a plain name, or the braces do not match.
    """
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # "Single '}' encountered", "unmatched '{'"
        raise TemplateError(f"{text!r}: {exc}") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        if field == "" or field.isdigit():
            raise TemplateError(f"{text!r}: placeholders need a name, like {{db}}")
        if "." in field or "[" in field:
            raise TemplateError(
                f"{text!r}: {{{field}}} uses attribute or index access; only {{name}} is allowed"
            )
        if conversion or spec:
            raise TemplateError(
                f"{text!r}: {{{field}}} has a conversion or format spec; only {{name}} is allowed"
            )
        if not field.isidentifier():
            raise TemplateError(f"{text!r}: {{{field}}} is not a parameter name")
        parts.append((literal, field))
    return Element(tuple(parts))


@dataclass(frozen=True)
class ArgvTemplate:
    """A compiled argv: the program (never a placeholder) and its argument templates."""

    elements: tuple[Element, ...]

    @classmethod
    def compile(cls, argv: Sequence[str]) -> ArgvTemplate:
        elements = tuple(compile_element(a) for a in argv)
        if elements and elements[0].names:
            raise TemplateError(f"{argv[0]!r}: the program itself cannot be a placeholder")
        return cls(elements)

    @property
    def names(self) -> set[str]:
        return {name for e in self.elements for name in e.names}

    def render(self, values: Mapping[str, Any]) -> list[str]:
        """The argv for one job: each element rendered with ``values`` (already validated)."""
        text = {name: _text(value) for name, value in values.items()}
        return [e.render(text) for e in self.elements]


def _text(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    return str(value)

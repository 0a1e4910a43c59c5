"""A ``[jobs.NAME]`` table with ``argv`` -> a :class:`runner.JobType`.

Every problem is reported as one :class:`runner.PluginError` naming the job and the field, e.g.
``[jobs.backup] params.db.pattern: '(' is not a regular expression: ...``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import click

from runner import (
    ConfigError,
    JobContext,
    JobType,
    PluginError,
    RetryPolicy,
    SandboxProfile,
)
from runner.config import parse_duration, parse_size
from runner_commands.params import DeclarationError, build_option
from runner_commands.template import DIRECTORIES, ArgvTemplate, TemplateError

log = logging.getLogger(__name__)
ROUTE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EVERY_EXIT = tuple(range(1, 256))
KEYS = frozenset(
    {"argv", "help", "params", "timeout", "retries", "backoff", "max_backoff", "jitter",
     "route", "network", "retry_on_exit", "fatal_on_exit", "memory", "cpu_time", "processes",
     "file_size", "open_files", "output_limit"}
)
# Keys of [jobs.NAME] that the core (sandbox) or other plugins (webhook, notify) read.
SHARED_KEYS = frozenset({"sandbox", "webhook", "notify", "rate_limit"})


class FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def build_job(name: str, table: Mapping[str, Any]) -> JobType:
    """The job type a ``[jobs.NAME]`` table declares.

    Raises:
        PluginError: ``[jobs.NAME] FIELD: what is wrong``.
    """
    try:
        return _build(name, table)
    except FieldError as exc:
        raise PluginError(f"[jobs.{name}] {exc.field}: {exc}") from None


def _build(name: str, table: Mapping[str, Any]) -> JobType:
    for key in sorted(set(table) - KEYS - SHARED_KEYS):
        log.warning("[jobs.%s] %s: not a setting of a command job; ignored", name, key)
    template = _argv(table.get("argv"))
    options, inputs = _params(table.get("params", {}))
    declared = [o.name for o in options if o.name]
    used = template.names
    for field in sorted(used - set(declared) - set(DIRECTORIES)):
        raise FieldError("argv", f"{{{field}}} is not a declared parameter (nor in, out, tmp)")
    for param in declared:
        if param not in used:
            raise FieldError(f"params.{param}", "declared but not used in argv")

    def build_argv(params: Mapping[str, Any], ctx: JobContext) -> Sequence[str]:
        values = {p: params[p] for p in declared}
        values.update({"in": ctx.in_dir, "out": ctx.out_dir, "tmp": ctx.tmp_dir})
        return template.render(values)

    route = table.get("route", "default")
    if not isinstance(route, str) or not ROUTE_RE.match(route):
        raise FieldError("route", f"{route!r} must be one lower-case word (a-z, 0-9, _ -)")
    return JobType(
        name=name,
        help=str(table.get("help", "")) or f"Run {template.elements[0].parts[0][0]}.",
        params=options,
        argv=build_argv,
        inputs=inputs,
        timeout=_duration(table, "timeout", 300.0),
        retry=_policy(table),
        route=route,
        sandbox=_sandbox(table),
    )


def _argv(argv: Any) -> ArgvTemplate:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise FieldError("argv", "expected a non-empty list of strings (never a shell string)")
    if not argv[0]:
        raise FieldError("argv", "the program name is empty")
    try:
        return ArgvTemplate.compile(argv)
    except TemplateError as exc:
        raise FieldError("argv", str(exc)) from None


def _params(decls: Any) -> tuple[tuple[click.Option, ...], tuple[str, ...]]:
    if not isinstance(decls, Mapping):
        raise FieldError("params", "expected a table, e.g. params = { db = \"str\" }")
    options, inputs = [], []
    for pname, decl in decls.items():
        try:
            option, is_file = build_option(str(pname), decl)
        except DeclarationError as exc:
            raise FieldError(exc.field, str(exc)) from None
        options.append(option)
        if is_file:
            inputs.append(str(pname))
    return tuple(options), tuple(inputs)


def _policy(table: Mapping[str, Any]) -> RetryPolicy:
    retries = _int(table, "retries", 2, low=0)
    backoff = _duration(table, "backoff", 1.0)
    retry_on = table.get("retry_on_exit", [])
    fatal_on = _codes(table, "fatal_on_exit")
    if retry_on == "any":
        retry_codes: tuple[int, ...] = ()
    else:
        retry_codes = _codes(table, "retry_on_exit")
        if not retry_codes:
            # Only the codes named are worth another try; with none named every failure is
            # final (a timeout or a kill by a signal is still retried).
            fatal_on = EVERY_EXIT
    return RetryPolicy(
        attempts=retries + 1,
        backoff=backoff,
        max_backoff=_duration(table, "max_backoff", 300.0),
        jitter=_duration(table, "jitter", min(1.0, backoff)),
        retry_on_exit=retry_codes,
        fatal_on_exit=fatal_on,
    )


def _sandbox(table: Mapping[str, Any]) -> SandboxProfile:
    network = table.get("network", False)
    if not isinstance(network, bool):
        raise FieldError("network", "expected true or false")
    base = SandboxProfile()
    cpu = table.get("cpu_time")
    return SandboxProfile(
        network=network,
        memory=_size(table, "memory", base.memory),
        cpu_seconds=None if cpu is None else max(1, round(_duration(table, "cpu_time", 0))),
        processes=_int(table, "processes", base.processes, low=1),
        file_size=_size(table, "file_size", base.file_size),
        open_files=_int(table, "open_files", base.open_files, low=3),
        output_limit=_size(table, "output_limit", base.output_limit) or base.output_limit,
    )


def _duration(table: Mapping[str, Any], key: str, default: float) -> float:
    if key not in table:
        return default
    try:
        value = parse_duration(table[key], key)
    except ConfigError:
        raise FieldError(key, f"{table[key]!r} is not a duration like 90s, 10m or 2h") from None
    if value < 0 or (key == "timeout" and value == 0):
        raise FieldError(key, f"{table[key]!r} must be positive")
    return value


def _size(table: Mapping[str, Any], key: str, default: int | None) -> int | None:
    if key not in table:
        return default
    try:
        return parse_size(table[key], key)
    except ConfigError:
        raise FieldError(key, f"{table[key]!r} is not a size like 512k, 16MiB or 1g") from None


def _int(table: Mapping[str, Any], key: str, default: int | None, low: int) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FieldError(key, f"{value!r} is not an integer >= {low}")
    return value


def _codes(table: Mapping[str, Any], key: str) -> tuple[int, ...]:
    codes = table.get(key, [])
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 255 for c in codes
    ):
        hint = ' or "any"' if key == "retry_on_exit" else ""
        raise FieldError(key, f"{codes!r}: expected a list of exit codes from 1 to 255{hint}")
    return tuple(codes)

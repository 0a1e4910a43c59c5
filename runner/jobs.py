"""Job types: what a plugin declares, and the registry that checks it.

A job type says how it runs (an argv built from validated parameters, or a Python function run in
a child interpreter), which parameters it takes (click parameters, so the CLI is generated), which
of them are input files, and its timeout, retry policy, default route and sandbox profile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from runner.context import PROGRESS_MARKER, JobContext, parse_progress  # noqa: F401 - re-exported
from runner.errors import ConfigError, JobError, PluginError

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ROUTE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Options every generated `runner submit <job>` command has; job parameters may not take them.
RESERVED_FLAGS = frozenset(
    {"--route", "--wait", "--timeout", "--retries", "--delay", "--priority", "--json",
     "--output-dir", "--overwrite", "--wait-timeout", "--webhook", "--help", "--then",
     "--then-param", "--then-on-failure", "--quiet", "-q"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing job is tried again.

    Attributes:
        attempts: total attempts, the first included (1 = never retry).
        backoff: wait before the second attempt, in seconds; doubles (``multiplier``) each time.
        max_backoff: cap of one wait.
        multiplier: growth of the wait per attempt.
        jitter: up to this many random seconds added to each wait.
        retry_on_exit: exit codes that are worth another attempt; empty means every non-zero
            code except those in ``fatal_on_exit``.
        fatal_on_exit: exit codes that fail for good at once.
        fatal_exceptions: exception class names (``ValueError`` or ``pkg.mod.Error``) that fail
            a function job for good at once.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 300.0
    multiplier: float = 2.0
    jitter: float = 1.0
    retry_on_exit: tuple[int, ...] = ()
    fatal_on_exit: tuple[int, ...] = ()
    fatal_exceptions: tuple[str, ...] = ()

    def exit_is_retryable(self, code: int) -> bool:
        if code in self.fatal_on_exit:
            return False
        return not self.retry_on_exit or code in self.retry_on_exit

    def exception_is_retryable(self, exc_type: str) -> bool:
        short = exc_type.rsplit(".", 1)[-1]
        return exc_type not in self.fatal_exceptions and short not in self.fatal_exceptions


@dataclass(frozen=True)
class SandboxProfile:
    """Limits a job runs under. ``None`` leaves a limit unset.

    Attributes:
        network: whether the job may use the network (enforced from the namespace layer on).
        memory: memory limit in bytes: a cgroup limit where the host allows (the job is
            OOM-killed past it), else an address-space rlimit.
        cpu_seconds: CPU time limit.
        processes: process (task) limit: cgroup ``pids.max`` where the host allows, and
            RLIMIT_NPROC when the job has its own slot uid (see docs/security.md).
        file_size: largest file the job may write, in bytes.
        open_files: open file descriptors.
        output_limit: bytes of stdout/stderr kept (the tail).
        disk: bytes the job may write in all (work dir, captured output): a tmpfs of that
            size per job where the worker may mount one (as root), see docs/security.md.
        binds: extra read-only binds, ``(host source, destination in the sandbox)`` pairs,
            applied after the system binds so that a file can replace one of them (a job's own
            ``/etc/ImageMagick-6/policy.xml``).  Honoured only by the bubblewrap layer.
    """

    network: bool = False
    memory: int | None = 2 << 30
    cpu_seconds: int | None = None
    processes: int | None = 512
    file_size: int | None = 1 << 30
    open_files: int | None = 1024
    output_limit: int = 64 * 1024
    disk: int | None = 1 << 30
    binds: tuple[tuple[str, str], ...] = ()


_PROFILE_SIZES = ("memory", "file_size", "output_limit", "disk")
_PROFILE_COUNTS = ("cpu_seconds", "processes", "open_files")


def tighten(job: JobType, table: Mapping[str, Any]) -> JobType:
    """Apply an operator's ``[jobs.NAME.sandbox]`` table to a job type.

    Limits may only get stricter (a smaller number, network off, a shorter ``timeout``) unless
    the table says ``allow_loosen = true``.  ``"none"`` removes a limit, which is loosening.

    Raises:
        ConfigError: an unknown key, a bad value, or loosening without ``allow_loosen``.
    """
    from runner.config import parse_duration, parse_size

    where = f"[jobs.{job.name}.sandbox]"
    loosen = table.get("allow_loosen", False)
    if not isinstance(loosen, bool):
        raise ConfigError(f"{where} allow_loosen: expected true or false")
    profile, timeout = job.sandbox, job.timeout
    changes: dict[str, Any] = {}
    for key, raw in table.items():
        if key == "allow_loosen":
            continue
        if key == "network":
            if not isinstance(raw, bool):
                raise ConfigError(f"{where} network: expected true or false")
            if raw and not profile.network and not loosen:
                raise ConfigError(f"{where} network = true would loosen the job type's profile "
                                  "(no network); set allow_loosen = true to allow it")
            changes["network"] = raw
            continue
        if key == "timeout":
            value = parse_duration(raw, f"{where} timeout")
            if value > timeout and not loosen:
                raise ConfigError(f"{where} timeout = {raw!r} is longer than the job type's "
                                  f"{timeout:g}s; set allow_loosen = true to allow it")
            timeout = value
            continue
        if key not in _PROFILE_SIZES + _PROFILE_COUNTS:
            known = ", ".join(("allow_loosen", "network", "timeout", *_PROFILE_SIZES, *_PROFILE_COUNTS))
            raise ConfigError(f"{where} unknown key {key!r} (known: {known})")
        limit: int | None
        if isinstance(raw, str) and raw.lower() in ("none", "unlimited"):
            limit = None
        elif key in _PROFILE_SIZES:
            limit = parse_size(raw, f"{where} {key}")
        elif isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            limit = raw
        else:
            raise ConfigError(f"{where} {key}: expected a positive integer or \"none\"")
        current = getattr(profile, key)
        looser = current is not None and (limit is None or limit > current)
        if looser and not loosen:
            raise ConfigError(f"{where} {key} = {raw!r} would loosen the job type's limit of "
                              f"{current}; set allow_loosen = true to allow it")
        changes[key] = limit
    return replace(job, sandbox=replace(profile, **changes), timeout=timeout)


ArgvBuilder = Callable[[Mapping[str, Any], JobContext], Sequence[str]]


@dataclass(frozen=True)
class JobType:
    """A declared job type.

    Exactly one of ``argv`` (builds the command from validated params; never a shell string) or
    ``function`` (``"package.module:function"``, called in a child interpreter as
    ``function(ctx, **params)``) must be set.  Input-file parameters (``inputs``) arrive as paths
    inside ``ctx.in_dir``; files the job writes to ``ctx.out_dir`` come back to the client.
    ``secret_params`` names parameters whose values are redacted wherever runner reports them
    (failure e-mails, the monitor).
    """

    name: str
    help: str = ""
    params: Sequence[click.Parameter] = ()
    argv: ArgvBuilder | None = None
    function: str | None = None
    inputs: Sequence[str] = ()
    timeout: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    route: str = "default"
    sandbox: SandboxProfile = field(default_factory=SandboxProfile)
    secret_params: Sequence[str] = ()
    plugin: str = ""

    def param_names(self) -> list[str]:
        return [p.name for p in self.params if p.name]

    def validate(self, params: Mapping[str, Any], files: Mapping[str, Any]) -> dict[str, Any]:
        """Check message params against the declaration; return converted values.

        Raises :class:`JobError` naming the first bad parameter.  Input-file params must name a
        file carried in ``files``.
        """
        known = {p.name: p for p in self.params if p.name}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise JobError(f"job {self.name!r} has no parameter {unknown[0]!r}")
        ctx = click.Context(click.Command(self.name))
        out: dict[str, Any] = {}
        for name, param in known.items():
            if name in self.inputs:
                if name not in files:
                    if param.required:
                        raise JobError(f"job {self.name!r}: missing input file {name!r}")
                    continue
                out[name] = files[name].name
                continue
            if name not in params or params[name] is None:
                if param.required:
                    raise JobError(f"job {self.name!r}: missing parameter {name!r}")
                default = param.get_default(ctx, call=True)
                # click >= 8.2 returns a sentinel, not None, for "no default".
                out[name] = None if type(default).__name__ == "Sentinel" else _plain(default)
                continue
            _check_shape(self.name, name, param, params[name])
            try:
                value = param.type_cast_value(ctx, params[name])
            except click.BadParameter as exc:
                raise JobError(f"job {self.name!r}: parameter {name!r}: {exc.message}") from exc
            except Exception as exc:  # a type's own converter choking on a value it never expected
                raise JobError(f"job {self.name!r}: parameter {name!r}: {exc}") from exc
            out[name] = _plain(value)
        extra_files = sorted(set(files) - set(self.inputs))
        if extra_files:
            raise JobError(f"job {self.name!r} takes no input file {extra_files[0]!r}")
        return out


_SCALARS = (str, int, float, bool, os.PathLike)  # a path only from the Python API


def _check_shape(job: str, name: str, param: click.Parameter, value: Any) -> None:
    """A scalar parameter takes a scalar; ``multiple`` or ``nargs`` ones a list of them.

    click's own types convert whatever they are given (``str({"x": 1})`` is a fine string to
    them), so the shape is checked first: a list or an object where one value belongs is a bad
    message.
    """
    if type(param.type).__module__ != "click.types":
        return  # a type of a plugin's own may take lists or objects; it checks them itself
    many = bool(getattr(param, "multiple", False))
    wide = param.nargs != 1
    expected = {0: "a plain value (not a list or object)", 1: "a list of plain values",
                2: "a list of lists of plain values"}[int(many) + int(wide)]
    items: list[Any] = [value]
    for _level in range(int(many) + int(wide)):
        if not all(isinstance(item, (list, tuple)) for item in items):
            raise JobError(f"job {job!r}: parameter {name!r}: expected {expected}")
        items = [inner for item in items for inner in item]
    if not all(isinstance(item, _SCALARS) for item in items):
        raise JobError(f"job {job!r}: parameter {name!r}: expected {expected}")


def _plain(value: Any) -> Any:
    """JSON-friendly form of a converted click value."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class Registry:
    """Job types by name, filled through the ``register_jobs`` hook."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobType] = {}

    def register(self, job: JobType, plugin: str = "") -> None:
        if not isinstance(job, JobType):
            raise PluginError(f"plugin {plugin or '?'} registered {job!r}, not a JobType")
        if not NAME_RE.match(job.name):
            raise PluginError(
                f"plugin {plugin or '?'}: job name {job.name!r} must match {NAME_RE.pattern}"
            )
        if not ROUTE_RE.match(job.route):
            raise PluginError(f"plugin {plugin or '?'}: job {job.name!r} has bad route {job.route!r}")
        if (job.argv is None) == (job.function is None):
            raise PluginError(f"job {job.name!r} must set exactly one of argv or function")
        missing = set(job.inputs) - set(job.param_names())
        if missing:
            raise PluginError(f"job {job.name!r}: inputs {sorted(missing)} are not parameters")
        for param in job.params:
            clash = RESERVED_FLAGS.intersection(getattr(param, "opts", ()))
            if clash:
                raise PluginError(
                    f"job {job.name!r}: option {sorted(clash)[0]} is reserved for every job"
                )
        if job.name in self._jobs:
            other = self._jobs[job.name].plugin or "?"
            raise PluginError(
                f"job {job.name!r} registered twice: by plugin {other} and by plugin {plugin or '?'}"
            )
        self._jobs[job.name] = _with_plugin(job, plugin)

    def get(self, name: str) -> JobType:
        try:
            return self._jobs[name]
        except KeyError:
            raise JobError(f"unknown job {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[JobType]:
        return iter(sorted(self._jobs.values(), key=lambda j: j.name))

    def __len__(self) -> int:
        return len(self._jobs)


def _with_plugin(job: JobType, plugin: str) -> JobType:
    return replace(job, plugin=job.plugin or plugin)

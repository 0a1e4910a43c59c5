"""Hook specifications: the whole plugin API (documented in docs/plugins.md).

Plugins implement these with ``@runner.hookimpl``.  Every argument is optional in an
implementation: pluggy passes only the ones it names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import click

    from runner.config import Settings
    from runner.jobs import JobType
    from runner.message import JobMessage, JobResult

hookspec = pluggy.HookspecMarker("runner")
hookimpl = pluggy.HookimplMarker("runner")  # exported as runner.hookimpl


@hookspec
def register_jobs(register: Callable[[JobType], None], settings: Settings) -> None:
    """Register job types by calling ``register(JobType(...))`` once per type.

    ``settings`` is the merged configuration, for plugins whose job types come from it
    (admin-defined commands, per-job options).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``runner`` command group."""


@hookspec(firstresult=True)
def route_job(job: JobType, message: JobMessage) -> str | None:
    """Choose the route of a job being submitted; return ``None`` to leave it to others."""


@hookspec
def job_started(job: JobType, message: JobMessage, worker: Any) -> None:
    """A worker starts an attempt of a job.

    In every job hook, ``worker`` is the :class:`~runner.worker.Worker` (``name``, ``queue``,
    ``bindings``, ``settings``).  Job hooks run in the job's slot thread (this one before the
    job starts, the others once it is settled): keep them quick and hand slow work (mail,
    HTTP) to a thread of your own.  One failing implementation does not stop the others.
    """


@hookspec
def job_progress(job: JobType, message: JobMessage, progress: dict[str, Any], worker: Any) -> None:
    """A running job reported progress (``percent``, ``message``, and ``done``/``total``).

    Called from the job's slot thread at most about four times a second.
    """


@hookspec
def job_succeeded(job: JobType, message: JobMessage, result: JobResult, worker: Any) -> None:
    """An attempt succeeded; the result is published."""


@hookspec
def job_failed(
    job: JobType, message: JobMessage, result: JobResult, final: bool, worker: Any
) -> None:
    """An attempt failed; ``final`` tells whether it was the last one."""


@hookspec
def job_retrying(
    job: JobType, message: JobMessage, result: JobResult, delay: float, worker: Any
) -> None:
    """A failed attempt will be tried again after ``delay`` seconds."""


@hookspec
def job_dead(
    job: JobType | None,
    message: JobMessage | None,
    reason: str,
    result: JobResult | None,
    worker: Any,
) -> None:
    """A message was dead-lettered: the last attempt failed, or it could not be run at all.

    ``message`` is ``None`` when the message could not even be decoded, ``job`` when it names
    no job type this worker knows.
    """


@hookspec
def job_released(job: JobType, message: JobMessage, reason: str, worker: Any) -> None:
    """A running attempt was stopped without an outcome and its message went back to the queue
    (``reason``: a stopping worker's grace ran out, or ``runner revoke --terminate``).  The job
    is not over: a worker takes it again, or drops it if it was revoked (:func:`job_revoked`)."""


@hookspec
def job_revoked(job: JobType | None, message: JobMessage, worker: Any) -> None:
    """A revoked job was dropped without running (``runner revoke``): its final state.

    ``job`` is ``None`` when the message names no job type this worker knows.
    """


@hookspec
def worker_started(worker: Any) -> None:
    """A worker is consuming; ``worker`` exposes ``name``, ``queue``, ``bindings``."""


@hookspec
def worker_stopping(worker: Any) -> None:
    """A worker stops taking jobs (SIGTERM or shutdown)."""

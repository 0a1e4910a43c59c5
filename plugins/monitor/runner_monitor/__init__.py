"""runner first-party plugin: lifecycle events, and the monitor that keeps their history.

Worker side: the lifecycle hooks below publish job and worker events to ``runner.events``
(:mod:`runner_monitor.emitter`).  Command side: ``runner monitor`` (dashboard, JSON API,
Prometheus metrics), ``runner status ID`` and ``runner jobs`` (:mod:`runner_monitor.cli`).
Everything goes through the public hooks: the core has no back door.  docs/monitor.md is the
reference.

Turn the events off by not loading this plugin (``RUNNER_LOAD_PLUGINS`` without ``monitor``).
"""

from __future__ import annotations

from typing import Any

from runner import hookimpl
from runner_monitor.emitter import Emitter

EMITTER = Emitter()


@hookimpl
def worker_started(worker: Any) -> None:
    EMITTER.worker_started(worker)


@hookimpl
def worker_stopping(worker: Any) -> None:
    EMITTER.worker_stopping(worker)


@hookimpl
def job_started(job: Any, message: Any, worker: Any) -> None:
    EMITTER.job_started(job, message, worker)


@hookimpl
def job_progress(job: Any, message: Any, progress: Any, worker: Any) -> None:
    EMITTER.job_progress(job, message, progress, worker)


@hookimpl
def job_succeeded(job: Any, message: Any, result: Any, worker: Any) -> None:
    EMITTER.job_succeeded(job, message, result, worker)


@hookimpl
def job_failed(job: Any, message: Any, result: Any, final: bool, worker: Any) -> None:
    EMITTER.job_failed(job, message, result, final, worker)


@hookimpl
def job_retrying(job: Any, message: Any, result: Any, delay: float, worker: Any) -> None:
    EMITTER.job_retrying(job, message, result, delay, worker)


@hookimpl
def job_dead(job: Any, message: Any, reason: str, result: Any, worker: Any) -> None:
    EMITTER.job_dead(job, message, reason, result, worker)


@hookimpl
def register_commands(cli: Any) -> None:
    from runner_monitor.cli import jobs, monitor, status

    for command in (monitor, status, jobs):
        cli.add_command(command)

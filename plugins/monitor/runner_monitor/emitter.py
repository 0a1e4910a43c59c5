"""The worker side: lifecycle hooks turn into events, published off the job path.

:class:`Emitter` implements the hooks; each worker object gets its own
:class:`~runner_monitor.outbox.WorkerEvents` (several workers may live in one process, as in
tests), which buffers the events and publishes them from a thread of its own.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from runner import hookimpl
from runner_monitor import events as ev
from runner_monitor.outbox import BUFFER, HEARTBEAT, WorkerEvents

class Emitter:
    """The hook implementations' state: one :class:`WorkerEvents` per worker object.

    The plugin module delegates to one with the defaults.  An instance is a plugin itself: to
    tune it, register another (``make_plugins(load=[...], extra=[Emitter(heartbeat=1)])``)
    and leave the ``monitor`` entry point out of ``load``.
    """

    def __init__(self, heartbeat: float = HEARTBEAT, buffer: int = BUFFER) -> None:
        self.heartbeat = heartbeat
        self.buffer = buffer
        self._workers: weakref.WeakKeyDictionary[Any, WorkerEvents] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def events_of(self, worker: Any) -> WorkerEvents:
        with self._lock:
            found = self._workers.get(worker)
            if found is None:
                found = self._workers[worker] = WorkerEvents(worker, self.heartbeat, self.buffer)
                found.start()
            return found

    # --- hooks -----------------------------------------------------------------------------
    @hookimpl
    def worker_started(self, worker: Any) -> None:
        self.events_of(worker)

    @hookimpl
    def worker_stopping(self, worker: Any) -> None:
        self.events_of(worker).stopping()

    @hookimpl
    def job_started(self, job: Any, message: Any, worker: Any) -> None:
        out = self.events_of(worker)
        base = _job_fields(job.name, message, out.queue)
        out.job_running(message.id, {k: base[k] for k in ("job", "attempt", "route")},
                        float(getattr(job, "timeout", 300.0) or 300.0))
        retries = message.options.retries
        allowed = retries + 1 if retries is not None else job.retry.attempts
        out.emit(
            "job.received",
            **base,
            params=ev.redact(_declared_order(job, message.params), job),
            files=[{"name": f.name, "size": f.size} for f in message.files.values()],
            options={**message.options.to_json(), "attempts": allowed},
            created_at=message.created_at,
            history=list(message.history),
        )
        out.emit("job.started", **base)

    @hookimpl
    def job_progress(self, job: Any, message: Any, progress: Any, worker: Any) -> None:
        out = self.events_of(worker)
        out.emit(
            "job.progress",
            **_job_fields(job.name, message, out.queue),
            **{k: progress[k] for k in ("percent", "done", "total") if k in progress},
            message=ev.scrub(progress.get("message", ""), ev.secret_values(message.params, job)),
        )

    @hookimpl
    def job_succeeded(self, job: Any, message: Any, result: Any, worker: Any) -> None:
        out = self.events_of(worker)
        out.emit(
            "job.succeeded",
            **_job_fields(job.name, message, out.queue),
            **_result_fields(result, ev.secret_values(message.params, job)),
            value=ev.small_value(result.value),
            outputs=[{"name": f.name, "size": f.size, "sha256": f.sha256}
                     for f in result.outputs],
        )
        out.job_done(message.id)

    @hookimpl
    def job_failed(self, job: Any, message: Any, result: Any, final: bool, worker: Any) -> None:
        out = self.events_of(worker)
        secrets = ev.secret_values(message.params, job)
        out.emit(
            "job.failed",
            **_job_fields(job.name, message, out.queue),
            **_result_fields(result, secrets),
            final=final,
            traceback=ev.scrub(ev.tail(result.traceback, ev.TRACEBACK_CAP), secrets),
        )
        out.job_done(message.id)

    @hookimpl
    def job_retrying(
        self, job: Any, message: Any, result: Any, delay: float, worker: Any
    ) -> None:
        out = self.events_of(worker)
        out.emit(
            "job.retried",
            **_job_fields(job.name, message, out.queue),
            delay=round(delay, 3),
            next_attempt=message.attempt + 1,
            error=ev.scrub(result.error, ev.secret_values(message.params, job)),
        )

    @hookimpl
    def job_released(self, job: Any, message: Any, reason: str, worker: Any) -> None:
        out = self.events_of(worker)
        out.emit("job.released", **_job_fields(job.name, message, out.queue), reason=reason)
        out.job_done(message.id)

    @hookimpl
    def job_revoked(self, job: Any, message: Any, worker: Any) -> None:
        out = self.events_of(worker)
        out.emit("job.revoked", **_job_fields(message.job, message, out.queue))
        out.job_done(message.id)

    @hookimpl
    def job_dead(self, job: Any, message: Any, reason: str, result: Any, worker: Any) -> None:
        out = self.events_of(worker)
        fields: dict[str, Any] = {"job_id": None, "job": None, "queue": out.queue}
        secrets: list[str] = []
        if message is not None:
            fields = _job_fields(message.job, message, out.queue)
            secrets = ev.secret_values(message.params, job)
            if result is None:  # never ran: nothing else will say what it was
                fields["params"] = ev.redact(message.params, job)
        fields["reason"] = ev.scrub(reason, secrets)
        if result is not None:
            fields["error"] = ev.scrub(result.error, secrets)
        out.emit("job.dead", **fields)
        out.job_done(message.id if message is not None else None)


def _declared_order(job: Any, params: Any) -> dict[str, Any]:
    """Parameters in the order the job type declares them (the message sorts them)."""
    names = [n for n in job.param_names() if n in params] if hasattr(job, "param_names") else []
    return {**{n: params[n] for n in names}, **params}


def _job_fields(job: str, message: Any, queue: str) -> dict[str, Any]:
    return {
        "job_id": message.id,
        "job": job,
        "route": message.route,
        "queue": queue,
        "attempt": message.attempt,
    }


def _result_fields(result: Any, secrets: list[str]) -> dict[str, Any]:
    return {
        "duration": round(float(result.duration or 0.0), 6),
        "error": ev.scrub(result.error, secrets),
        "exit_code": result.exit_code,
        "stdout": ev.scrub(ev.tail(result.stdout, ev.TAIL_CAP), secrets),
        "stderr": ev.scrub(ev.tail(result.stderr, ev.TAIL_CAP), secrets),
        "history": [
            {**h, "error": ev.scrub(h.get("error"), secrets)} if h.get("error") else h
            for h in result.history
        ],
    }

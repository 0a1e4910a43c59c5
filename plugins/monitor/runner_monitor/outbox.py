"""One worker's events on their way out: a bounded buffer and the thread that publishes it.

A hook only appends a small dict to the buffer (cheap, never blocking a job).  One thread per
worker object owns its own broker connection: it publishes the buffer in order and emits the
heartbeat.  When the broker cannot be reached the buffer keeps the newest ``buffer`` events,
drops the oldest and counts them (``dropped`` in the heartbeat; the ``seq`` numbers show the
gap).  The interpreter's exit never waits for the broker: the events still buffered then
(``worker.offline`` among them) go to a durable spool that the next worker process publishes
first (:mod:`runner_monitor.leftovers`).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import tenacity

from runner import redact_url
from runner.broker import Broker, connect
from runner.spool import Spool
from runner_monitor import events as ev
from runner_monitor import leftovers

log = logging.getLogger(__name__)
HEARTBEAT = 5.0
BUFFER = 10_000
BACKOFF_MAX = 30.0
STOP_EXTRA = 10.0  # seconds past the worker's grace a stopping worker's events may still take


def _connect(url: str) -> Broker:
    # A short first connect: this thread also beats the heartbeat.
    return connect(url, connect_for=2.0) if url.startswith("amqp") else connect(url)


class WorkerEvents:
    """The events of one worker: buffer, running jobs, the publisher/heartbeat thread."""

    def __init__(
        self,
        worker: Any,
        heartbeat: float = HEARTBEAT,
        buffer: int = BUFFER,
        opener: Callable[[str], Broker] = _connect,
        spool: Spool | None = None,
    ) -> None:
        self.name = str(worker.name)
        self.queue = str(getattr(worker, "queue", ""))
        self.bindings = list(getattr(worker, "bindings", ()))
        self.concurrency = int(getattr(worker, "concurrency", 0) or 0)
        settings = worker.settings
        self.url = settings.broker_url
        self.grace = float(getattr(settings, "grace", 30.0))
        self.interval = heartbeat
        self.limit = buffer
        self.dropped = 0
        self.published = 0
        self._worker = weakref.ref(worker)
        self._opener = opener
        self._spool = spool or leftovers.spool_for(self.url)
        self._origin = {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid()}
        self._buffer: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._seq = 0
        self.running: dict[str, dict[str, Any]] = {}
        self._stopping_at: float | None = None
        self._offline_sent = False
        self._exiting = False
        self.closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"events-{self.name}", daemon=True
        )

    # --- called from hooks (any thread) --------------------------------------------------------
    def start(self) -> None:
        self.emit("worker.online", **self._worker_fields())
        self._thread.start()
        _LIVE.add(self)

    def emit(self, name: str, **fields: Any) -> None:
        """Queue one event; never blocks on the broker."""
        with self._cond:
            if self.closed.is_set():
                self.dropped += 1
                return
            self._seq += 1
            event = ev.new_event(name, self._origin, self._seq, **fields)
            if len(self._buffer) >= self.limit:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(event)
            self._cond.notify_all()

    def job_running(self, job_id: str, fields: dict[str, Any], timeout: float) -> None:
        with self._cond:
            self.running[job_id] = {**fields, "started_at": round(time.time(), 3),
                                    "_until": time.monotonic() + timeout + 60}

    def job_done(self, job_id: str | None) -> None:
        with self._cond:
            if job_id is not None:
                self.running.pop(job_id, None)
            self._cond.notify_all()

    def stopping(self) -> None:
        """The worker takes no more jobs: one last heartbeat now, ``worker.offline`` once its
        running jobs are done (or its grace is over)."""
        self.emit("worker.heartbeat", stopping=True, **self._load())
        with self._cond:
            self._stopping_at = time.monotonic()
            self._cond.notify_all()

    # --- the publisher thread ----------------------------------------------------------------
    def _worker_fields(self) -> dict[str, Any]:
        return {
            "queue": self.queue, "bindings": self.bindings, "concurrency": self.concurrency,
            "interval": self.interval,
        }

    def _load(self) -> dict[str, Any]:
        with self._cond:
            now = time.monotonic()
            for job_id in [j for j, r in self.running.items() if r["_until"] < now]:
                del self.running[job_id]  # its settle failed, so no hook ended it
            running = [
                {k: v for k, v in r.items() if not k.startswith("_")} | {"job_id": j}
                for j, r in self.running.items()
            ]
        worker = self._worker()
        return {
            **self._worker_fields(),
            "busy": len(running),
            "running": running,
            "processed": getattr(worker, "processed", None) if worker else None,
            "dropped": self.dropped,
        }

    def _offline_due(self) -> bool:
        if self._stopping_at is None or self._offline_sent:
            return False
        over = time.monotonic() - self._stopping_at > self.grace + 1
        return not self.running or over or self._exiting

    def _retrying(self) -> tenacity.Retrying:
        """How one event is published: again and again with backoff while the broker is away
        (new events only fill the buffer meanwhile), until the stopped worker's grace is over."""
        def over(state: tenacity.RetryCallState) -> bool:
            if self._worker() is None and self._stopping_at is None:
                self._stopping_at = time.monotonic()  # the worker object is gone
            return (self._stopping_at is not None
                    and time.monotonic() - self._stopping_at > self.grace + STOP_EXTRA)

        def note(state: tenacity.RetryCallState) -> None:
            if state.attempt_number == 1 and state.outcome is not None:
                log.warning("cannot publish events (%s); buffering up to %d",
                            state.outcome.exception(), self.limit)

        return tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.5, max=BACKOFF_MAX),
            stop=over,
            retry=tenacity.retry_if_not_exception_type(NotImplementedError),
            before_sleep=note,
        )

    def _run(self) -> None:
        broker: Broker | None = None
        next_beat = time.monotonic() + self.interval
        retrying = self._retrying()

        def publish(event: dict[str, Any]) -> None:
            nonlocal broker
            try:
                if broker is None:
                    broker = self._opener(self.url)
                    self._resend_leftovers(broker)
                broker.publish_event(ev.to_envelope(event))
            except NotImplementedError:
                raise
            except Exception:
                if broker is not None:  # the broker is away: a new connection next time
                    _close(broker)
                    broker = None
                raise

        try:
            while True:
                if self._worker() is None and self._stopping_at is None:
                    self._stopping_at = time.monotonic()  # the worker object is gone
                with self._cond:
                    self._cond.wait_for(
                        lambda: bool(self._buffer) or self._offline_due() or self._offline_sent
                        or time.monotonic() >= next_beat,
                        timeout=max(0.0, next_beat - time.monotonic()),
                    )
                    offline = self._offline_due()
                    if offline:
                        self._offline_sent = True
                if offline:
                    self.emit("worker.offline", **self._load())
                elif time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    if self._stopping_at is None:
                        self.emit("worker.heartbeat", **self._load())
                with self._cond:
                    event = self._buffer[0] if self._buffer else None
                    if event is None and self._offline_sent:
                        return
                    if (
                        self._stopping_at is not None
                        and time.monotonic() - self._stopping_at > self.grace + STOP_EXTRA
                    ):
                        self.dropped += len(self._buffer)
                        return  # the broker stayed away past the worker's grace: give up
                if event is None:
                    continue
                try:
                    retrying(publish, event)
                except NotImplementedError:
                    log.warning("the broker at %s carries no events; events are off", redact_url(self.url))
                    with self._cond:
                        self.dropped += len(self._buffer)
                    return
                except tenacity.RetryError:
                    with self._cond:
                        self.dropped += len(self._buffer)
                    return  # the broker stayed away past the worker's grace: give up
                if retrying.statistics.get("attempt_number", 1) > 1:
                    log.info("publishing events again (%d dropped so far)", self.dropped)
                with self._cond:
                    if self._buffer and self._buffer[0] is event:
                        self._buffer.popleft()
                    self.published += 1
        finally:
            self.closed.set()
            if broker is not None:
                _close(broker)

    def _resend_leftovers(self, broker: Broker) -> None:
        """Publish what exited processes left in the spool, before this worker's own events."""
        try:
            sent = leftovers.resend(self._spool, broker)
        except OSError as exc:
            log.warning("cannot read the event spool %s: %s", self._spool.root, exc)
            return
        if sent:
            log.info("published %d events that exited workers left in %s", sent, self._spool.root)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the thread has published everything and stopped (tests, embedders)."""
        return self.closed.wait(timeout)

    def spool_at_exit(self) -> int:
        """The process is exiting: say ``worker.offline``, and spool what is not published.

        Never waits for the broker.  Returns how many events were spooled.
        """
        with self._cond:
            if self.closed.is_set():
                return 0  # the thread published everything and ended
            if self._stopping_at is None:
                self._stopping_at = time.monotonic()
            self._exiting = True
            say_offline = not self._offline_sent
            self._offline_sent = True
        if say_offline:
            self.emit("worker.offline", **self._load())
        with self._cond:
            unsent = list(self._buffer)
            self._buffer.clear()
            self.closed.set()  # later events are dropped (counted): the process is going
            self._cond.notify_all()
        try:
            return leftovers.keep(self._spool, unsent)
        except OSError as exc:
            log.warning("lost %d events at exit: cannot spool them (%s)", len(unsent), exc)
            return 0


_LIVE: weakref.WeakSet[WorkerEvents] = weakref.WeakSet()


@atexit.register
def _spool_all() -> None:
    # Daemon threads die with the interpreter, and exiting must not wait on a broker: what is
    # left goes to the spool, for the next worker process to publish.
    for out in list(_LIVE):
        out.spool_at_exit()


def _close(broker: Broker) -> None:
    try:
        broker.close()
    except Exception:  # noqa: BLE001 - it is broken already
        log.debug("closing the event broker failed", exc_info=True)

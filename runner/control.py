"""Remote control of live workers: ``runner control ping|stats|active|…`` and the worker's side.

A command is a broadcast (``runner.control`` fanout on RabbitMQ, the ``control`` table on
SQLite) that every live worker receives; each one that is addressed answers through the
sender's reply address.  The worker side runs in a thread of its own with **its own broker
connection** (pika is not thread-safe: the consumer's connection belongs to the consumer's
thread), and acts on the worker only through thread-safe methods.

Command body (JSON)::

    {"protocol": 1, "command": "stats", "args": {}, "destination": null | ["worker name", ...]}

Reply body::

    {"protocol": 1, "worker": "host.1234", "ok": true, "result": {...}}   # or "error": "..."
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from runner.broker import Broker, Envelope
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.worker import Worker

log = logging.getLogger(__name__)
PROTOCOL = 1
COMMANDS = (
    "ping", "stats", "active", "registered", "queues", "shutdown", "pool_grow", "pool_shrink",
    "rate_limit", "add_binding", "remove_binding", "revoke",
)


class ControlError(RunnerError):
    """A control command was refused by a worker (the text says why)."""


# --- sender side ------------------------------------------------------------------------------
def command_envelope(
    command: str, args: dict[str, Any] | None = None, destination: Sequence[str] | None = None
) -> Envelope:
    """The broadcast for one command (``destination``: worker names, ``None`` = every worker)."""
    if command not in COMMANDS:
        raise ControlError(f"unknown control command {command!r}")
    body = {
        "protocol": PROTOCOL, "command": command, "args": args or {},
        "destination": list(destination) if destination else None,
    }
    return Envelope(
        body=json.dumps(body, separators=(",", ":")).encode(),
        message_id=uuid.uuid4().hex, type="control", routing_key="",
        timestamp=int(time.time()),
    )


def send(
    broker: Broker,
    command: str,
    args: dict[str, Any] | None = None,
    destination: Sequence[str] | None = None,
    timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """Broadcast ``command`` and return the replies that came within ``timeout`` seconds,
    sorted by worker name (``timeout=0``: do not wait for replies)."""
    env = command_envelope(command, args, destination)
    replies = []
    for reply in broker.broadcast(env, gather=timeout):
        try:
            replies.append(json.loads(reply.body))
        except ValueError:
            log.warning("ignored a control reply that is not JSON")
    return sorted(replies, key=lambda r: str(r.get("worker", "")))


def revoke(
    broker: Broker, job_ids: Sequence[str], ttl: float, terminate: bool = False,
    timeout: float = 1.0,
) -> list[dict[str, Any]]:
    """Revoke jobs: durably for ``ttl`` seconds (workers that start later read it), and at once
    on every live worker; return the live workers' replies."""
    broker.record_revocations(job_ids, ttl)
    args = {"ids": list(job_ids), "terminate": terminate, "expires": time.time() + ttl}
    return send(broker, "revoke", args, timeout=timeout)


# --- worker side ------------------------------------------------------------------------------
class ControlServer:
    """Answers control commands for one worker, in a thread with its own broker connection."""

    def __init__(self, worker: Worker, broker: Broker) -> None:
        self.worker = worker
        self.broker = broker
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.listening = threading.Event()  # set once broadcasts reach this worker
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda args: "pong",
            "stats": lambda args: self.stats(),
            "active": lambda args: worker.active_jobs(),
            "registered": lambda args: sorted(j.name for j in worker.plugins.jobs),
            "queues": lambda args: {"queue": worker.queue, "bindings": list(worker.bindings)},
            "shutdown": self._shutdown,
            "pool_grow": lambda args: worker.pool.resize(worker.pool.size + int(args.get("n", 1))),
            "pool_shrink": lambda args: worker.pool.resize(worker.pool.size - int(args.get("n", 1))),
            "rate_limit": self._rate_limit,
            "add_binding": lambda args: self._binding(args, add=True),
            "remove_binding": lambda args: self._binding(args, add=False),
            "revoke": lambda args: worker.revoke(
                list(args.get("ids") or []), bool(args.get("terminate")),
                float(args.get("expires") or 0) or None,
            ),
        }

    def _rate_limit(self, args: dict[str, Any]) -> dict[str, str]:
        job = str(args["job"])
        if job not in {j.name for j in self.worker.plugins.jobs}:
            raise ControlError(f"no job type {job!r} on this worker")
        return self.worker.limiter.set(job, args.get("rate"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.broker.consume_broadcast(self.worker.name, self.handle, self.listening.set)
            except RunnerError as exc:  # the broker is away: jobs go on, control comes back
                log.warning("remote control: %s; trying again in 5s", exc)
                self._stopped.wait(5)
            except Exception:
                log.exception("remote control of worker %s stopped", self.worker.name)
                return

    def stop(self) -> None:
        self._stopped.set()
        thread = self._thread
        for _ in range(20):  # a stop that lands before the consumer started is repeated
            self.broker.stop_consuming()
            if thread is None:
                break
            thread.join(0.5)
            if not thread.is_alive():
                break
        self.broker.close()

    def handle(self, env: Envelope) -> Envelope | None:
        """Run one command; the reply, or ``None`` when the command is for other workers."""
        try:
            body = json.loads(env.body)
            command, args = body["command"], body.get("args") or {}
            destination = body.get("destination")
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed control message %s", env.message_id)
            return None
        if destination and self.worker.name not in destination:
            return None
        handler = self.handlers.get(str(command).replace("-", "_"))
        reply: dict[str, Any] = {"protocol": PROTOCOL, "worker": self.worker.name}
        try:
            if handler is None:
                raise ControlError(f"this worker does not know the command {command!r}")
            reply.update(ok=True, result=handler(args))
        except (RunnerError, ValueError, TypeError, KeyError) as exc:
            reply.update(ok=False, error=str(exc))
        log.info("control: %s -> %s", command, "ok" if reply["ok"] else reply["error"])
        return Envelope(
            body=json.dumps(reply, separators=(",", ":"), default=str).encode(),
            message_id=uuid.uuid4().hex, type="control-reply", routing_key="",
            timestamp=int(time.time()),
        )

    def stats(self) -> dict[str, Any]:
        w = self.worker
        return {
            "host": socket.gethostname(), "pid": os.getpid(),
            "uptime": round(time.time() - w.started_at, 3), "slots": w.pool.size,
            "max_slots": w.concurrency,
            "processed": w.processed, "running": w.active_jobs(),
            "queue": w.queue, "bindings": list(w.bindings), "broker": w.broker.url.split("@")[-1],
        }

    def _shutdown(self, args: dict[str, Any]) -> str:
        grace = args.get("grace")
        self.worker.stop(None if grace is None else float(grace))
        return "stopping"

    def _binding(self, args: dict[str, Any], add: bool) -> list[str]:
        pattern = str(args.get("pattern") or "")
        if not pattern:
            raise ControlError("a binding pattern is required")
        if add:
            self.broker.declare_queue(self.worker.queue, [pattern])
        else:
            self.broker.unbind(self.worker.queue, pattern)
        self.worker.set_binding(pattern, add)
        return list(self.worker.bindings)

"""The monitor process: a collector thread (events -> history), a poller thread (queue depths,
retention) and the web server (uvicorn), all built here and passed down.

Each thread owns its own broker connection (a broker object is used by one thread); the
Retry action opens a short-lived one per request.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.broker import EVENTS_QUEUE, Broker, Envelope, connect
from runner.cli_dead import resubmit
from runner import redact_url
from runner.errors import BrokerError, MessageError, RunnerError
from runner_monitor import events as ev
from runner_monitor.auth import Auth
from runner_monitor.history import History

log = logging.getLogger(__name__)
BACKOFF_MAX = 30.0


def _connect(url: str) -> Broker:
    return connect(url, connect_for=5.0) if url.startswith("amqp") else connect(url)


class Collector:
    """Consumes the monitor's durable event queue into the history, and polls queue depths."""

    def __init__(
        self, url: str, queue: str, history: History, depth_every: float = 5.0,
        prune_every: float = 60.0, opener: Callable[[str], Broker] = _connect,
    ) -> None:
        self.url, self.queue, self.history = url, queue, history
        self.depth_every, self.prune_every = depth_every, prune_every
        self.ready = threading.Event()  # the event queue exists and is being read
        self.skipped = 0  # events that could not be decoded
        self._opener = opener
        self._stop = threading.Event()
        self._broker: Broker | None = None
        self._threads = [
            threading.Thread(target=self._consume, name="monitor-events", daemon=True),
            threading.Thread(target=self._poll, name="monitor-poll", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        consumer = self._threads[0]
        while consumer.is_alive() and time.monotonic() < deadline:
            broker = self._broker
            if broker is not None:
                broker.stop_consuming()  # again: a consume that was starting cleared it
            consumer.join(0.2)
        self._threads[1].join(max(0.0, deadline - time.monotonic()))

    def _consume(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._broker = self._opener(self.url)
                self._broker.declare_event_queue(self.queue)
                self.ready.set()
                log.info("recording events from %s on %s", self.queue, redact_url(self.url))
                backoff = 0.5
                self._broker.consume_events(self.queue, self._on_events)
            except (BrokerError, OSError) as exc:
                log.warning("event queue %s: %s; trying again in %.0fs", self.queue, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                broker, self._broker = self._broker, None
                if broker is not None:
                    try:
                        broker.close()
                    except Exception:  # noqa: BLE001 - broken already
                        pass

    def _on_events(self, envelopes: list[Envelope]) -> None:
        decoded = []
        for env in envelopes:
            try:
                decoded.append(ev.from_envelope(env))
            except MessageError as exc:
                self.skipped += 1
                log.warning("skipped an event: %s", exc)
        self.history.record(decoded)

    def _poll(self) -> None:
        broker: Broker | None = None
        next_prune = 0.0
        while not self._stop.wait(0 if next_prune == 0 else self.depth_every):
            if time.monotonic() >= next_prune:
                self.history.prune()
                next_prune = time.monotonic() + self.prune_every
            for name in self.history.queue_names():
                try:
                    broker = broker or self._opener(self.url)
                    depth: int | None = broker.queue_depth(name)
                except (BrokerError, OSError) as exc:
                    log.debug("depth of %s: %s", name, exc)
                    depth = None
                self.history.set_depth(name, depth)
        if broker is not None:
            broker.close()


@dataclass
class Actions:
    """What an admin may do from the dashboard."""

    url: str
    history: History
    opener: Callable[[str], Broker] = field(default=_connect)
    signer: Any = None  # runner.signing.Signer: with ``[signing] key`` the retry is signed anew

    def retry(self, job_id: str, by: str) -> dict[str, Any]:
        """Re-publish the job's dead letter as ``runner dead retry`` does; note it in the
        history.  Raises :class:`RunnerError` (no such dead letter, unroutable)."""
        known = self.history.job(job_id) or {}
        # Stamped before the publish: the worker's events for the new run come after it.
        event = ev.new_event(
            "job.resubmitted", {"worker": None, "host": None, "pid": None}, 0,
            job_id=job_id, job=known.get("job"), route=known.get("route"),
            queue=known.get("queue"), attempt=1, by=by,
        )
        broker = self.opener(self.url)
        try:
            env = resubmit(broker, job_id, self.signer)
        finally:
            broker.close()
        self.history.record([{**event, "job": event["job"] or env.type}])
        return {"id": job_id, "routing_key": env.routing_key, "state": "queued"}


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise RunnerError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:5555")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Monitor:
    """Everything ``runner monitor`` runs; :meth:`serve` blocks until SIGINT/SIGTERM or
    :meth:`shutdown`."""

    broker_url: str
    db: Path
    listen: str = "127.0.0.1:5555"
    retention: float = 7 * 86400
    queue: str = EVENTS_QUEUE
    auth: Auth = field(default_factory=Auth)
    allow_remote: bool = False
    depth_every: float = 5.0
    signer: Any = None
    on_ready: Callable[[str], None] | None = None
    results_url: str | None = None  # the result store: finished jobs' outputs, groups
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.host, self.port = parse_listen(self.listen)
        if not is_loopback(self.host) and not self.allow_remote:
            raise RunnerError(
                f"refusing to listen on {self.host}, which is not loopback: pass --allow-remote "
                "(with --admin-token/--read-token) to expose the monitor"
            )
        if not is_loopback(self.host) and self.auth.open:
            raise RunnerError("--allow-remote needs --admin-token or --read-token")
        self.history = History(self.db, self.retention)
        self.collector = Collector(self.broker_url, self.queue, self.history, self.depth_every)
        self._server: Any = None

    def serve(self) -> None:
        try:
            import uvicorn

            from runner_monitor.web import create_app
        except ImportError as exc:
            raise RunnerError(
                f"runner monitor needs Starlette and uvicorn ({exc}): "
                "pip install 'runner[monitor]'"
            ) from exc

        from runner import open_store
        from runner_monitor.stored import Stored

        stored = Stored(open_store(self.results_url) if self.results_url else None)
        app = create_app(
            self.history, self.auth, Actions(self.broker_url, self.history, signer=self.signer),
            self.stopping,
            loopback_only=is_loopback(self.host), stored=stored,
        )
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = server = uvicorn.Server(config)
        sock = self._bind()  # here, so a busy port is one clear error
        self.collector.start()
        ready = self.on_ready
        if ready is not None:
            threading.Thread(target=self._announce, args=(server, sock, ready), daemon=True).start()
        try:
            server.run(sockets=[sock])
        finally:
            self.stopping.set()
            self.collector.stop()
            self.history.close()
            stored.close()
            sock.close()

    def _bind(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            raise RunnerError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from exc
        return sock

    def _announce(self, server: Any, sock: socket.socket, ready: Callable[[str], None]) -> None:
        while not server.started and not self.stopping.wait(0.05):
            pass
        if server.started:
            host, port = sock.getsockname()[:2]
            ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/")

    def shutdown(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.should_exit = True

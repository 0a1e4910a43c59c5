"""The outbox of one spool directory: job hooks drop deliveries in, its threads POST them.

The job path (:meth:`Outbox.put`) only writes a spool file and wakes the scheduler thread; it
never talks to a receiver, so a slow or dead receiver cannot hold a job slot.  The scheduler
hands due deliveries to sender threads (at most ``concurrency`` at once); a failed POST is
tried again after a tenacity backoff (exponential, jittered, capped at ``max_wait``) until the
receiver accepts it with a 2xx, answers 410 Gone, or the delivery is older than ``max_age``.
Several workers in one process that share a spool directory share its outbox.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any

import tenacity

from runner_webhook.config import WebhookSettings
from runner_webhook.signing import headers as signed_headers
from runner_webhook.spool import Delivery, Spool

log = logging.getLogger(__name__)
RESCAN = 30.0  # look at the spool this often anyway (other processes may share it)
USER_AGENT = "runner-webhook/1"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is not an acceptance: try again later


class Outbox:
    """Accepts deliveries quickly and durably; sends them from its own threads."""

    def __init__(self, cfg: WebhookSettings) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir, cfg.max_entries, cfg.max_age)
        self.delivered = 0
        self._cv = threading.Condition()
        self._kicked = False
        self._stopped = True
        self._thread: threading.Thread | None = None
        self._generation = 0  # a restarted outbox's old scheduler thread sees it changed and ends
        self._linger: threading.Timer | None = None
        self._busy: set[str] = set()  # file names being sent by a thread of this process
        self._due: dict[str, float] = {}  # file name -> when it may be tried (cached)
        self._too_old = f"not accepted within max_age ({cfg.max_age:g}s)"
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=cfg.wait, max=cfg.max_wait, jitter=min(1.0, cfg.wait)
        )

    # --- the job path ---------------------------------------------------------------------
    def put(self, url: str, event: str, job_id: str, body: bytes) -> Delivery:
        delivery = self.spool.put(url, event, job_id, body)
        self.kick()
        return delivery

    def kick(self) -> None:
        with self._cv:
            self._kicked = True
            self._cv.notify_all()

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if self._thread is not None and self._thread.is_alive() and not self._stopped:
                return
            self.spool.prepare()
            self._stopped = False
            self._due.clear()
            self._generation += 1
            self._thread = threading.Thread(
                target=self._run, args=(self._generation,), name="webhook-outbox", daemon=True
            )
            self._thread.start()

    def stop(self, linger: float) -> None:
        """Stop after ``linger`` seconds (jobs finishing in a worker's grace period still post)."""
        with self._cv:
            if linger <= 0:
                self.halt()
                return
            self._linger = threading.Timer(linger, self.halt)
            self._linger.daemon = True
            self._linger.start()

    def halt(self) -> None:
        """Stop scheduling now; a POST in flight may finish. What is left stays in the spool."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    # --- the scheduler thread -------------------------------------------------------------------
    def _run(self, generation: int) -> None:
        def over() -> bool:
            return self._stopped or generation != self._generation

        while True:
            with self._cv:
                if over():
                    return
            try:
                wake = self._pass()
            except Exception:  # a bug here must not end deliveries for good
                log.exception("webhook: scheduling pass over %s failed", self.spool.root)
                wake = RESCAN
            with self._cv:
                self._cv.wait_for(lambda: self._kicked or over(), timeout=wake)
                self._kicked = False

    def _pass(self) -> float:
        """Start the due deliveries; return how long until the next one is due."""
        now = time.time()
        wake = RESCAN
        present = set()
        for path in self.spool.pending():
            name = path.name
            present.add(name)
            with self._cv:
                if name in self._busy:
                    continue
                if len(self._busy) >= self.cfg.concurrency:
                    wake = min(wake, RESCAN)
                    break
                due = self._due.get(name)
            if due is None:
                delivery = self.spool.read(path)
                if delivery is None:
                    continue
                if self.spool.expired(delivery, now):
                    self.spool.drop(path, self._too_old)
                    continue
                due = delivery.next_at
                with self._cv:
                    self._due[name] = due
            if due > now:
                wake = min(wake, due - now)
                continue
            with self._cv:
                self._busy.add(name)
            threading.Thread(target=self._send, args=(path,), name="webhook-send", daemon=True).start()
        with self._cv:
            for name in set(self._due) - present:
                del self._due[name]
        return max(0.0, wake)

    # --- one delivery -----------------------------------------------------------------------------
    def _send(self, path: Path) -> None:
        name = path.name
        try:
            with self.spool.claim(path) as delivery:
                if delivery is None:  # another process is sending it, or has sent it
                    with self._cv:
                        self._due.pop(name, None)
                    return
                now = time.time()
                if delivery.next_at > now:  # rescheduled by another process meanwhile
                    with self._cv:
                        self._due[name] = delivery.next_at
                    return
                if self.spool.expired(delivery, now):
                    self.spool.discard(path, delivery, self._too_old)
                    return
                status, error = self._post(delivery)
                if error is None:
                    self.spool.done(path)
                    with self._cv:
                        self.delivered += 1
                    log.info("webhook %s for job %s delivered to %s (try %d, HTTP %d)",
                             delivery.event, delivery.job_id, delivery.url, delivery.tries + 1, status)
                elif status == 410:
                    self.spool.done(path)
                    log.warning("webhook %s for job %s dropped: %s answered 410 Gone",
                                delivery.event, delivery.job_id, delivery.url)
                else:
                    self._reschedule(path, delivery, error)
        except Exception:
            log.exception("webhook: delivery %s failed unexpectedly; it stays in the spool", name)
        finally:
            with self._cv:
                self._busy.discard(name)
                self._kicked = True
                self._cv.notify_all()

    def _reschedule(self, path: Path, delivery: Delivery, error: str) -> None:
        delivery.tries += 1
        delivery.last_error = error
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = delivery.tries
        wait = float(self._backoff(state))
        delivery.next_at = time.time() + wait
        self.spool.update(path, delivery)
        with self._cv:
            self._due[path.name] = delivery.next_at
        log.warning("webhook %s for job %s to %s failed (%s); try %d in %.1fs",
                    delivery.event, delivery.job_id, delivery.url, error, delivery.tries + 1, wait)

    def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """POST once, signed now; return (status, error) with ``error`` None when accepted."""
        body = delivery.body.encode()
        request = urllib.request.Request(delivery.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Runner-Delivery": delivery.id,
            "Runner-Event": delivery.event,
            **signed_headers(self.cfg.secret, delivery.id, body),
        })
        opener = urllib.request.build_opener(_NoRedirects())
        try:
            with opener.open(request, timeout=self.cfg.timeout) as response:
                response.read(64 * 1024)
                return response.status, None
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return None, f"cannot connect: {exc.reason}"
        except (OSError, HTTPException) as exc:  # reset, timed out, truncated answer
            return None, f"{exc.__class__.__name__}: {exc}"


class Outboxes:
    """The outboxes of this process, one per spool directory, shared by the workers using it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_dir: dict[Path, Outbox] = {}
        self._users: dict[Path, int] = {}

    def acquire(self, cfg: WebhookSettings) -> Outbox:
        key = cfg.spool_dir.resolve()
        with self._lock:
            outbox = self._by_dir.get(key)
            if outbox is None:
                outbox = self._by_dir[key] = Outbox(cfg)
            elif outbox.cfg != cfg:
                log.warning("webhook: workers sharing the spool %s have different [jobs.webhook] "
                            "settings; deliveries use the first one's", key)
            self._users[key] = self._users.get(key, 0) + 1
            outbox.start()
        return outbox

    def release(self, outbox: Outbox, linger: float) -> None:
        key = outbox.cfg.spool_dir.resolve()
        with self._lock:
            self._users[key] = max(0, self._users.get(key, 0) - 1)
            if self._users[key] == 0:
                outbox.stop(linger)

    def halt_all(self) -> None:
        with self._lock:
            for outbox in self._by_dir.values():
                outbox.halt()


OUTBOXES = Outboxes()
atexit.register(OUTBOXES.halt_all)

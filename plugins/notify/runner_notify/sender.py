"""The notifier of one spool directory: job hooks hand it failures, its thread sends the mail.

The job path (:meth:`Notifier.notify`) only decides (flood control) and writes a spool file; it
never talks to SMTP.  One sender thread per spool directory and process delivers the spool,
retrying with exponential backoff and jitter (tenacity) while the server is down, closes
flood-control windows into digests, and picks up whatever an earlier run left behind when it
starts.  Several workers in one process that share a spool directory share its notifier.
"""

from __future__ import annotations

import atexit
import logging
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, wait_exponential, wait_random

from runner_notify.config import EmailSettings
from runner_notify.flood import FloodGate, State, Verdict
from runner_notify.mail import cap_email, digest_email, failure_email
from runner_notify.report import Failure
from runner_notify.smtp import Refused, Unreachable, close, cut, open_smtp, send
from runner_notify.spool import Spool

log = logging.getLogger(__name__)
RESCAN = 60.0  # look at the spool this often anyway (other processes may share it)
EXIT_WAIT = 5.0  # at interpreter exit, let a send in progress finish for this long


class Notifier:
    """Accepts failures quickly and durably; delivers them in its own thread."""

    def __init__(self, cfg: EmailSettings, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spool = Spool(cfg.spool_dir)
        self.gate = FloodGate(cfg.spool_dir)
        self.delivered = 0
        self.passes = 0  # delivery passes over the spool, successful or not
        self.failed_passes = 0
        self.last_error: str | None = None
        self._cv = threading.Condition()
        self._kicked = False
        self._halted = True
        self._thread: threading.Thread | None = None
        self._linger: threading.Timer | None = None
        self._conn: smtplib.SMTP | None = None

    # --- the job path ---------------------------------------------------------------------
    def notify(self, failure: Failure) -> Verdict:
        """Record a failure and spool its e-mail if flood control lets it through now."""
        now = self.clock()
        with self.gate.state() as state:
            self._close_windows(state, now)
            verdict = state.admit(failure, now, self.cfg.window, self.cfg.max_per_hour)
            if verdict is Verdict.SEND:
                note = withheld_note(state.take_withheld())
                self.spool.put(failure_email(failure, self.cfg, note))
            elif verdict is Verdict.CAPPED:
                self._cap_reached(state, now)
        log.debug("notify: %s %s %s", failure.job, failure.job_id, verdict.value)
        self.kick()
        return verdict

    def flush(self) -> None:
        """Close every flood-control window now (its digest is spooled) and wake the sender."""
        with self.gate.state() as state:
            self._close_windows(state, self.clock(), force=True)
        self.kick()

    def kick(self) -> None:
        with self._cv:
            self._kicked = True
            self._cv.notify_all()

    def wait(self, predicate: Callable[[Notifier], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (checked whenever the notifier's state changes)."""
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    # --- the sender thread ----------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self._halted = False
            if self._thread is None:
                self.spool.prepare()
                self._thread = threading.Thread(target=self._run, name="notify-sender", daemon=True)
                self._thread.start()

    def stop(self, linger: float = 0.0) -> None:
        """Stop after ``linger`` seconds: jobs finishing during a worker's grace may spool more."""
        with self._cv:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if linger > 0 and self._thread is not None:
                self._linger = threading.Timer(linger, self.halt, kwargs={"cut_connection": True})
                self._linger.daemon = True
                self._linger.start()
                return
        self.halt(cut_connection=True)

    def halt(self, cut_connection: bool = False) -> threading.Thread | None:
        """Stop the sender before its next message; returns its thread to join."""
        with self._cv:
            self._halted = True
            self._cv.notify_all()
            conn, thread = self._conn, self._thread
        if cut_connection and conn is not None:
            cut(conn)
        return thread

    def _run(self) -> None:
        cfg = self.cfg
        retrying = Retrying(
            retry=retry_if_exception_type(Unreachable),
            wait=wait_exponential(multiplier=cfg.retry_wait, max=cfg.retry_max_wait) + wait_random(0, cfg.retry_wait),
            stop=lambda _state: self._halted,
            sleep=self._nap,
            reraise=True,
        )
        while True:
            try:
                retrying(self._deliver_all)
            except Unreachable:
                pass  # halted while the server was away: the spool keeps the mail
            except Exception:  # noqa: BLE001 - a bug must not end delivery for good
                log.exception("notify: the e-mail sender failed; trying again")
                self._nap(cfg.retry_max_wait)
            idle = self._idle_timeout()
            with self._cv:
                if self._halted:
                    self._thread = None
                    self._cv.notify_all()
                    return
                self._cv.wait_for(lambda: self._kicked or self._halted, idle)

    def _nap(self, seconds: float) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._halted, seconds)

    def _idle_timeout(self) -> float:
        with self.gate.state() as state:
            due = state.next_due()
        return RESCAN if due is None else max(0.0, min(RESCAN, due - self.clock()))

    def _deliver_all(self) -> None:
        with self._cv:
            self._kicked = False
        with self.gate.state() as state:
            self._close_windows(state, self.clock())
        conn: smtplib.SMTP | None = None
        try:
            for path in self.spool.pending():
                if self._halted:
                    return
                with self.spool.claim(path) as item:
                    if item is None:
                        continue  # another sender has it, or sent it already
                    if conn is None:
                        conn = open_smtp(self.cfg, self._hold)
                    try:
                        refused = send(conn, item.message)
                    except Refused as exc:
                        log.error("notify: %s refused for good (%s); kept in %s",
                                  item.message["Subject"], exc, item.reject())
                        continue
                    item.done()  # only now: the server has accepted it
                    self._delivered(item.message["Subject"], item.message["To"], refused)
        except Unreachable as exc:
            self._unreachable(exc)
            raise
        finally:
            if conn is not None:
                close(conn)
                self._hold(None)
            with self._cv:
                self.passes += 1
                self._cv.notify_all()

    def _hold(self, conn: smtplib.SMTP | None) -> None:
        with self._cv:
            self._conn = conn

    def _delivered(self, subject: str, to: str, refused: dict[str, tuple[int, bytes]]) -> None:
        if self.last_error is not None:
            log.info("notify: the SMTP server %s takes mail again", self.cfg.endpoint())
        log.info("notify: delivered %r to %s", subject, to)
        if refused:
            log.warning("notify: %r was refused for %s", subject, ", ".join(refused))
        with self._cv:
            self.delivered += 1
            self.last_error = None
            self._cv.notify_all()

    def _unreachable(self, exc: Unreachable) -> None:
        first = self.last_error is None
        with self._cv:
            self.failed_passes += 1
            self.last_error = str(exc)
            self._cv.notify_all()
        waiting = len(self.spool.pending())
        (log.warning if first else log.debug)(
            "notify: cannot deliver e-mail via %s: %s; %d e-mail(s) spooled in %s, retrying in "
            "the background", self.cfg.endpoint(), exc, waiting, self.spool.root,
        )

    # --- flood control --------------------------------------------------------------------
    def _close_windows(self, state: State, now: float, force: bool = False) -> None:
        for window in state.due(now, force):
            if window["count"] == 0:
                continue
            window["closes"] = min(window["closes"], now)  # closed early by flush()
            if not self.cfg.digest:
                log.info("notify: %d more %s failure(s) not e-mailed (digest = false)",
                         window["count"], window["job"])
            elif state.allow(now, self.cfg.max_per_hour):
                self.spool.put(digest_email(window, self.cfg, withheld_note(state.take_withheld())))
            else:
                state.withheld += window["count"]
                self._cap_reached(state, now)

    def _cap_reached(self, state: State, now: float) -> None:
        if state.cap_notice_due(now):
            log.warning("notify: more than %d e-mails in an hour; holding the rest back",
                        self.cfg.max_per_hour)
            self.spool.put(cap_email(self.cfg, state.cap_lifts_at()))


def withheld_note(count: int) -> str:
    if not count:
        return ""
    return (f"{count} failure(s) before this one were not e-mailed because the hourly cap was "
            "reached; `runner dead list` shows them.")


class Notifiers:
    """The notifiers of this process, one per spool directory, shared by the workers using it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_dir: dict[Path, Notifier] = {}
        self._users: dict[Path, int] = {}
        self._atexit = False

    def acquire(self, cfg: EmailSettings) -> Notifier:
        key = cfg.spool_dir.resolve()
        with self._lock:
            notifier = self._by_dir.get(key)
            if notifier is None:
                notifier = self._by_dir[key] = Notifier(cfg)
            elif notifier.cfg != cfg:
                log.warning("notify: workers sharing the spool %s have different [notify.email] "
                            "settings; mail goes out with the first one's", key)
            notifier.start()
            self._users[key] = self._users.get(key, 0) + 1
            if not self._atexit:
                atexit.register(self.halt_all)
                self._atexit = True
        return notifier

    def release(self, notifier: Notifier, linger: float) -> None:
        key = notifier.cfg.spool_dir.resolve()
        with self._lock:
            self._users[key] = max(0, self._users.get(key, 0) - 1)
            if self._users[key] == 0:
                notifier.stop(linger)

    def halt_all(self, timeout: float = EXIT_WAIT) -> None:
        """Stop every sender; a message being sent may finish (no cut: no duplicate)."""
        with self._lock:
            threads = [n.halt() for n in self._by_dir.values()]
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))


NOTIFIERS = Notifiers()

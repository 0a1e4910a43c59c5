"""The worker daemon: consume a queue, run each job in a slot, settle it after the result.

Threads: the thread that calls :meth:`Worker.run` owns the broker connection (pika is not
thread-safe); each job slot is a pool thread that supervises one sandboxed child and then hands
the settlement back through :meth:`Broker.settle`.  The broker never hands out more deliveries
than there are slots (prefetch = concurrency), so a delivery always finds a free slot.

Acknowledge late: a job is acknowledged only after its result, retry or dead letter is
published; a worker killed mid-job loses nothing, the broker delivers the job again.

Long jobs on RabbitMQ (whose ``consumer_timeout`` takes back a delivery held too long): after
``handover_after`` the *guardian* thread hands the delivery over: it parks a guard copy of the
job (header ``x-runner-guard``) in a delay queue, then acknowledges the original; it renews
the guard while the job runs, and revokes it (a durable revocation naming only that guard)
once the outcome is published.  A guard copy comes back only if the worker died; a revoked
one is dropped unrun (:mod:`runner.handover`; docs/fleet.md).  The pool's size and its
autoscaler are in :mod:`runner.pool`.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner import headers as bounded
from runner import isolation, workdir
from runner.headers import dead_envelope
from runner.sandbox import reaper
from runner.broker import Broker, Delivery, Envelope, Outgoing, Target, connect
from runner.config import Settings, redact_url
from runner.control import ControlServer
from runner.ratelimit import H_RATE_SLOT, RateLimiter
from runner.errors import ConfigError, JobError, MessageError, RunnerError
from runner.execution import Attempt, Verdict, execute
from runner.sandbox.chain import Jail
from runner.jobs import JobType, tighten
from runner.message import (
    H_ATTEMPT,
    MAX_HISTORY,
    FileData,
    JobMessage,
    JobResult,
    JobStatus,
    progress_envelope,
    retry_envelope,
)
from runner.handover import H_GUARD, Guardian
from runner.isolation import Isolation
from runner.plugins import Plugins
from runner.pool import Pool
from runner.results import StoreError, recorder_for
from runner.results.recorder import Recorder
from runner.sandbox.probe import probe
from runner.sandbox.warm import DEFAULT_MAX_JOBS, WarmSlots
from runner.retry import next_delay, policy_for
from runner.signing import Signed, Verifier, refuse_unsigned, verifier_from_settings
from runner.timing import iso

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0005  # seconds
FORCE_AFTER = 15.0  # seconds cancelled jobs get to let go before the worker stops regardless


class Worker:
    """Consume ``settings.queue`` (bound by ``settings.effective_bindings``) and run its jobs."""

    def __init__(
        self, broker: Broker, plugins: Plugins, settings: Settings, name: str | None = None
    ) -> None:
        self.broker = broker
        self.plugins = plugins
        self.settings = settings
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self.queue = settings.queue
        self.bindings = settings.effective_bindings
        self.concurrency = settings.concurrency  # slots reserved: threads (and uids, as root)
        self.pool = Pool(self, settings.concurrency_min or settings.concurrency,
                         settings.concurrency_min)
        root = settings.workdir or os.path.join(tempfile.gettempdir(), "runner-work")
        # Unique even for two workers of one name (one process): each sweeps the others' work.
        self.workroot = Path(root) / f"{self.name}-{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="slot")
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self.ready = threading.Event()  # set once the worker is consuming
        self.stopped = threading.Event()  # set once run() has returned or failed
        self.processed = 0
        self.forced = False  # stopped with slots that would not end (see _force_after)
        self.jail: Jail | None = None
        self._workroot_lock: int | None = None
        self.warm: WarmSlots | None = None
        self.verifier: Verifier | None = None
        self._jobs: dict[str, JobType] = {}
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.concurrency):
            self._slots.put(slot)
        self.started_at = time.time()
        self._active: dict[str, tuple[str, float]] = {}  # job id -> (job type, started at)
        self._revoked: dict[str, float] = {}  # job id -> revoked until (epoch seconds)
        self._settle_tried: set[int] = set()  # deliveries (by id()) whose settle was attempted
        self._inflight = 0  # deliveries being handled now (waiting, running or settling)
        self.isolation = Isolation()  # suspects of crashing workers run alone (docs/fleet.md)
        self.handed_back = 0  # jobs cancelled at shutdown and put back in the queue
        self._control: ControlServer | None = None
        self.limiter = RateLimiter()
        # Long jobs (docs/fleet.md): only where the broker takes back deliveries held too long.
        needs = bool(getattr(broker, "needs_handover", False))
        self.guardian = Guardian(self, settings.handover_after if needs else 0.0)
        self.results = Recorder(None, settings.broker_url, 0.0)  # opened by run()

    # --- life cycle ---------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until :meth:`stop`; blocks the calling thread.

        Raises:
            ConfigError: a layer named in ``[sandbox] require`` is not available here, or the
                sandbox or signing settings are wrong; nothing was consumed.
        """
        self._start_sandbox()
        # Each job crosses threads several times (connection -> slot -> connection): a thread
        # waiting for the GIL would otherwise wait up to the default 5 ms switch interval.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.results = recorder_for(self.settings)  # before consuming: results go there first
        try:
            self.broker.declare_queue(self.queue, self.bindings)
            self._start_control()
            self.guardian.start()
            self.results.start()
            log.info(
                "worker %s consuming queue %s (bindings %s) with %d slots on %s",
                self.name, self.queue, ", ".join(self.bindings), self.pool.size, redact_url(self.broker.url),
            )
            if self.settings.concurrency_min:
                self.pool.start_autoscaler(self.settings.broker_url, self.settings.scale_idle)
            self.plugins.worker_started(self)
            self.ready.set()
            try:
                self.broker.consume(self.queue, self.pool.size, self._on_delivery)
            finally:
                self.pool.stop()
                self._pool.shutdown(wait=False)
                with self._lock:  # every delivery handled, unless a stuck one forced the stop
                    while self._inflight and not self.forced:
                        self._lock.wait(1.0)
                log.info("worker %s stopped after %d jobs (%d handed back)", self.name,
                         self.processed - self.handed_back, self.handed_back)
        finally:
            self.guardian.stop()
            self.results.close()
            if self._control is not None:
                self._control.stop()
            if self.warm is not None:
                self.warm.close()
            if self.jail is not None:
                self.jail.close()
            if self._workroot_lock is not None:
                workdir.release(self.workroot, self._workroot_lock)
            self.stopped.set()

    def _start_control(self) -> None:
        """Answer remote control (own thread and connection), then load revocations in force."""
        self._control = ControlServer(self, connect(self.broker.url))
        self._control.start()  # first, so that a revocation sent meanwhile is heard
        if not self._control.listening.wait(30):
            log.warning("remote control is not listening yet; revocations may arrive late")
        for job_id, until in self.broker.revocations().items():
            self.revoke([job_id], False, until)

    def _start_sandbox(self) -> None:
        """Process hygiene, the host probe, job profiles and message verification; or refuse."""
        reaper.install()
        self.verifier = verifier_from_settings(
            self.settings.signing, self.settings.base_dir("signing"), self.bindings
        )
        if self.verifier is None:
            refuse_unsigned(self.settings, self.broker.url)
            log.warning(
                "message signing is off ([signing] trusted is not set): anyone who can publish "
                "to the broker can run jobs on this worker"
            )
        for job in self.plugins.jobs:
            table = (self.settings.jobs.get(job.name) or {}).get("sandbox")
            if table is not None and not isinstance(table, dict):
                raise ConfigError(f"[jobs.{job.name}.sandbox]: expected a table")
            self._jobs[job.name] = tighten(job, table) if table else job
        for name, options in self.settings.jobs.items():
            if isinstance(options, dict) and options.get("rate_limit"):
                self.limiter.set(name, str(options["rate_limit"]))
        # Work of a killed worker (its job directories, quota mounts) goes before ours starts.
        self._workroot_lock = workdir.claim(self.workroot)
        workdir.sweep(self.workroot.parent)
        self.jail = Jail(probe(), self.settings.sandbox, self.concurrency, self.workroot)
        log.info("%s", self.jail.describe())
        self._start_warm_slots()

    def _start_warm_slots(self) -> None:
        """Warm slots (docs/security.md) where the sandbox allows them and they are not off."""
        config = self.settings.sandbox
        warm, max_jobs = config.get("warm", True), config.get("max_jobs_per_slot", DEFAULT_MAX_JOBS)
        if not isinstance(warm, bool):
            raise ConfigError("[sandbox] warm: expected true or false")
        if not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or max_jobs < 1:
            raise ConfigError("[sandbox] max_jobs_per_slot: expected a positive integer")
        job_cgroups = config.get("job_cgroups", False)
        if not isinstance(job_cgroups, bool):
            raise ConfigError("[sandbox] job_cgroups: expected true or false")
        why_not = WarmSlots.supported(self.jail) if warm else "[sandbox] warm = false"
        if why_not is not None:
            log.info("warm slots off (%s): every job gets its own exec chain", why_not)
            return
        assert self.jail is not None
        self.warm = WarmSlots(self.jail, self._jobs, self.workroot, self.concurrency, max_jobs, job_cgroups)
        log.info("warm slots on: each slot forks its jobs from a slot host (max_jobs_per_slot %d)", max_jobs)

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called (a SIGTERM or SIGINT, a control ``shutdown``)."""
        return self._stopping.is_set()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking jobs; let running ones finish for ``grace`` seconds, then requeue them.

        Safe to call from a signal handler: the waiting happens in a helper thread.
        """
        if self._stopping.is_set():
            self._cancel_all()  # a second request: do not wait any longer
            self._force_after(FORCE_AFTER)
            return
        self._stopping.set()
        grace = self.settings.grace if grace is None else grace
        threading.Thread(target=self._drain, args=(grace,), name="drain", daemon=True).start()

    def _force_after(self, seconds: float) -> None:
        """If the cancelled jobs have not let go within ``seconds``, stop regardless.

        The last resort against a slot that will not end (a bug, a hung plugin hook): the
        worker stops consuming with those deliveries unsettled, and the broker delivers them
        again; :meth:`run` stops waiting for the slot threads.  ``forced`` tells the caller
        that slot threads may still be running.
        """
        def force() -> None:
            if not self.stopped.wait(seconds):
                with self._lock:
                    stuck = sorted(self._running)
                log.error("jobs did not stop within %gs (%s): leaving them to the broker",
                          seconds, ", ".join(stuck) or "deliveries still unsettled")
                with self._lock:
                    self.forced = True
                    self._lock.notify_all()  # run() stops waiting for the stuck slots
                self.broker.abandon()

        threading.Thread(target=force, name="force-stop", daemon=True).start()

    def _drain(self, grace: float) -> None:
        self.plugins.worker_stopping(self)
        self.broker.stop_consuming()
        with self._lock:
            self._lock.notify_all()  # a suspect waiting to run alone gives up (Worker._admit)
        with self._lock:
            if self._running:
                log.info("waiting up to %gs for %d running jobs", grace, len(self._running))
            finished = self._lock.wait_for(lambda: not self._running, timeout=grace)
        if not finished:
            log.warning("grace period over: stopping running jobs, they go back to the queue")
            self._cancel_all()
        self._force_after(FORCE_AFTER)

    def _cancel_all(self) -> None:
        with self._lock:
            for event in self._running.values():
                event.set()

    # --- one delivery ---------------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        self._pool.submit(self._handle_guarded, delivery)

    def _handle_guarded(self, delivery: Delivery) -> None:
        """Handle one delivery; whatever goes wrong stays with it and never ends the worker.

        The pool would swallow an exception silently and leave the delivery unsettled, its
        slot wedged: an error not settled by then becomes the job's dead letter, with the reason.
        """
        key = id(delivery)
        with self._lock:
            self._inflight += 1
        try:
            self._handle(delivery)
        except BaseException as exc:  # noqa: BLE001 - one message's problem, never the worker's
            job_id = delivery.envelope.message_id or "?"
            log.exception("job %s: handling it failed", job_id)
            with self._lock:
                tried = key in self._settle_tried
            if not tried:
                try:
                    self._reject_unrunnable(delivery, f"worker error: {type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001 - unsettled: the broker delivers it again
                    log.exception("job %s: could not dead-letter it either", job_id)
        finally:
            with self._lock:
                self._settle_tried.discard(key)
                self._inflight -= 1
                self._lock.notify_all()

    def _handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        guard = env.headers.get(H_GUARD)
        if isinstance(guard, str) and self.is_revoked(guard):
            # Before verification: the job finished (its outcome is out) or the guard was renewed.
            log.info("guard copy %s is void (its job finished or renewed its guard): dropped", guard)
            self._settle(delivery, [])
            return
        decoded = self._decode(delivery)
        if decoded is None:
            return
        message, job, params, signed, extra_inputs = decoded
        expires = message.options.expires
        if expires is not None and time.time() > expires:
            # Dead-lettered (not silently acked): job_dead tells monitors, `runner dead` shows it.
            self._reject_unrunnable(delivery, f"expired: not started before {iso(expires)}")
            return
        if self.is_revoked(message.id):
            self._drop_revoked(delivery, message)
            return
        wait, stamp = self.limiter.admit(job.name, message.attempt, env.headers.get(H_RATE_SLOT))
        if wait > 0:
            # Not held here (a slot asleep, an unacked message): back through the broker's delay.
            later = retry_envelope(env, message.attempt, message.history)
            log.debug("job %s %s rate-limited: starts in %.2fs", message.id, job.name, wait)
            self._settle(delivery, [Outgoing(later.with_headers(**{H_RATE_SLOT: stamp}), Target.JOBS, wait)])
            return
        cancel = threading.Event()
        watch = None
        with self._lock:
            admitted = self._admit(message.id, isolation.is_suspect(delivery))
            if admitted:
                self._running[message.id] = cancel
                self._active[message.id] = (job.name, time.time())
                watch = self.guardian.watch(delivery, message.id)
        if not admitted:
            # A suspect runs alone (runner.isolation): back through the broker, count unchanged.
            log.info("job %s %s deferred: a job suspected of crashing workers runs alone",
                     message.id, job.name)
            self._settle(delivery, [Outgoing(env, Target.JOBS, isolation.DEFER_DELAY)], counted=False)
            return
        self._run(delivery, message, job, params, signed, cancel, watch, extra_inputs)

    def _admit(self, job_id: str, suspect: bool) -> bool:
        """May the job start now (called with the lock held)?  A suspect waits to run alone."""
        verdict = self.isolation.admit(job_id, suspect, len(self._running))
        if verdict == isolation.WAIT:
            log.info("job %s is suspected of crashing workers: waiting for %d running jobs to "
                     "end, taking no others, to run it alone", job_id, len(self._running))
            alone = self._lock.wait_for(
                lambda: not self._running or self._stopping.is_set(), isolation.WAIT_ALONE
            )
            if alone and not self._stopping.is_set():
                return True
            self.isolation.release(job_id)
        return verdict == isolation.RUN

    def _run(
        self, delivery: Delivery, message: JobMessage, job: JobType, params: dict[str, Any],
        signed: Signed | None, cancel: threading.Event, watch: Any,
        extra_inputs: tuple[FileData, ...] = (),
    ) -> None:
        """Run an admitted job in a slot, publish its outcome and settle its delivery."""
        env = delivery.envelope
        slot = self._slots.get()
        try:
            log.info("job %s %s attempt %d started", message.id, job.name, message.attempt)
            self.plugins.job_started(job, message, self)
            try:
                attempt = execute(
                    job, message, params, root=self.workroot, worker=self.name,
                    output_limit=self.settings.inline_limit, cancel=cancel, jail=self.jail,
                    slot=slot, on_progress=self._progress_reporter(job, message, env),
                    shared=Path(self.settings.shared_storage) if self.settings.shared_storage else None,
                    warm=self.warm,
                    extra_inputs=extra_inputs,
                )
            except MessageError as exc:
                # An input on shared storage that differs from the (signed) message: never run.
                attempt = Attempt(Verdict.FATAL, JobResult(
                    id=message.id, job=job.name, status=JobStatus.FAILED,
                    attempts=message.attempt, error=str(exc), worker=self.name,
                ))
            except Exception as exc:
                # The worker's side failed (disk full, missing tool): an ordinary failed attempt,
                # so the retry policy and the dead-letter queue apply, never a silent loop.
                log.exception("job %s: the worker could not run it", message.id)
                attempt = Attempt(Verdict.RETRY, JobResult(
                    id=message.id, job=job.name, status=JobStatus.FAILED,
                    attempts=message.attempt, error=f"worker error: {exc}", worker=self.name,
                ))
            verifier = self.verifier if attempt.verdict is not Verdict.CANCELLED else None
            with watch.lock if watch is not None else nullcontext():  # not while handing over
                if watch is not None:
                    watch.finished = True
                if verifier is not None and signed is not None:
                    # Recorded before the outcome goes out: a copy delivered meanwhile is a replay.
                    verifier.settled(env, signed, message.attempt)
                    if not self._finish(delivery, message, job, attempt):
                        verifier.unsettled(env, signed, message.attempt)
                else:
                    self._finish(delivery, message, job, attempt)
        finally:
            self._slots.put(slot)
            with self._lock:
                self.isolation.release(message.id)
                self._running.pop(message.id, None)
                self._active.pop(message.id, None)
                if watch is not None:
                    self.guardian.forget(delivery, watch, message.id)
                self._lock.notify_all()

    def _decode(
        self, delivery: Delivery
    ) -> tuple[JobMessage, JobType, dict[str, Any], Signed | None, tuple[FileData, ...]] | None:
        """Verify, decode and validate; a message that fails is dead-lettered (``None``).

        A group callback also gets its members' results (``members.json``, their outputs) as
        extra inputs; a second copy of a callback that ran already is dropped (``None``).
        """
        env = delivery.envelope
        signed: Signed | None = None
        try:
            deliveries = isolation.deliveries(env)
            if deliveries > self.settings.max_redeliveries:
                raise MessageError(
                    f"delivered {deliveries + 1} times without finishing; it may crash workers"
                )
            if self.verifier is not None:  # before anything reads the body
                signed = self.verifier.verify(env, _attempt_of(env))
            message = JobMessage.from_envelope(env)
            job = self._jobs.get(message.job) or self.plugins.jobs.get(message.job)
            prepared = self.results.prepare(message, job)
            if prepared is None:
                log.info("job %s %s ran already (a second copy of a callback): dropped",
                         message.id, message.job)
                self._settle(delivery, [])
                return None
            message, extra_inputs = prepared
            params = job.validate(message.params, message.files)
            allowed = policy_for(job.retry, message.options.retries).attempts
            if message.attempt > allowed:
                raise MessageError(f"attempt {message.attempt} is past the job's {allowed} attempts")
        except (MessageError, JobError) as exc:
            self._reject_unrunnable(delivery, str(exc))
            return None
        except StoreError as exc:
            log.warning("job %s: the result store is not available (%s); later", env.message_id, exc)
            self._settle(delivery, (), requeue=True)
            return None
        return message, job, params, signed, extra_inputs

    def _progress_reporter(
        self, job: JobType, message: JobMessage, env: Envelope
    ) -> Callable[[dict[str, Any]], None]:
        """Progress the job reports goes to a waiting client and to the job_progress hook."""

        def report(record: dict[str, Any]) -> None:
            if env.reply_to:
                self.broker.reply_now(progress_envelope(message.id, env.reply_to, record))
            self.plugins.job_progress(job, message, record, self)

        return report

    def _finish(self, delivery: Delivery, message: JobMessage, job: JobType, attempt: Attempt) -> bool:
        """Publish the outcome and settle; True when this attempt is done for good here."""
        reply_to = delivery.envelope.reply_to
        if attempt.verdict is Verdict.CANCELLED:
            if self._settle(delivery, (), requeue=True):
                with self._lock:
                    self.handed_back += 1
                log.info("job %s %s attempt %d stopped and handed back to the queue",
                         message.id, job.name, message.attempt)
                reason = "revoked" if self.is_revoked(message.id) else "the worker stopped"
                self.plugins.job_released(job, message, reason, self)
            return False
        entry = {
            "attempt": message.attempt,
            "worker": self.name,
            "finished_at": round(time.time(), 3),
            "duration": round(attempt.result.duration, 3),
            "error": None if attempt.result.error is None else bounded.clip(
                attempt.result.error, bounded.HISTORY_ERROR_BUDGET),
            "exit_code": attempt.result.exit_code,
        }
        history = (*message.history, entry)[-MAX_HISTORY:]
        result = replace(attempt.result, history=history)
        if attempt.verdict is Verdict.SUCCEEDED:
            out = [Outgoing(result.to_envelope(reply_to), Target.REPLY)] if reply_to else []
            if not self.results.record(message, result):  # stored before the ack, or no ack
                self._settle(delivery, (), requeue=True)
                return False
            if self._settle(delivery, out):
                log.info("job %s %s attempt %d succeeded in %.2fs",
                         message.id, job.name, message.attempt, result.duration)
                self.plugins.job_succeeded(job, message, result, self)
                return True
            return False
        delay = None
        if attempt.verdict is Verdict.RETRY:
            delay = next_delay(policy_for(job.retry, message.options.retries), message.attempt, attempt.delay)
        if delay is not None:
            # The delivered envelope itself goes back, so the producer's signature stays valid.
            retry_env = retry_envelope(delivery.envelope, message.attempt + 1, history)
            log.info(
                "job %s %s attempt %d failed (%s); retry in %.1fs",
                message.id, job.name, message.attempt, result.error, delay,
            )
            if self._settle(delivery, [Outgoing(retry_env, Target.JOBS, delay)]):
                self.plugins.job_failed(job, message, result, False, self)
                self.plugins.job_retrying(job, message, result, delay, self)
                return True
            return False
        reason = "attempts exhausted" if attempt.verdict is Verdict.RETRY else "failed for good"
        log.warning("job %s %s dead after %d attempts: %s", message.id, job.name, message.attempt, result.error)
        out = [Outgoing(dead_envelope(delivery.envelope, reason, result), Target.DEAD)]
        if reply_to:
            out.append(Outgoing(result.to_envelope(reply_to), Target.REPLY))
        if not self.results.record(message, result):
            self._settle(delivery, (), requeue=True)
            return False
        if self._settle(delivery, out):
            self.plugins.job_failed(job, message, result, True, self)
            self.plugins.job_dead(job, message, reason, result, self)
            return True
        return False

    # --- remote control (called from the control thread) -----------------------------------
    def busy(self) -> int:
        """Slots running a job now."""
        with self._lock:
            return len(self._running)

    def active_jobs(self) -> list[dict[str, object]]:
        """The jobs running now: id, job type, seconds since they started."""
        now = time.time()
        with self._lock:
            items = list(self._active.items())
        return [{"id": i, "job": j, "runtime": round(now - t, 3)} for i, (j, t) in items]

    def set_binding(self, pattern: str, add: bool) -> None:
        """Note a binding added to or removed from this worker's queue."""
        with self._lock:
            kept = [b for b in self.bindings if b != pattern]
            self.bindings = tuple([*kept, pattern] if add else kept)

    def revoke(
        self, job_ids: list[str], terminate: bool, until: float | None = None
    ) -> dict[str, object]:
        """Never start these jobs (until ``until``); with ``terminate`` stop them if running."""
        until = until or time.time() + self.settings.revoke_expiry
        terminated = []
        with self._lock:
            for job_id in job_ids:
                self._revoked[job_id] = max(until, self._revoked.get(job_id, 0.0))
                if terminate and job_id in self._running:
                    # Cancelled jobs are requeued; the copy is then dropped as revoked.
                    self._running[job_id].set()
                    terminated.append(job_id)
        return {"revoked": len(job_ids), "terminated": terminated}

    def is_revoked(self, job_id: str) -> bool:
        with self._lock:
            until = self._revoked.get(job_id)
            if until is not None and until < time.time():
                del self._revoked[job_id]
                until = None
        return until is not None

    def _drop_revoked(self, delivery: Delivery, message: JobMessage) -> None:
        """Acknowledge a revoked job without running it; a waiting client hears why."""
        log.info("job %s %s revoked: dropped", message.id, message.job)
        out = []
        if delivery.envelope.reply_to:
            result = JobResult(
                id=message.id, job=message.job, status=JobStatus.FAILED,
                attempts=message.attempt - 1, error="revoked", worker=self.name,
            )
            out.append(Outgoing(result.to_envelope(delivery.envelope.reply_to), Target.REPLY))
        if not self.results.record_unrunnable(delivery.envelope, "revoked", True):  # in its group
            self._settle(delivery, (), requeue=True)
            return
        if self._settle(delivery, out):
            self.plugins.job_revoked(self._jobs.get(message.job), message, self)

    def _reject_unrunnable(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter a message that cannot run at all, with the reason; never run it."""
        env = delivery.envelope
        log.error("message %s dead-lettered: %s", env.message_id or "?", reason)
        out = [Outgoing(dead_envelope(env, reason, None), Target.DEAD)]
        if env.reply_to and env.correlation_id:
            failed = JobResult(
                id=env.correlation_id, job=env.type, status=JobStatus.FAILED, attempts=0,
                error=reason, worker=self.name,
            )
            out.append(Outgoing(failed.to_envelope(env.reply_to), Target.REPLY))
        if not self.results.record_unrunnable(env, reason, _verified(self.verifier, env)):
            self._settle(delivery, (), requeue=True)
            return
        if self._settle(delivery, out):
            try:
                message: JobMessage | None = JobMessage.from_envelope(env)
            except MessageError:
                message = None
            job = self._jobs.get(message.job) if message is not None else None
            self.plugins.job_dead(job, message, reason, None, self)

    def _settle(
        self, delivery: Delivery, out: list[Outgoing] | tuple[()], requeue: bool = False,
        counted: bool = True,
    ) -> bool:
        with self._lock:
            watch = self.guardian.watches.get(id(delivery))
            self._settle_tried.add(id(delivery))
        handed_over = watch is not None and watch.guard is not None
        # A handed-over job survives reconnects: its outcome may wait for the connection to
        # come back (while its guard is parked, up to a handover period).
        deadline = time.monotonic() + (self.guardian.handover_after if handed_over else 0)
        while True:
            try:
                self.broker.settle(delivery, out, requeue=requeue).result(
                    timeout=120 if handed_over else None
                )
                break
            except Exception as exc:
                if handed_over and time.monotonic() < deadline and not self.guardian.stopping:
                    log.warning("could not publish the outcome of %s (%s); trying again",
                                delivery.envelope.message_id, exc)
                    threading.Event().wait(min(5.0, max(0.1, self.guardian.handover_after / 10)))
                    continue
                log.warning(
                    "could not settle %s (%s); the broker will deliver it again",
                    delivery.envelope.message_id, exc,
                )
                return False
        with self._lock:
            self.processed += counted
            if watch is not None:
                watch.settled = True
        return True


def _verified(verifier: Verifier | None, env: Envelope) -> bool:
    """Whether a message is the submitter's own (always, with signing off)."""
    if verifier is None:
        return True
    try:
        verifier.verify(env, _attempt_of(env))
    except RunnerError:
        return False
    return True


def _attempt_of(env: Envelope) -> int:
    value = env.headers.get(H_ATTEMPT, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1

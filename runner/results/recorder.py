"""The worker's side of the result store: record final results, publish callbacks, reconcile.

The worker calls :meth:`Recorder.record` with a job's final result *before* it settles (acks)
the delivery.  When that result completes a group, the recorder publishes the group's callback
(the envelope the submitter signed, stored with the group) on its own broker connection and
confirms it in the store.  A worker killed between the count and the confirmation leaves a
claim that expires; the reconciler thread of any worker then publishes the callback.  The same
thread removes results past ``[results] keep``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runner.broker import Broker, Envelope, connect
from runner.errors import MessageError, RunnerError
from runner.jobs import JobType
from runner.message import FileData, JobMessage, JobResult, JobStatus
from runner.results.callback import callback_files
from runner.results.store import PUBLISH_LEASE, ResultStore, StoreError
from runner.shared import remove

log = logging.getLogger(__name__)
PURGE_EVERY = 60.0


class Recorder:
    """Records results in ``store`` (None: the store is off, every call does nothing)."""

    def __init__(self, store: ResultStore | None, broker_url: str, keep: float,
                 lease: float = PUBLISH_LEASE, shared: Path | None = None) -> None:
        self.store = store
        self.broker_url = broker_url
        self.keep = keep
        self.lease = lease
        self.shared = shared
        self._broker: Broker | None = None
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._purged_at = 0.0

    # --- the job path ---------------------------------------------------------------------
    def record(self, message: JobMessage | None, result: JobResult) -> bool:
        """Store a final result (and count it in its group); False if the store failed.

        Called before the delivery is acknowledged: on False the worker must not ack it.
        """
        if self.store is None:
            return True
        group = message.options.group if message is not None else None
        try:
            callback = self.store.put(result, group, lease=self.lease)
        except StoreError as exc:
            log.error("job %s: could not store its result (%s); it will run again", result.id, exc)
            return False
        if callback is not None and group is not None:
            self._publish(group, callback)
        return True

    def record_unrunnable(self, env: Envelope, reason: str, trusted: bool) -> bool:
        """A job dead-lettered without running: its failure is its result.

        Only a ``trusted`` message (verified, or signing off) counts in its group: a forged
        message must not end another job's place in a group.
        """
        if self.store is None:
            return True
        try:
            message: JobMessage | None = JobMessage.from_envelope(env)
        except MessageError:
            message = None
        job_id = message.id if message is not None else env.message_id
        if not job_id:
            return True
        failed = JobResult(id=job_id, job=message.job if message else env.type,
                           status=JobStatus.FAILED, attempts=message.attempt - 1 if message else 0,
                           error=reason)
        return self.record(message if trusted else None, failed)

    def prepare(self, message: JobMessage, job: JobType) -> tuple[JobMessage, tuple[FileData, ...]] | None:
        """A group's callback gets its members' results as inputs; None: it already ran.

        Raises:
            StoreError: the store cannot be read now (the job should be tried again later).
            MessageError: the group this callback names is not in the store (expired?).
        """
        after = message.options.after
        if after is None or self.store is None:
            return message, ()
        done = self.store.get(message.id)
        if done is not None and done.ok:
            # A second copy (published again by a reconciler): the callback ran already.  A
            # failed one may run again (`runner dead retry` sends it back on purpose).
            return None
        state = self.store.group(after)
        if state is None:
            raise MessageError(f"callback of group {after}, which is not in the result store")
        files, extras = callback_files(self.store, state, job, message.files)
        return message.with_files({**files, **message.files}), extras

    # --- publishing the callback ------------------------------------------------------------
    def _publish(self, group: str, callback: Envelope) -> None:
        """Publish a claimed callback and confirm it; on failure the reconciler retries."""
        assert self.store is not None
        try:
            with self._publish_lock:
                for attempt in (1, 2):  # a connection idle for long may be gone: once more
                    try:
                        if self._broker is None:
                            self._broker = connect(self.broker_url)
                        self._broker.publish(callback)
                        break
                    except Exception:  # noqa: BLE001 - any transport failure: reconnect
                        self._drop_broker()
                        if attempt == 2:
                            raise
            self.store.published(group)
            log.info("group %s complete: callback %s %s published", group, callback.message_id,
                     callback.type)
        except (RunnerError, OSError) as exc:
            log.warning("group %s: callback %s not published yet (%s); a reconciler will",
                        group, callback.message_id, exc)

    def _drop_broker(self) -> None:
        if self._broker is not None:
            try:
                self._broker.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._broker = None

    # --- the reconciler ---------------------------------------------------------------------
    def start(self) -> None:
        if self.store is None:
            return
        self._thread = threading.Thread(target=self._loop, name="results", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the reconciler; close the connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._publish_lock:
            self._drop_broker()
        if self.store is not None:
            self.store.close()

    def _loop(self) -> None:
        period = min(15.0, max(0.2, self.lease / 4))
        while not self._stop.wait(period):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - keep reconciling; the next round tries again
                log.exception("result store reconciler")

    def reconcile(self, now: Callable[[], float] = time.time) -> None:
        """Publish callbacks whose claim expired unconfirmed; purge what is past ``keep``."""
        assert self.store is not None
        for group, callback in self.store.claim_stale(now(), self.lease):
            log.warning("group %s: its callback was never confirmed published; publishing it",
                        group)
            self._publish(group, callback)
        if now() - self._purged_at >= PURGE_EVERY:
            self._purged_at = now()
            for job_id in self.store.purge(now() - self.keep):
                remove(self.shared, job_id, "out")  # outputs kept on the share by reference

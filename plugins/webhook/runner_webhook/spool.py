"""The webhook spool: one JSON file per delivery still owed to a receiver.

A delivery is written to a temporary file, fsynced and renamed into place before the job hook
returns, so a worker that dies afterwards loses nothing: the next worker using the directory
sends it.  A sender *claims* a file with an exclusive ``flock`` and removes it only after the
receiver accepted it, so workers in several processes may share one spool and each delivery is
still sent once.  The spool is bounded: past ``max_entries`` the oldest delivery is dropped,
and so is one older than ``max_age``, each with a log line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
SUFFIX = ".json"
STALE_TMP = 3600.0  # a temporary file this old was left by a crash mid-write


@dataclass
class Delivery:
    """One POST owed: the body is signed again at each try, with that try's timestamp."""

    id: str
    url: str
    event: str
    job_id: str
    body: str
    created_at: float
    tries: int = 0
    next_at: float = 0.0
    last_error: str = ""


class Spool:
    """A directory of delivery files, named so that sorting them puts the oldest first."""

    def __init__(self, root: Path, max_entries: int, max_age: float) -> None:
        self.root = root
        self.max_entries = max_entries
        self.max_age = max_age

    def put(self, url: str, event: str, job_id: str, body: bytes) -> Delivery:
        """Write a delivery durably, dropping the oldest ones if the spool is full."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        delivery = Delivery(uuid.uuid4().hex, url, event, job_id, body.decode(), now, next_at=now)
        pending = self.pending()
        excess = len(pending) - self.max_entries + 1
        for path in pending:
            if excess <= 0:
                break
            if self.drop(path, f"the spool holds {self.max_entries} deliveries (max_entries)"):
                excess -= 1
        self._write(self.root / f"{time.time_ns():020d}-{delivery.id}{SUFFIX}", delivery)
        return delivery

    def pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def read(self, path: Path) -> Delivery | None:
        try:
            return Delivery(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.error("webhook spool: %s is unreadable (%s); removed", path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def drop(self, path: Path, why: str) -> bool:
        """Remove a delivery unless a sender is busy with it; log what was lost."""
        with self.claim(path) as delivery:
            if delivery is None:
                return False
            self.discard(path, delivery, why)
        return True

    def discard(self, path: Path, delivery: Delivery, why: str) -> None:
        """Remove a delivery the caller has claimed, with a log line saying what was lost."""
        path.unlink(missing_ok=True)
        log.warning(
            "webhook %s for job %s to %s dropped after %d tries: %s%s",
            delivery.event, delivery.job_id, delivery.url, delivery.tries, why,
            f" (last error: {delivery.last_error})" if delivery.last_error else "",
        )

    def prepare(self) -> None:
        """Create the directory; clear temporary files a crash left mid-write."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for tmp in self.root.glob(".*.tmp"):
            try:
                if time.time() - tmp.stat().st_mtime > STALE_TMP:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def expired(self, delivery: Delivery, now: float) -> bool:
        return now - delivery.created_at > self.max_age

    @contextmanager
    def claim(self, path: Path) -> Iterator[Delivery | None]:
        """The delivery in ``path`` for this sender alone; ``None`` if another has it or sent it."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:  # sent and removed, or rewritten, by another sender between open and lock?
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            yield self.read(path) if same else None
        finally:
            os.close(fd)  # releases the lock

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _sync_dir(self.root)

    def update(self, path: Path, delivery: Delivery) -> None:
        """Record a failed try (replaces the file atomically, under the caller's claim)."""
        self._write(path, delivery)

    def _write(self, path: Path, delivery: Delivery) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(asdict(delivery)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _sync_dir(self.root)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The webhook spool: one JSON file per delivery still owed to a receiver.

The mechanics are :mod:`runner.spool`'s: a delivery is on disk before the job hook returns, so a
worker that dies afterwards loses nothing (the next worker using the directory sends it), and a
sender claims a file and removes it only after the receiver accepted it, so workers in several
processes may share one spool and each delivery is still sent once.  This layer adds the
:class:`Delivery` record and the bounds: past ``max_entries`` the oldest delivery is dropped,
and so is one older than ``max_age``, each with a log line.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.spool import Spool as FileSpool

log = logging.getLogger(__name__)
SUFFIX = ".json"


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
    """A directory of delivery files, oldest first, bounded by ``max_entries`` and ``max_age``."""

    def __init__(self, root: Path, max_entries: int, max_age: float) -> None:
        self.root = root
        self.max_entries = max_entries
        self.max_age = max_age
        self.files = FileSpool(root, SUFFIX)

    def put(self, url: str, event: str, job_id: str, body: bytes) -> Delivery:
        """Write a delivery durably, dropping the oldest ones if the spool is full."""
        now = time.time()
        delivery = Delivery(uuid.uuid4().hex, url, event, job_id, body.decode(), now, next_at=now)
        pending = self.pending()
        excess = len(pending) - self.max_entries + 1
        for path in pending:
            if excess <= 0:
                break
            if self.drop(path, f"the spool holds {self.max_entries} deliveries (max_entries)"):
                excess -= 1
        self.files.put(_encode(delivery), key=delivery.id)
        return delivery

    def pending(self) -> list[Path]:
        return self.files.pending()

    def read(self, path: Path) -> Delivery | None:
        """The delivery in ``path`` without claiming it; ``None`` if it is gone or unreadable."""
        try:
            return self._decode(path, path.read_bytes())
        except FileNotFoundError:
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
        self.files.done(path)
        log.warning(
            "webhook %s for job %s to %s dropped after %d tries: %s%s",
            delivery.event, delivery.job_id, delivery.url, delivery.tries, why,
            f" (last error: {delivery.last_error})" if delivery.last_error else "",
        )

    def prepare(self) -> None:
        """Create the directory; clear temporary files a crash left mid-write."""
        self.files.prepare()

    def expired(self, delivery: Delivery, now: float) -> bool:
        return now - delivery.created_at > self.max_age

    @contextmanager
    def claim(self, path: Path) -> Iterator[Delivery | None]:
        """The delivery in ``path`` for this sender alone; ``None`` if another has it or sent it."""
        with self.files.claim(path) as data:
            yield None if data is None else self._decode(path, data)

    def done(self, path: Path) -> None:
        self.files.done(path)

    def update(self, path: Path, delivery: Delivery) -> None:
        """Record a failed try (replaces the file atomically, under the caller's claim)."""
        self.files.replace(path, _encode(delivery))

    def _decode(self, path: Path, data: bytes) -> Delivery | None:
        try:
            return Delivery(**json.loads(data))
        except (ValueError, TypeError) as exc:
            log.error("webhook spool: %s is unreadable (%s); removed", path.name, exc)
            path.unlink(missing_ok=True)
            return None


def _encode(delivery: Delivery) -> bytes:
    return json.dumps(asdict(delivery)).encode()

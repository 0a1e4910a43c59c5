"""The spool: one file per e-mail waiting to be sent, durable before anyone is told.

A message is written to a hidden temporary file, fsynced, renamed into place and the directory
fsynced: a crash leaves either the whole message or nothing.  A sender *claims* a file with an
exclusive ``flock`` and removes it only after the SMTP server accepted the message, so several
worker processes may share one spool and each message still goes out once.  Messages the server
refuses for good (5xx for that message) move to ``failed/`` for a person to look at.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

STALE_TMP = 3600.0  # a temporary file this old was left by a crash mid-write


class Spool:
    """A directory of ``*.eml`` files, oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed = root / "failed"

    def prepare(self) -> None:
        """Create the directories and clear temporary files a crash left behind."""
        self.failed.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        for tmp in self.root.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def put(self, msg: EmailMessage) -> Path:
        """Write ``msg`` durably; returns its file."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.eml"
        tmp = self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, msg.as_bytes(policy=policy.SMTP))
            os.fsync(fd)
        finally:
            os.close(fd)
        path = self.root / name
        os.rename(tmp, path)
        _sync_dir(self.root)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.root.glob("*.eml"))

    @contextmanager
    def claim(self, path: Path) -> Iterator[Claimed | None]:
        """The message in ``path`` for this sender alone, or ``None`` if another has it or sent it."""
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
            try:  # sent and removed by another sender between our open and our lock?
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                yield None
                return
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read()
            yield Claimed(self, path, data)
        finally:
            os.close(fd)  # releases the lock


class Claimed:
    """A claimed spool file: :meth:`done` once sent, :meth:`reject` when refused for good."""

    def __init__(self, spool: Spool, path: Path, data: bytes) -> None:
        self.spool = spool
        self.path = path
        self.message: EmailMessage = message_from_bytes(data, policy=policy.default)  # type: ignore[assignment]

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
        _sync_dir(self.spool.root)

    def reject(self) -> Path:
        self.spool.failed.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.spool.failed / self.path.name
        os.rename(self.path, target)
        _sync_dir(self.spool.root)
        return target


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

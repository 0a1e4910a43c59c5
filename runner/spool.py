"""A durable spool: one file per item still owed to someone, shared safely between processes.

Plugins that must not lose work when a worker dies (the notify plugin's e-mails, the webhook
plugin's deliveries) write it here first and send it from a background thread later.

- **Durable before anyone is told.**  :meth:`Spool.put` writes a hidden temporary file, fsyncs
  it, renames it into place and fsyncs the directory: a crash leaves the whole item or none of
  it.  A temporary file a crash left behind is removed by :meth:`Spool.prepare` once it is older
  than ``stale_after`` (a younger one may belong to a writer still at work).
- **Sent once.**  A sender claims a file (:meth:`Spool.claim`) with an exclusive, non-blocking
  ``flock`` and removes it (:meth:`Spool.done`) only after delivery, so several processes may
  share one directory: whoever holds the lock has the item; the others skip it.
- **Oldest first.**  File names start with the write time in nanoseconds, so
  :meth:`Spool.pending` lists them in the order they were put.

What an item means (an e-mail, a JSON document) is the caller's business: the spool stores bytes.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_TMP = 3600.0
"""Seconds after which a temporary file counts as left by a crash mid-write."""


class Spool:
    """A directory of ``*<suffix>`` files, each one item, listed oldest first.

    Args:
        root: the directory; created (mode 0700) when first needed.
        suffix: the file name ending of an item, with its dot (``".eml"``, ``".json"``).
            Other files in ``root`` (state files, subdirectories) are left alone.
        stale_after: seconds after which :meth:`prepare` removes a leftover temporary file.

    Raises:
        ValueError: ``suffix`` does not start with a dot.
    """

    def __init__(self, root: Path, suffix: str, stale_after: float = STALE_TMP) -> None:
        if len(suffix) < 2 or not suffix.startswith("."):
            raise ValueError(f"a spool suffix starts with a dot, like '.json': {suffix!r}")
        self.root = root
        self.suffix = suffix
        self.stale_after = stale_after
        self._stamp_lock = threading.Lock()
        self._last_stamp = 0

    def prepare(self) -> None:
        """Create the directory and remove temporary files a crash left behind.

        Call it when a sender starts.  Only temporary files older than ``stale_after`` go: a
        younger one may be a :meth:`put` in progress in another process.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        for tmp in self.root.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > self.stale_after:
                    tmp.unlink()
            except FileNotFoundError:
                pass  # removed by another process's prepare()

    def put(self, data: bytes, key: str | None = None) -> Path:
        """Store ``data`` as a new item, durably, and return its file.

        Args:
            data: the item.
            key: what makes the file name unique after its time stamp (say, the item's own id,
                so a log line can name the file); 12 random hex digits by default.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / f"{self._stamp():020d}-{key or uuid.uuid4().hex[:12]}{self.suffix}"
        self._write(path, data)
        return path

    def pending(self) -> list[Path]:
        """The items, oldest first, claimed or not; empty if the directory does not exist."""
        try:
            names = [p.name for p in self.root.iterdir()]
        except FileNotFoundError:
            return []
        items = (n for n in names if n.endswith(self.suffix) and not n.startswith("."))
        return [self.root / n for n in sorted(items)]

    @contextmanager
    def claim(self, path: Path) -> Iterator[bytes | None]:
        """Hold the item in ``path`` for this process alone while the ``with`` block runs.

        Yields its bytes, or ``None`` when another process holds it or it is gone (delivered and
        removed by another sender).  Test with ``is None``: an empty item is ``b""``.  Call
        :meth:`done` inside the block once the item is delivered; leaving the block without it
        keeps the item for a later try.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            yield _lock_and_read(fd, path)
        finally:
            os.close(fd)  # releases the lock

    def done(self, path: Path) -> None:
        """Remove a delivered item; call it while holding its claim."""
        path.unlink(missing_ok=True)
        _sync_dir(self.root)

    def replace(self, path: Path, data: bytes) -> None:
        """Replace the item in ``path`` atomically (readers see the old bytes or the new).

        Call it while holding the claim, as the last step of the ``with`` block: the lock stays
        on the old file, so once the new one is in place another process may claim it.
        """
        self._write(path, data)

    def move(self, path: Path, directory: Path) -> Path:
        """Take a claimed item out of the spool into ``directory`` (created if needed), durably.

        For items that must not be tried again but must not be lost either (mail the server
        refused for good, kept for a person to look at).  Returns the new path.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = directory / path.name
        os.rename(path, target)
        _sync_dir(directory)
        _sync_dir(self.root)
        return target

    def _stamp(self) -> int:
        # Strictly increasing within this spool object, so items put in a row list in that order
        # even if two land in the same clock tick or the clock steps back.
        with self._stamp_lock:
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            return self._last_stamp

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk, say: leave no temporary file behind
            raise
        finally:
            os.close(fd)
        _sync_dir(self.root)


def _lock_and_read(fd: int, path: Path) -> bytes | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    # Between our open and our lock another sender may have delivered and removed the file, or
    # replaced it: then the lock we hold is on a file that is no longer the item.
    try:
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return None
    except FileNotFoundError:
        return None
    with open(fd, "rb", closefd=False) as fh:
        return fh.read()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The e-mail spool: one ``*.eml`` file per e-mail waiting to be sent, durable before anyone is told.

The mechanics (atomic writes, claims that let several worker processes share one spool so each
message goes out once, removal only after the SMTP server accepted the message) are
:mod:`runner.spool`'s.  This layer adds the e-mail encoding and ``failed/``: messages the server
refuses for good (5xx for that message) move there for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from runner.spool import Spool as FileSpool


class Spool:
    """A directory of ``*.eml`` files, oldest first, and ``failed/`` beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed = root / "failed"
        self.files = FileSpool(root, ".eml")

    def prepare(self) -> None:
        """Create the directories and clear temporary files a crash left behind."""
        self.files.prepare()
        self.failed.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(self, msg: EmailMessage) -> Path:
        """Write ``msg`` durably; returns its file."""
        return self.files.put(msg.as_bytes(policy=policy.SMTP))

    def pending(self) -> list[Path]:
        return self.files.pending()

    @contextmanager
    def claim(self, path: Path) -> Iterator[Claimed | None]:
        """The message in ``path`` for this sender alone, or ``None`` if another has it or sent it."""
        with self.files.claim(path) as data:
            yield None if data is None else Claimed(self, path, data)


class Claimed:
    """A claimed spool file: :meth:`done` once sent, :meth:`reject` when refused for good."""

    def __init__(self, spool: Spool, path: Path, data: bytes) -> None:
        self.spool = spool
        self.path = path
        self.message: EmailMessage = message_from_bytes(data, policy=policy.default)  # type: ignore[assignment]

    def done(self) -> None:
        self.spool.files.done(self.path)

    def reject(self) -> Path:
        return self.spool.files.move(self.path, self.spool.failed)

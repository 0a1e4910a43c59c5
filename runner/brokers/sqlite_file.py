"""The embedded broker's file: where it is, how it is created and opened, who is woken.

Kept apart from :mod:`runner.brokers.sqlite_store` (the schema and the statements) because the
file is where SQLite's locking meets the rest of the process: nothing here, or anywhere else in
runner, opens, closes, renames or deletes the database or its ``-wal`` / ``-shm`` files except
SQLite itself.  Closing *any* descriptor of a file drops every POSIX lock the process holds on
it (https://sqlite.org/howtocorrupt.html, section 2.2): another connection of the same process
then looks unlocked to other processes, whose last close may checkpoint and delete the WAL
under it (issue 12: a worker stopped seeing other processes' jobs).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse
import uuid
from pathlib import Path

from runner.brokers.sqlite_store import SCHEMA, SCHEMA_VERSION
from runner.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)
SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")


def database_path(url: str) -> Path:
    """The absolute file path a ``sqlite:///absolute/path`` URL names.

    Four slashes (``sqlite:////abs``, what ``f"sqlite:///{abs_path}"`` yields) mean the same.
    """
    parts = urllib.parse.urlsplit(url)
    raw = urllib.parse.unquote(parts.path)
    if parts.scheme.lower() != "sqlite" or parts.netloc or parts.query or not raw.startswith("/"):
        raise ConfigError(
            f"bad sqlite broker URL {url!r}: use sqlite:///absolute/path/broker.sqlite3"
        )
    return Path("/" + raw.lstrip("/"))


def create_private(path: Path) -> None:
    """Create ``path`` as an empty file readable by its owner only, unless it exists.

    Never opens ``path`` itself: closing any descriptor of a file drops every POSIX lock this
    process holds on it, SQLite's among them (https://sqlite.org/howtocorrupt.html, 2.2), and
    another broker object of this process may hold the file open.  The empty file is made
    under a unique name, closed while nobody else knows it, and linked into place, which
    fails harmlessly if someone created ``path`` meanwhile.  (Where hard links are not
    supported, SQLite creates the file with the umask's mode instead.)  SQLite gives the
    ``-wal`` and ``-shm`` files the database's mode.
    """
    if path.exists():
        return
    spare = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.new")
    os.close(os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        os.link(spare, path)
    except FileExistsError:
        pass  # created by another process or thread meanwhile: theirs is the database
    except OSError as exc:
        log.warning("cannot create %s owner-only (%s); SQLite creates it", path, exc)
    finally:
        spare.unlink(missing_ok=True)


def open_database(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open (creating if needed) the broker file in WAL mode, with the schema in place.

    The file is created readable by its owner only: jobs may carry private data.
    """
    if synchronous.upper() not in SYNCHRONOUS_MODES:
        raise ConfigError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
        db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise BrokerError(f"cannot open the sqlite broker at {path}: {exc}") from exc
    try:
        # WAL: readers never block the writer, and a commit is one append to the log.
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerError(f"{path}: the file system does not support WAL mode ({mode})")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise BrokerError(f"{path} was created by a newer runner (schema {version})")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.close()
        raise BrokerError(f"cannot prepare the sqlite broker at {path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


class Signal:
    """Wakes the waiters of one database file in this process when something changes.

    Waiters note :attr:`generation` before looking, then :meth:`wait` for it to move, so a
    change made between the look and the wait is never missed.  Other processes are not
    signalled: their waiters find changes by polling.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change after ``seen``; True if one came."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, max(0.0, timeout))


_signals: dict[str, Signal] = {}
_signals_lock = threading.Lock()


def signal_for(path: Path) -> Signal:
    """The process-wide :class:`Signal` of a database file."""
    key = os.path.realpath(path)
    with _signals_lock:
        return _signals.setdefault(key, Signal())

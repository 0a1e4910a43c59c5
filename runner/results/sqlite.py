"""The result store in an SQLite file: the default on one box (``sqlite:///path/results.sqlite3``).

Several worker processes on the box share the file: WAL mode (readers never block the writer)
and ``BEGIN IMMEDIATE`` for writes, so counting a group member is serialised across processes.
The file is never opened other than through :mod:`sqlite3`: opening and closing it with
``os.open``/``os.close`` would drop the POSIX locks another connection of the same process holds.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from runner.errors import ConfigError
from runner.results.sql import Cursor, SqlStore, schema
from runner.results.store import StoreError

SCHEMA_VERSION = 1


def store_path(url: str) -> Path:
    """The absolute file a ``sqlite:///absolute/path`` URL names."""
    parts = urllib.parse.urlsplit(url)
    raw = urllib.parse.unquote(parts.path)
    if parts.scheme.lower() != "sqlite" or parts.netloc or parts.query or not raw.startswith("/"):
        raise ConfigError(f"bad results URL {url!r}: use sqlite:///absolute/path/results.sqlite3")
    return Path("/" + raw.lstrip("/"))


class SqliteStore(SqlStore):
    """One connection per process, used under a lock (sqlite serialises writers anyway)."""

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.path = store_path(url)
        self._lock = threading.Lock()
        try:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the result store at {self.path}: {exc}") from exc
        try:
            os.chmod(self.path, 0o600)  # results may carry private data; chmod opens nothing
        except OSError:
            pass  # another user's file: its owner decided
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a killed process; only a power cut may
            # lose the last commits, as for any store not fsyncing each one.
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx() as cur:
                cur.execute("PRAGMA user_version")
                version = cur.fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{self.path} was created by a newer runner ({version})")
                for statement in schema("REAL", "BLOB"):
                    cur.execute(statement)
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot prepare the result store at {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Cursor]:
        with self._lock:
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise StoreError(f"result store {self.path}: {exc}") from exc
            try:
                yield cast(Cursor, cur)
                cur.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"result store {self.path}: {exc}") from exc
                raise
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The result store in PostgreSQL, for fleets: ``postgresql://user@host/db`` (psycopg 3).

Install with ``pip install 'runner[postgres]'``.  Every box's workers and clients share the
database; a member's count is one row update (``done = done + 1 ... RETURNING``), which
PostgreSQL serialises on the group's row under the default READ COMMITTED isolation.
A broken connection is reopened on the next call; the failed call raises :class:`StoreError`
(a worker then leaves the job unacknowledged, so the broker delivers it again).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runner.errors import ConfigError
from runner.results.sql import Cursor, SqlStore, schema
from runner.results.store import StoreError

try:
    import psycopg
except ImportError:  # pragma: no cover - the optional extra is missing
    psycopg = None  # type: ignore[assignment]


class _PgCursor(Cursor):
    """``?`` placeholders (shared with SQLite) become psycopg's ``%s``."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:  # type: ignore[override]
        return int(self._cur.rowcount)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self._cur.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())


class PostgresStore(SqlStore):
    """One connection per process, used under a lock."""

    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        if psycopg is None:
            raise ConfigError("a postgresql:// result store needs psycopg: "
                              "pip install 'runner[postgres]'")
        self.url = url
        self._timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._tx() as cur:
            # Two processes creating the schema at once: serialise on an advisory lock.
            cur.execute("SELECT pg_advisory_xact_lock(7316016)")
            for statement in schema("DOUBLE PRECISION", "BYTEA"):
                cur.execute(statement)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=self._timeout,
                                              autocommit=True)
            except psycopg.Error as exc:
                raise StoreError(f"cannot reach the result store {_safe(self.url)}: {exc}") from exc
        return self._conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Cursor]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgCursor(cur)
            except psycopg.Error as exc:
                if conn.broken:
                    self._conn = None
                raise StoreError(f"result store {_safe(self.url)}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"

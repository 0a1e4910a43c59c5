"""Results that outlive the client, and groups that finish (docs/results.md).

:func:`open_store` opens the store a URL names; :func:`store_url` says which URL the settings
mean (``[results] url``, by default an SQLite file beside the embedded broker's, or in the
user's data directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import platformdirs

from runner.config import Settings, parse_duration
from runner.errors import ConfigError
from runner.results.recorder import Recorder
from runner.results.store import (
    PUBLISH_LEASE,
    GroupSpec,
    GroupState,
    GroupStatus,
    Member,
    OnFailure,
    ResultStore,
    StoreError,
)

__all__ = [
    "GroupSpec", "GroupState", "GroupStatus", "Member", "OnFailure", "ResultStore", "StoreError",
    "describe_group", "keep_seconds", "open_store", "recorder_for", "store_url",
]
log = logging.getLogger(__name__)
OFF = ("off", "none", "")
DEFAULT_KEEP = "7d"


def store_url(settings: Settings) -> str | None:
    """The result store's URL, or None when ``[results] url = "off"``."""
    url = settings.results.get("url")
    if url is not None:
        text = str(url).strip()
        return None if text.lower() in OFF else text
    if settings.broker_url.startswith("sqlite:"):
        from runner.results.sqlite import store_path

        broker_file = store_path(settings.broker_url.partition("?")[0])
        return f"sqlite:///{broker_file.parent / 'results.sqlite3'}"
    return f"sqlite:///{Path(platformdirs.user_data_dir('runner')) / 'results.sqlite3'}"


def keep_seconds(settings: Settings) -> float:
    """``[results] keep``: how long results and groups are kept (default 7 days)."""
    return parse_duration(settings.results.get("keep", DEFAULT_KEEP), "[results] keep")


def recorder_for(settings: Settings) -> Recorder:
    """The worker's recorder: the configured store (or none), retention and claim lease.

    Raises:
        StoreError: a configured ``[results] url`` cannot be opened.  The *default* store
            failing (a worker whose home is not writable) is a warning: the worker runs, and
            keeps no results, as before there was a store.
    """
    url = store_url(settings)
    lease = parse_duration(settings.results.get("lease", PUBLISH_LEASE), "[results] lease")
    store = None
    if url is not None:
        try:
            store = open_store(url)
        except (StoreError, ConfigError) as exc:
            if settings.results.get("url") is not None:
                raise
            log.warning("no result store: the default one cannot be opened (%s); results are "
                        "not kept, and groups cannot finish ([results] url)", exc)
    return Recorder(store, settings.broker_url, keep_seconds(settings), lease,
                    Path(settings.shared_storage) if settings.shared_storage else None)


def open_store(url: str) -> ResultStore:
    """Open the store ``url`` names: ``sqlite:///path`` or ``postgresql://…``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from runner.results.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        from runner.results.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"unsupported results URL {url!r}: use sqlite:///path or postgresql://…")


def describe_group(state: GroupState, store: ResultStore) -> dict[str, Any]:
    """A group as a plain record: counts, members, and its callback's state."""
    callback: dict[str, Any] | None = None
    if state.callback_id:
        done = store.get(state.callback_id)
        status = done.status.value if done is not None else {
            "running": "waiting", "complete": "publishing", "published": "queued",
            "skipped": "skipped"}[state.status.value]
        callback = {"id": state.callback_id, "status": status,
                    "error": done.error if done is not None else None}
    return {
        "id": state.id, "status": state.status.value, "total": state.total,
        "succeeded": state.done - state.failed, "failed": state.failed,
        "pending": state.pending, "on_failure": state.on_failure.value,
        "members": [{"id": m.id, "job": m.job, "status": m.status or "pending",
                     "error": m.error} for m in state.members],
        "callback": callback,
    }

"""Flood control: group identical failures in a window, cap the e-mails per hour.

The first failure with a given signature (kind + job type + normalised error) opens a window and
is e-mailed at once; identical failures inside the window are only counted (with their job ids)
and summarised in one digest when it closes.  At most ``max_per_hour`` e-mails (first ones and
digests) go out in any sliding hour; past that a single "cap reached" notice is sent, failures
are still grouped, and what could not be sent is reported by the next e-mail.

The state lives in ``flood.json`` beside the spool, read and written under an exclusive
``flock``: worker processes sharing a spool share the flood control, and a restart keeps it.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner_notify.report import Failure, signature_key

log = logging.getLogger(__name__)
HOUR = 3600.0
MAX_IDS = 100  # job ids a digest lists; its count is always exact


class Verdict(str, enum.Enum):
    SEND = "send"  # first of its kind: e-mail it now
    GROUPED = "grouped"  # counted in an open window, for its digest
    CAPPED = "capped"  # first of its kind, but the hourly cap is reached: counted for the digest


class State:
    """The flood-control record of one spool directory."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.windows: dict[str, dict[str, Any]] = dict(data.get("windows", {}))
        self.sent: list[float] = list(data.get("sent", []))
        self.cap_noticed: float | None = data.get("cap_noticed")
        self.withheld: int = int(data.get("withheld", 0))

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "sent": self.sent, "cap_noticed": self.cap_noticed,
                "withheld": self.withheld}

    def admit(self, failure: Failure, now: float, window: float, cap: int) -> Verdict:
        """Record ``failure``; say whether to e-mail it now."""
        key = signature_key(failure.signature)
        open_window = self.windows.get(key)
        if open_window is not None and now < open_window["closes"]:
            open_window["count"] += 1
            if len(open_window["ids"]) < MAX_IDS:
                open_window["ids"].append(failure.job_id)
            return Verdict.GROUPED
        record = {
            "signature": failure.signature, "job": failure.job, "error": failure.error[:1000],
            "opened": now, "closes": now + window, "count": 0, "ids": [],
            "first_id": failure.job_id, "to": list(failure.to),
        }
        self.windows[key] = record
        if self.allow(now, cap):
            return Verdict.SEND
        record.update(first_id=None, count=1, ids=[failure.job_id])
        return Verdict.CAPPED

    def allow(self, now: float, cap: int) -> bool:
        """Count one e-mail against the hourly cap, if it has room."""
        self.sent = [t for t in self.sent if now - t < HOUR]
        if len(self.sent) >= cap:
            return False
        self.sent.append(now)
        return True

    def cap_notice_due(self, now: float) -> bool:
        """True once per capped hour: the moment to send the single "cap reached" notice."""
        if self.cap_noticed is not None and now - self.cap_noticed < HOUR:
            return False
        self.cap_noticed = now
        return True

    def cap_lifts_at(self) -> float:
        return min(self.sent) + HOUR if self.sent else 0.0

    def due(self, now: float, force: bool = False) -> list[dict[str, Any]]:
        """Remove and return the windows that are over (all of them with ``force``)."""
        over = [k for k, w in self.windows.items() if force or w["closes"] <= now]
        return [self.windows.pop(k) for k in over]

    def next_due(self) -> float | None:
        return min((w["closes"] for w in self.windows.values()), default=None)

    def take_withheld(self) -> int:
        count, self.withheld = self.withheld, 0
        return count


class FloodGate:
    """Transactions on the :class:`State` of one spool directory."""

    def __init__(self, root: Path) -> None:
        self.path = root / "flood.json"
        self._lock_path = root / "flood.lock"
        self._lock = threading.Lock()

    @contextmanager
    def state(self) -> Iterator[State]:
        """The state, locked against other threads and processes; saved when the block ends."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self._load()
                before = json.dumps(state.to_json())
                yield state
                after = json.dumps(state.to_json())
                if after != before:
                    self._save(after)
            finally:
                os.close(fd)

    def _load(self) -> State:
        try:
            return State(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("notify: %s is unreadable (%s); flood control starts afresh", self.path, exc)
            return State()

    def _save(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

"""Events a worker process had not published when it exited, kept for the next process.

A process never waits at exit for its events to reach the broker (``runner run`` returns as
soon as its result is in).  What is still buffered then is written to a durable spool, one file
per exiting process, in the user data directory under a key of the broker URL; the next worker
process on the same broker publishes those files before its own events, then removes them.
Events carry unique ids: one published twice (the thread sent it as the process spooled it)
is dropped by the monitor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import platformdirs

from runner.broker import Broker
from runner.spool import Spool
from runner_monitor import events as ev

log = logging.getLogger(__name__)
SUFFIX = ".jsonl"


def spool_for(broker_url: str, root: Path | None = None) -> Spool:
    """The spool of the events owed to the broker at ``broker_url``."""
    base = root or Path(platformdirs.user_data_dir("runner")) / "monitor-outbox"
    return Spool(base / hashlib.sha256(broker_url.encode()).hexdigest()[:16], SUFFIX)


def keep(spool: Spool, events: Iterable[Mapping[str, Any]]) -> int:
    """Write ``events`` durably into ``spool`` as one item; return how many."""
    lines = [json.dumps(e, separators=(",", ":"), default=str) for e in events]
    if lines:
        spool.put(("\n".join(lines) + "\n").encode())
    return len(lines)


def resend(spool: Spool, broker: Broker) -> int:
    """Publish the events left in ``spool`` by processes that exited, oldest first.

    An item is removed only once all its events are published; an error leaves it (and the
    items after it) for a later try.  Returns how many events were published.
    """
    sent = 0
    for path in spool.pending():
        with spool.claim(path) as data:
            if data is None:
                continue  # another process is sending it
            for line in data.decode(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not {"id", "event", "ts"} <= event.keys():
                    log.warning("skipped an unreadable spooled event in %s", path)
                    continue
                broker.publish_event(ev.to_envelope(event))
                sent += 1
            spool.done(path)
    return sent

"""A job never outlives its worker: SIGKILL at any moment after "started" ends the job too."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from conftest import wait_until


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (any user, any namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_sigkill_at_any_moment_after_started_leaves_no_job_running(client, worker_process, route, cleanup_queues):
    survivors: dict[int, list[int]] = {}
    for step in range(21):  # 0, 5, ..., 100 ms after the worker logs "started"
        delay = step * 0.005
        queue = f"test.{route}.{step}"
        cleanup_queues.append(queue)
        w = worker_process(queue, [f"{route}{step}.#"], "--concurrency", "1")
        # Given a job that would sleep 30 s, marked by its unique argument
        marker = f"30.{uuid.uuid4().int % 10**9:09d}"
        handle = client.submit("napper", {"seconds": marker}, route=f"{route}{step}")
        w.wait_for_log(f"job {handle.id} napper attempt 1 started")
        # When the worker is killed `delay` after it started the job
        time.sleep(delay)  # the moment of the kill is what this test varies, not a wait
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(10)
        # Then nothing of the job is left running shortly after
        try:
            wait_until(lambda: not processes_with(marker), 5, f"the job killed at {delay * 1000:.0f} ms to end")
        except AssertionError:
            survivors[int(delay * 1000)] = processes_with(marker)
            for pid in survivors[int(delay * 1000)]:
                os.kill(pid, signal.SIGKILL)
    assert survivors == {}, f"jobs outlived their worker when it was killed at these ms: {survivors}"

"""Long jobs and RabbitMQ's consumer timeout: neither lost nor run twice (docs/fleet.md).

The broker's ``consumer_timeout`` is lowered at run time to 5 s (and its channel tick, which
decides how often the timeout is checked, to 1 s); both only apply to channels opened after
the change, so they are set before the workers start, and restored in every case.  Workers hand
a running job's delivery over after ``handover_after`` (2 s here), long before that.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from conftest import wait_until


CONSUMER_TIMEOUT_MS = 5000
WORKER_ENV = {"RUNNER_HANDOVER_AFTER": "2s"}  # guard copies are parked for 4 s
GUARD = re.compile(r"\b([0-9a-f]{32}\.guard\.[0-9a-f]{12})\b")


def _rabbit_env(key: str) -> str:
    out = subprocess.run(
        ["rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return out


def _set_rabbit_env(key: str, previous: str) -> None:
    match = re.fullmatch(r"\{ok,\s*(\d+)\}", previous)
    expr = (
        f"application:set_env(rabbit, {key}, {match.group(1)})." if match
        else f"application:unset_env(rabbit, {key})."
    )
    subprocess.run(["rabbitmqctl", "eval", expr], check=True, capture_output=True)


@contextmanager
def short_consumer_timeout(ms: int) -> Iterator[None]:
    """RabbitMQ's consumer_timeout lowered (checked every second) for channels opened inside."""
    saved = {key: _rabbit_env(key) for key in ("consumer_timeout", "channel_tick_interval")}
    try:
        for key, value in (("consumer_timeout", ms), ("channel_tick_interval", 1000)):
            subprocess.run(
                ["rabbitmqctl", "eval", f"application:set_env(rabbit, {key}, {value})."],
                check=True, capture_output=True,
            )
        yield
    finally:
        for key, previous in saved.items():
            _set_rabbit_env(key, previous)




def lines(workers, text: str) -> list[str]:
    return [line for w in workers for line in list(w.lines) if text in line]


def ledger(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []




def test_a_job_longer_than_the_consumer_timeout_runs_once(client, worker_process, route, tmp_path, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    book = tmp_path / "ledger"
    env = {**WORKER_ENV, "RUNNER_TEST_LEDGER": str(book)}
    with short_consumer_timeout(CONSUMER_TIMEOUT_MS):
        # Given two workers, so that a copy RabbitMQ took back would run on the other one
        workers = [worker_process(queue, [f"{route}.#"], "--concurrency", "1", env=env) for _ in range(2)]
        # When a job runs more than twice as long as the consumer timeout
        handle = client.submit("sleeper", {"seconds": 12}, route=route, wait=True)
        started = f"job {handle.id} sleeper attempt 1 started"
        wait_until(lambda: lines(workers, started), 30, "the job to start")
        result = handle.wait(60)
        # Then the waiting client gets its result, from a job that ran exactly once
        assert result.ok and result.value == 12
        assert wait_until(lambda: ledger(book), 10, "the ledger entry")[0].startswith(handle.id)
        guards = {m.group(1) for line in lines(workers, f"job {handle.id} ") for m in GUARD.finditer(line)}
        assert lines(workers, f"job {handle.id} handed over") and len(guards) >= 2, "no handover, no renewal"
        # and every guard copy, the last one included, comes back void and is dropped unrun
        wait_until(
            lambda: guards <= {m.group(1) for line in lines(workers, "is void") for m in GUARD.finditer(line)},
            30, "every guard copy to come back void",
        )
    assert len(lines(workers, started)) == 1
    assert [entry.split()[0] for entry in ledger(book)] == [handle.id]
    assert not lines(workers, "lost the connection") and not lines(workers, "could not")


def test_a_worker_killed_after_the_handover_loses_no_job(client, worker_process, route, tmp_path, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    book = tmp_path / "ledger"
    env = {**WORKER_ENV, "RUNNER_TEST_LEDGER": str(book)}
    with short_consumer_timeout(CONSUMER_TIMEOUT_MS):
        a = worker_process(queue, [f"{route}.#"], env=env)
        handle = client.submit("sleeper", {"seconds": 7}, route=route, wait=True)
        a.wait_for_log(f"job {handle.id} handed over")
        # When the worker dies after it acknowledged the delivery (only the guard copy is left)
        a.stop(signal.SIGKILL)
        b = worker_process(queue, [f"{route}.#"], env=env)
        # Then the guard copy comes back and the job completes on the other worker, once
        b.wait_for_log(f"job {handle.id} sleeper attempt 1 started", timeout=30)
        result = handle.wait(60)
        assert result.ok and result.worker.endswith(f".{b.proc.pid}")
        assert wait_until(lambda: ledger(book), 10, "the ledger entry") == [f"{handle.id} {result.worker}"]
        b.stop()
    assert len(lines([a, b], f"job {handle.id} sleeper attempt 1 started")) == 2  # A's run died with A

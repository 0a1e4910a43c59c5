"""Scheduling: --eta, --expires, delays held by the broker at any distance (real RabbitMQ)."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time

import pytest

from runner.broker import connect
from runner.brokers.amqp import MAX_DELAY_MS, delay_bucket_ms
from runner.errors import JobError
from runner.testing import running_worker
from runner.timing import parse_instant, parse_when

from test_worker_resilience import ledger_ids, wait_until


def log_time(line: str) -> float:
    """The epoch time of a worker log line (``2026-11-29 10:11:12,345 INFO …``, local time)."""
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


# --- the bucket logic: delays of any length -------------------------------------------------
@pytest.mark.parametrize("days", [0.001, 1, 30, 90, 400])
def test_a_long_delay_is_parked_in_bounded_steps_and_never_comes_back_early(days):
    # Given a job due in `days` days, parked the way the consumer parks it
    remaining_ms = int(days * 86_400_000)
    parks, names = 0, set()
    # When it comes back after each park and is parked again for the rest
    while remaining_ms > 50:
        bucket = delay_bucket_ms(remaining_ms / 1000, floor=True)
        # Then no park is longer than what is left, nor than a delay queue can hold
        assert 0 < bucket <= remaining_ms and bucket <= MAX_DELAY_MS
        names.add(bucket)
        remaining_ms -= bucket
        parks += 1
    # and months take a handful of parks, not thousands
    assert parks <= 8 + days / 23


def test_retry_buckets_round_to_two_significant_figures():
    assert delay_bucket_ms(1.234) == 1200 and delay_bucket_ms(98.765) == 99000
    assert delay_bucket_ms(1.25, floor=True) == 1200 and delay_bucket_ms(0.005) == 5


def test_times_people_write():
    now = 1_800_000_000.0
    assert parse_instant("2026-12-01T08:00Z") == dt.datetime(2026, 12, 1, 8, tzinfo=dt.timezone.utc).timestamp()
    assert parse_when("10m", now=now) == now + 600
    assert parse_when("2026-12-01T09:00+01:00", now=now) == parse_instant("2026-12-01T08:00Z")


# --- against RabbitMQ -----------------------------------------------------------------------


def test_expiry_before_the_start_is_refused_at_submit(client, route):
    with pytest.raises(JobError, match="expire before it may start"):
        client.submit("echo", {"text": "x"}, route=route, delay=60, expires="30s")
    with pytest.raises(JobError, match="not an ISO 8601"):
        client.submit("echo", {"text": "x"}, route=route, eta="tomorrow")


def test_a_job_not_started_before_its_expiry_is_dead_lettered(client, plugins, settings_factory, route):
    settings = settings_factory(route, concurrency=1)
    with running_worker(settings, plugins) as worker:
        # Given the only slot busy for longer than the next job's expiry
        busy = client.submit("sleeper", {"seconds": 1.5}, route=route, wait=True)
        late = client.submit("echo", {"text": "late"}, route=route, wait=True, expires=0.5)
        # When the slot frees up
        assert busy.wait(30).ok
        # Then the expired job is not run: the waiting client hears why, it is dead-lettered
        result = late.wait(30, raise_on_failure=False)
        assert not result.ok and result.error.startswith("expired: not started before")
        assert result.attempts == 0
    with connect(settings.broker_url) as broker:
        dead = broker.take_dead(late.id)
    assert dead is not None and dead.headers["x-runner-dead-reason"].startswith("expired")
    assert worker.processed == 2


def test_eta_runs_on_time(client, plugins, settings_factory, route):
    settings = settings_factory(route)
    with running_worker(settings, plugins):
        eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
        handle = client.submit("echo", {"text": "on time"}, route=route, wait=True, eta=eta)
        assert handle.wait(30).ok
        assert time.time() >= eta.timestamp()


def rabbitmq_restart() -> None:
    for step in ("stop_app", "start_app", "await_startup"):
        subprocess.run(["rabbitmqctl", step], check=True, capture_output=True)


def test_a_delay_survives_a_worker_and_a_rabbitmq_restart_and_is_not_run_early(
    client, worker_process, route, tmp_path, cleanup_queues
):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    ledger = tmp_path / "ledger"
    env = {"RUNNER_TEST_LEDGER": str(ledger)}
    # Given a job delayed by 12 s, parked by a worker in a delay queue
    a = worker_process(queue, [f"{route}.#"], env=env)
    handle = client.submit("echo", {"text": "later"}, route=route, delay=12)
    due = time.time() + 12
    a.wait_for_log(f"job {handle.id} parked in runner.delay.{queue}.")
    # When the worker stops and RabbitMQ restarts while the job waits
    assert a.stop(signal.SIGTERM) == 0
    rabbitmq_restart()
    b = worker_process(queue, [f"{route}.#"], env=env)
    # Then the job runs once, on the new worker, and not before it was due
    started = b.wait_for_log(f"job {handle.id} echo attempt 1 started", timeout=60)
    assert log_time(started) >= due - 0.05
    assert wait_until(lambda: ledger_ids(ledger), 30, "the job to finish") == [handle.id]
    assert time.time() < due + 30  # and it was not lost until some later redelivery
    b.stop()
    assert ledger_ids(ledger) == [handle.id]

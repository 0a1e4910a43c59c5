"""Revoked jobs never start, wherever they are; --terminate stops a running one (RabbitMQ)."""

from __future__ import annotations

import time


from runner import control
from runner.broker import connect
from runner.testing import running_worker

from test_worker_resilience import wait_until




def revoke(url: str, job_id: str, terminate: bool = False) -> list[dict]:
    with connect(url) as broker:
        return control.revoke(broker, [job_id], ttl=120, terminate=terminate, timeout=1.0)


def assert_revoked(handle) -> None:
    result = handle.wait(30, raise_on_failure=False)
    assert not result.ok and result.error == "revoked" and result.attempts == 0


def test_a_revoked_queued_job_never_starts(client, plugins, settings_factory, route, amqp_url):
    settings = settings_factory(route, concurrency=1)
    with running_worker(settings, plugins, name=f"w-{route}") as worker:
        # Given a job waiting behind a busy slot
        busy = client.submit("sleeper", {"seconds": 1.5}, route=route, wait=True)
        queued = client.submit("echo", {"text": "never"}, route=route, wait=True)
        # When it is revoked
        replies = [r for r in revoke(amqp_url, queued.id) if r["worker"] == worker.name]
        assert replies and replies[0]["ok"]
        # Then it is dropped when its turn comes, the other job unaffected
        assert busy.wait(30).ok
        assert_revoked(queued)


def test_a_revoked_delayed_job_never_starts(client, plugins, settings_factory, route, amqp_url):
    settings = settings_factory(route)
    with running_worker(settings, plugins):
        handle = client.submit("echo", {"text": "never"}, route=route, wait=True, delay=2)
        revoke(amqp_url, handle.id)
        assert_revoked(handle)


def test_a_job_revoked_while_no_worker_runs_never_starts(client, plugins, settings_factory, route, amqp_url):
    settings = settings_factory(route)
    with connect(amqp_url) as broker:
        broker.declare_queue(settings.queue, settings.effective_bindings)
    # Given a job queued while every worker is offline, revoked then (nobody hears it live)
    handle = client.submit("echo", {"text": "never"}, route=route, wait=True)
    revoke(amqp_url, handle.id)
    # When a worker starts later
    with running_worker(settings, plugins):
        # Then it knows the revocation from the durable list and drops the job
        assert_revoked(handle)
        assert client.submit("echo", {"text": "fine"}, route=route, wait=True).wait(30).ok


def test_terminate_stops_a_running_job(client, plugins, settings_factory, route, amqp_url):
    settings = settings_factory(route)
    with running_worker(settings, plugins, name=f"w-{route}") as worker:
        handle = client.submit("sleeper", {"seconds": 60}, route=route, wait=True)
        wait_until(worker.active_jobs, 30, "the job to start")  # the worker's own record
        started = time.monotonic()
        replies = [r for r in revoke(amqp_url, handle.id, terminate=True) if r["worker"] == worker.name]
        assert replies[0]["result"]["terminated"] == [handle.id]
        assert_revoked(handle)
        assert time.monotonic() - started < 20

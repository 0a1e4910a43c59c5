"""A job that crashes its workers is dead-lettered; a job that merely shared a worker with it
is not blamed (issue 18 item 6; the rule is in docs/fleet.md, "Crash loops")."""

from __future__ import annotations

import signal
import uuid

from conftest import wait_until
from runner.broker import connect


def test_a_job_that_shared_a_worker_with_a_crasher_still_completes(client, worker_process, route, amqp_url, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    env = {"RUNNER_MAX_REDELIVERIES": "2"}
    with connect(amqp_url) as broker:
        broker.declare_queue(queue, [f"{route}.#"])
    # Given an innocent 3 s job, and a poison job that brings down every worker it starts on
    innocent = client.submit("sleeper", {"seconds": 3}, route=route, wait=True)
    poison = client.submit("napper", {"seconds": f"9.{uuid.uuid4().int % 10**6}"}, route=route)
    started, dead = f"job {poison.id} napper attempt 1 started", f"message {poison.id} dead-lettered"
    crashes = 0
    for _ in range(10):
        w = worker_process(queue, [f"{route}.#"], "--concurrency", "2", env=env)
        seen = wait_until(lambda: [line for line in w.lines if started in line or dead in line], 60,
                          "the poison job to start or die")
        if dead in seen[0]:
            break
        w.proc.send_signal(signal.SIGKILL)  # the poison job "crashes" its worker
        w.proc.wait(10)
        crashes += 1
    # Then the poison job is dead-lettered as a crasher after max_redeliveries + 1 crashes
    assert "it may crash workers" in seen[0] and crashes == 3
    # and the job that ran beside it the first time completes, however often it was delivered
    result = innocent.wait(60)
    assert result.ok and result.attempts == 1
    w.stop()


def test_a_suspect_starts_only_once_its_worker_runs_nothing_else(plugins, tmp_path, caplog):
    import logging
    from dataclasses import replace

    from badmsg import body, envelope
    from runner.client import Client
    from runner.testing import running_worker, settings_for, unique_route

    route = unique_route()
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    settings = settings_for(url, route, workdir=str(tmp_path / "work"), concurrency=2)
    with caplog.at_level(logging.INFO, logger="runner.worker"), \
            running_worker(settings, plugins), connect(url) as broker, \
            Client(connect(url), plugins, replace(settings)) as client:
        # Given a worker running a 1.5 s job
        long = client.submit("sleeper", {"seconds": 1.5}, route=route, wait=True)
        wait_until(lambda: any(f"job {long.id} sleeper attempt 1 started" in r.getMessage() for r in caplog.records),
                   30, "the long job to start")
        # When a suspect (delivered before, unsettled) arrives, then a fresh job
        suspect = envelope(body("noop", {"n": 1}, route), route, headers={"x-runner-deliveries": 1})
        broker.publish(suspect)
        wait_until(lambda: any("waiting for 1 running jobs" in r.getMessage() for r in caplog.records), 30,
                   "the suspect to wait")
        fresh = client.submit("noop", {"n": 2}, route=route, wait=True)
        assert long.wait(30).ok and fresh.wait(30).ok

        def when(text: str) -> float:
            return next(r.created for r in caplog.records if text in r.getMessage())

        wait_until(lambda: f"job {suspect.message_id} noop attempt 1 succeeded" in caplog.text, 30,
                   "the suspect to finish")
    # Then the suspect started after the long job ended, and nothing ran beside it
    started = when(f"job {suspect.message_id} noop attempt 1 started")
    ended = when(f"job {suspect.message_id} noop attempt 1 succeeded")
    assert started >= when(f"job {long.id} sleeper attempt 1 succeeded")
    assert not started <= when(f"job {fresh.id} noop attempt 1 started") <= ended

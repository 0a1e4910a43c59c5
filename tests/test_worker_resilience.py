"""Workers that die, stop or lose their broker lose no job (real RabbitMQ, real processes)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


from conftest import wait_until

from runner.broker import connect
from runner.client import Client




def ledger_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []




def test_sigkilled_worker_job_completes_once_elsewhere(client, worker_process, route, tmp_path, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    ledger = tmp_path / "ledger"
    env = {"RUNNER_TEST_LEDGER": str(ledger)}
    # Given a job running on worker A
    a = worker_process(queue, [f"{route}.#"], env=env)
    handle = client.submit("sleeper", {"seconds": 2}, route=route, wait=True)
    a.wait_for_log(f"job {handle.id} sleeper attempt 1 started")
    # When A is killed with SIGKILL mid-job and worker B comes up
    a.stop(signal.SIGKILL)
    b = worker_process(queue, [f"{route}.#"], env=env)
    # Then the job completes on B, exactly once
    result = handle.wait(60)
    assert result.ok and result.worker.endswith(f".{b.proc.pid}")
    # (the ledger is written by B's job_succeeded hook, just after the reply is sent)
    assert wait_until(lambda: ledger_ids(ledger), 10, "the ledger entry") == [handle.id]
    b.stop()
    assert ledger_ids(ledger) == [handle.id]


def test_sigterm_finishes_running_jobs_and_leaves_queued_ones(client, worker_process, route, amqp_url, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"], "--concurrency", "1")
    running = client.submit("sleeper", {"seconds": 1.5}, route=route, wait=True)
    w.wait_for_log(f"job {running.id} sleeper attempt 1 started")
    queued = client.submit("echo", {"text": "later"}, route=route, wait=True)
    # When the worker is asked to stop while a job runs
    assert w.stop(signal.SIGTERM) == 0
    # Then the running job finished and the queued one waits for the next worker
    assert running.wait(10).ok
    with connect(amqp_url) as broker:
        assert broker.queue_depth(queue) == 1
    w2 = worker_process(queue, [f"{route}.#"])
    assert queued.wait(30).ok
    w2.stop()


def test_sigterm_past_grace_requeues_the_job(client, worker_process, route, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"], env={"RUNNER_GRACE": "0.2"})
    handle = client.submit("sleeper", {"seconds": 3}, route=route, wait=True)
    w.wait_for_log(f"job {handle.id} sleeper attempt 1 started")
    assert w.stop(signal.SIGTERM) == 0
    w.wait_for_log("grace period over")
    # The job was not lost: the next worker runs it, as a first attempt again
    worker_process(queue, [f"{route}.#"])
    result = handle.wait(60)
    assert result.ok and result.attempts == 1


def test_broker_restart_during_a_run_loses_no_job(plugins, settings_factory, worker_process, route, tmp_path, amqp_url, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    ledger = tmp_path / "ledger"
    w = worker_process(queue, [f"{route}.#"], "--concurrency", "2", env={"RUNNER_TEST_LEDGER": str(ledger)})
    with Client(connect(amqp_url), plugins, settings_factory("client")) as client:
        ids = [client.submit("sleeper", {"seconds": 0.3}, route=route).id for _ in range(12)]
    w.wait_for_log("sleeper attempt 1 started")
    # When RabbitMQ restarts in the middle of the run
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)
    # Then every job completes; only jobs in flight at the restart may run twice
    done = wait_until(lambda: set(ids) <= set(ledger_ids(ledger)) and ledger_ids(ledger), 90, "all jobs")
    assert set(done) == set(ids)
    assert len(done) <= len(ids) + 2
    w.wait_for_log("reconnecting")

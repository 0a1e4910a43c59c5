"""The worker log tells what happened to each job (issue 18 item 9); killed workers' job
directories do not pile up."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from conftest import wait_until


def test_each_job_logs_its_success_with_its_duration(client, worker_process, route, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"])
    handle = client.submit("sleeper", {"seconds": 0.3}, route=route, wait=True)
    assert handle.wait(30).ok
    line = w.wait_for_log(f"job {handle.id} sleeper attempt 1 succeeded in ")
    assert 0.3 <= float(line.split("succeeded in ")[1].rstrip().rstrip("s")) < 30


def test_a_worker_stopped_past_its_grace_says_it_handed_jobs_back(client, worker_process, route, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"], "--concurrency", "2", env={"RUNNER_GRACE": "0.2"})
    handles = [client.submit("sleeper", {"seconds": 30}, route=route, wait=True) for _ in range(2)]
    for handle in handles:
        w.wait_for_log(f"job {handle.id} sleeper attempt 1 started")
    assert w.stop(signal.SIGTERM) == 0
    w.wait_for_log("stopped after 0 jobs (2 handed back)")


def test_the_job_directories_of_a_killed_worker_are_removed_by_the_next(client, worker_process, route, tmp_path, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    # Given a worker killed while its job runs, leaving the job's directory behind
    a = worker_process(queue, [f"{route}.#"])
    handle = client.submit("sleeper", {"seconds": 30}, route=route, wait=True)
    work = Path(tmp_path / "work")

    def roots_of(pid: int) -> list[Path]:  # a worker's root: <host>.<pid>-<random>
        return list(work.glob(f"{socket.gethostname()}.{pid}-*")) if work.exists() else []

    a.wait_for_log(f"job {handle.id} sleeper attempt 1 started")
    wait_until(lambda: any(r.is_dir() and any(r.iterdir()) for r in roots_of(a.proc.pid)), 10,
               "the job's directory")
    a.stop(signal.SIGKILL)
    # When the next worker starts on the box, the directory goes
    worker_process(queue, [f"{route}.#"])
    wait_until(lambda: not roots_of(a.proc.pid), 30, "the dead worker's job directory to be removed")


def test_a_slot_that_never_ends_does_not_keep_the_worker_from_stopping(client, worker_process, route, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"], env={"RUNNER_GRACE": "0.5"})
    # Given a job whose slot hangs in a plugin hook, before the job even starts
    handle = client.submit("napper", {"seconds": "hang-in-hook"}, route=route)
    w.wait_for_log(f"job {handle.id} napper attempt 1 started")
    # When the worker is asked to stop, it gives up on that slot after a while
    assert w.stop(signal.SIGTERM) == 1
    w.wait_for_log("jobs did not stop within 15s")

"""Priorities: within a queue, a waiting high-priority job goes before waiting low ones."""

from __future__ import annotations



from test_worker_resilience import ledger_ids, wait_until




def test_a_high_priority_job_overtakes_the_waiting_backlog(client, worker_process, route, tmp_path, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    ledger = tmp_path / "ledger"
    w = worker_process(queue, [f"{route}.#"], "--concurrency", "1", env={"RUNNER_TEST_LEDGER": str(ledger)})
    # Given the only slot busy and a backlog of low-priority jobs
    busy = client.submit("sleeper", {"seconds": 1.5}, route=route)
    w.wait_for_log(f"job {busy.id} sleeper attempt 1 started")
    low = [client.submit("noop", {"n": i}, route=route, priority=1).id for i in range(5)]
    # When a high-priority job arrives last
    high = client.submit("noop", {"n": 99}, route=route, priority=9).id
    # Then it runs right after the busy job, before every low one, and the low ones keep order
    wait_until(lambda: len(ledger_ids(ledger)) == 7, 60, "all seven jobs")
    assert ledger_ids(ledger) == [busy.id, high, *low]
    started = [line.split("job ", 1)[1].split()[0] for line in w.lines if " attempt 1 started" in line]
    assert started == [busy.id, high, *low]

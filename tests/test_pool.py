"""Pool size: shrunk and grown by remote control, and by the autoscaler with the queue."""

from __future__ import annotations

from conftest import wait_until

from runner import control
from runner.broker import connect
from runner.testing import running_worker


def intervals(results):
    """(start, end) of each job's last attempt, from its history."""
    out = []
    for r in results:
        last = r.history[-1]
        out.append((last["finished_at"] - last["duration"], last["finished_at"]))
    return out


def most_at_once(spans) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def test_pool_shrink_and_grow_by_remote_control(client, plugins, settings_factory, route, amqp_url):
    with running_worker(settings_factory(route, concurrency=3), plugins, name=f"pool-{route}") as worker:
        with connect(amqp_url) as admin:
            [reply] = control.send(admin, "pool_shrink", {"n": 2}, [worker.name], timeout=5)
        assert reply["ok"] and reply["result"] == {"slots": 1, "max": 3}
        # With one slot offered, two jobs run one after the other
        handles = [client.submit("sleeper", {"seconds": 0.6}, route=route, wait=True) for _ in range(2)]
        assert most_at_once(intervals([h.wait(30) for h in handles])) == 1
        with connect(amqp_url) as admin:
            [reply] = control.send(admin, "pool_grow", {"n": 5}, [worker.name], timeout=5)
            assert reply["result"] == {"slots": 3, "max": 3}  # never past the reserved slots
            [stats] = control.send(admin, "stats", {}, [worker.name], timeout=5)
        assert stats["result"]["slots"] == 3 and stats["result"]["max_slots"] == 3
        handles = [client.submit("sleeper", {"seconds": 0.8}, route=route, wait=True) for _ in range(3)]
        assert most_at_once(intervals([h.wait(30) for h in handles])) >= 2


def test_the_autoscaler_grows_with_the_queue_and_shrinks_when_idle(client, plugins, settings_factory, route):
    settings = settings_factory(route, concurrency=3, concurrency_min=1, scale_idle=1.0)
    with running_worker(settings, plugins) as worker:
        assert worker.pool.size == 1
        # When a backlog builds up, the pool grows and jobs run side by side
        handles = [client.submit("sleeper", {"seconds": 1.5}, route=route, wait=True) for _ in range(6)]
        results = [h.wait(60) for h in handles]
        assert most_at_once(intervals(results)) >= 2
        # And once the queue is empty and slots are idle, it shrinks back to its floor
        wait_until(lambda: worker.pool.size == 1, 20, "the pool to shrink back")

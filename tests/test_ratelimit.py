"""Rate limits per job type: starts spaced by the limit, jobs parked in the broker meanwhile."""

from __future__ import annotations

import pytest

from runner import control
from runner.broker import connect
from runner.client import Client
from runner.errors import ConfigError
from runner.ratelimit import RateLimiter, parse_rate
from runner.testing import running_worker, settings_for


def test_rates_people_write():
    assert parse_rate("10/s") == 10 and parse_rate("120/m") == 2 and parse_rate("36/h") == 0.01
    with pytest.raises(ConfigError):
        parse_rate("ten a minute")


def test_a_limiter_reserves_evenly_spaced_turns():
    limiter = RateLimiter()
    limiter.set("noop", "60/m")
    # Given five jobs arriving at once
    turns = [limiter.admit("noop", 1, None, now=100.0) for _ in range(5)]
    # Then each gets its own turn a second apart, and only the first starts now
    assert [wait for wait, _ in turns] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # and a job coming back with its turn runs at that time without taking another one
    wait, stamp = turns[3]
    assert limiter.admit("noop", 1, stamp, now=100.0 + wait) == (0.0, stamp)
    assert limiter.admit("noop", 2, stamp, now=103.0)[0] == 2.0  # a stamp of an earlier attempt
    assert limiter.admit("echo", 1, None, now=100.0) == (0.0, "")  # not limited


@pytest.fixture(params=["amqp", "sqlite"])
def broker_url(request, tmp_path):
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url")
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


def test_a_rate_limit_set_at_run_time_is_honoured_over_a_window(broker_url, plugins, route, tmp_path):
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"), concurrency=4)
    with running_worker(settings, plugins, name=f"w-{route}") as worker:
        # Given a worker with four free slots, told to start at most 60 noop jobs a minute
        with connect(broker_url) as broker:
            replies = control.send(broker, "rate_limit", {"job": "noop", "rate": "60/m"},
                                   destination=[worker.name], timeout=1.0)
        assert replies[0]["result"] == {"noop": "60/m"}
        # When six arrive at once
        with Client(connect(broker_url), plugins, settings) as client:
            handles = [client.submit("noop", {"n": i}, route=route, wait=True) for i in range(6)]
            results = [h.wait(60) for h in handles]
    # Then all run, about a second apart: never two in the same second
    starts = sorted(r.history[-1]["finished_at"] - r.history[-1]["duration"] for r in results)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.85, gaps
    assert starts[-1] - starts[0] >= 4.5
    if broker_url.startswith("amqp"):
        with connect(broker_url) as broker:
            broker.delete_queue(settings.queue)


def test_a_configured_rate_limit_and_a_bad_one(broker_url, plugins, route, tmp_path):
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"),
                            jobs={"noop": {"rate_limit": "120/m"}})
    with running_worker(settings, plugins) as worker:
        assert worker.limiter.limits() == {"noop": "120/m"}
    bad = settings_for(broker_url, route, workdir=str(tmp_path / "work"), jobs={"noop": {"rate_limit": "lots"}})
    with pytest.raises(Exception, match="not a rate like"):
        with running_worker(bad, plugins):
            pass
    with connect(broker_url) as broker:
        broker.delete_queue(settings.queue)

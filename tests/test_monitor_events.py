"""Lifecycle events: the broker's event contract on both transports, and what workers emit.

Event queues get unique names and are deleted afterwards; waits are on the events themselves,
with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from runner.broker import Broker, Delivery, Envelope, Outgoing, Target, connect
from runner.client import Client
from runner.errors import BrokerError
from runner.plugins import make_plugins
from runner.testing import running_worker, settings_for, unique_route
from runner_monitor import events as ev
from runner_monitor import leftovers
from runner_monitor.emitter import Emitter
from runner_monitor.outbox import WorkerEvents

WAIT = 20.0


@pytest.fixture(params=["sqlite", "amqp"])
def broker_url(request, tmp_path) -> str:
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url")
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def event_queue(broker_url) -> Iterator[str]:
    name = f"test.monitor.{uuid.uuid4().hex[:10]}"
    yield name
    with connect(broker_url) as broker:
        broker.delete_queue(name)


class Reader:
    """``consume_events`` in a thread of its own, collecting what arrives."""

    def __init__(self, url: str, queue: str, fail_first: bool = False) -> None:
        self.broker = connect(url)
        self.got: list[Envelope] = []
        self.cond = threading.Condition()
        self.fail_first = fail_first
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(queue,), daemon=True)
        self.thread.start()

    def _run(self, queue: str) -> None:
        try:
            self.broker.consume_events(queue, self._on)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def _on(self, batch: list[Envelope]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("the store is full")
        with self.cond:
            self.got.extend(batch)
            self.cond.notify_all()

    def wait_for(self, count: int) -> list[Envelope]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.got) >= count or self.error is not None, WAIT)
        assert len(self.got) >= count, f"{len(self.got)} of {count} events arrived ({self.error})"
        return self.got

    def wait_until(self, done) -> list[Envelope]:
        with self.cond:
            ok = self.cond.wait_for(lambda: done(self.got) or self.error is not None, WAIT)
        assert ok and self.error is None, f"not arrived: {len(self.got)} events ({self.error})"
        return self.got

    def close(self) -> None:
        self.broker.stop_consuming()
        self.thread.join(WAIT)
        self.broker.close()


def event(name: str, job: str = "echo", **fields) -> Envelope:
    origin = {"worker": "w1", "host": "h", "pid": 1}
    return ev.to_envelope(ev.new_event(name, origin, 1, job=job, **fields))


# --- the broker's event contract ------------------------------------------------------------------
def test_events_published_while_nobody_reads_wait_in_the_durable_queue(broker_url, event_queue):
    # Given a declared event queue and nobody reading it
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue)
        # When events are published (one before any consumer ever ran)
        sent = [event("job.started", n=i) for i in range(3)]
        for env in sent:
            broker.publish_event(env)
    # Then a consumer that comes later gets all of them, in order
    reader = Reader(broker_url, event_queue)
    try:
        got = reader.wait_for(3)
    finally:
        reader.close()
    assert [e.message_id for e in got] == [e.message_id for e in sent]
    assert got[0].routing_key == "job.started.echo"
    assert ev.from_envelope(got[0])["event"] == "job.started"


def test_an_event_nobody_is_bound_for_is_dropped_without_error(broker_url, event_queue):
    job = f"j{uuid.uuid4().hex[:8]}"
    with connect(broker_url) as broker:
        # When an event is published while no queue is bound for it, nothing fails
        broker.publish_event(event("job.started", job=job))
        # And a queue bound afterwards never sees it: it was dropped, not kept
        broker.declare_event_queue(event_queue, patterns=[f"job.*.{job}"])
        marker = event("job.succeeded", job=job)
        broker.publish_event(marker)
    reader = Reader(broker_url, event_queue)
    try:
        got = reader.wait_for(1)
    finally:
        reader.close()
    assert [e.message_id for e in got] == [marker.message_id]


def test_patterns_select_events(broker_url, event_queue):
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue, patterns=["worker.*"])
        broker.publish_event(event("job.started"))
        broker.publish_event(event("worker.online"))
    reader = Reader(broker_url, event_queue)
    try:
        got = reader.wait_for(1)
    finally:
        reader.close()
    assert [e.routing_key for e in got] == ["worker.online"]


def test_a_full_event_queue_drops_its_oldest_events(broker_url, event_queue):
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue, max_length=3)
        sent = [event("job.started", n=i) for i in range(5)]
        for env in sent:
            broker.publish_event(env)
    reader = Reader(broker_url, event_queue)
    try:
        got = reader.wait_for(3)
    finally:
        reader.close()
    assert [e.message_id for e in got] == [e.message_id for e in sent[2:]]


def test_a_batch_the_consumer_failed_on_is_delivered_again(broker_url, event_queue):
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue)
        sent = event("job.failed")
        broker.publish_event(sent)
    failing = Reader(broker_url, event_queue, fail_first=True)
    failing.thread.join(WAIT)
    failing.broker.close()
    assert isinstance(failing.error, RuntimeError)
    reader = Reader(broker_url, event_queue)
    try:
        assert [e.message_id for e in reader.wait_for(1)] == [sent.message_id]
    finally:
        reader.close()


def test_events_sent_when_settling_reach_the_event_queue(broker_url, event_queue):
    # Given a job queue with one message, and an event queue
    route = unique_route()
    job_queue = f"test.{route}"
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue)
        broker.declare_queue(job_queue, [f"{route}.#"])
        broker.publish(Envelope(b"{}", "m1", "echo", f"{route}.echo"))
        arrived: list[Delivery] = []
        came = threading.Event()

        def on_delivery(delivery: Delivery) -> None:
            arrived.append(delivery)
            came.set()

        consumer = threading.Thread(target=broker.consume, args=(job_queue, 1, on_delivery))
        consumer.start()
        assert came.wait(WAIT), "the job was not delivered"
        # When it is settled with an event
        broker.settle(arrived[0], [Outgoing(event("job.succeeded"), Target.EVENTS)]).result(WAIT)
        broker.stop_consuming()
        consumer.join(WAIT)
        broker.delete_queue(job_queue)
    # Then the event is in the event queue
    reader = Reader(broker_url, event_queue)
    try:
        assert reader.wait_for(1)[0].type == "job.succeeded"
    finally:
        reader.close()


def test_reading_an_undeclared_event_queue_is_an_error(tmp_path):
    with connect(f"sqlite:///{tmp_path / 'b.sqlite3'}") as broker:
        with pytest.raises(BrokerError, match="declare it first"):
            broker.consume_events("nope", lambda batch: None)


# --- what a worker emits --------------------------------------------------------------------------
def test_a_worker_emits_the_life_of_its_jobs_and_itself(broker_url, event_queue, tmp_path):
    # Given a worker with a fast heartbeat, and a monitor queue
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue)
    emitter = Emitter(heartbeat=0.2)
    plugins = make_plugins(load=[], modules=["jobs_plugin"], extra=[emitter])
    route = unique_route()
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"))
    reader = Reader(broker_url, event_queue)
    try:
        with running_worker(settings, plugins, name=f"w-{route}") as worker:
            with Client(connect(broker_url), plugins, settings) as client:
                # When one job succeeds and one fails on both its attempts
                ok = client.submit("echo", {"text": "hi"}, route=route, wait=True).wait(WAIT)
                bad = client.submit("boom", {}, route=route, wait=True).wait(
                    WAIT, raise_on_failure=False
                )
            out = emitter.events_of(worker)
        assert out.join(WAIT), "the event thread did not finish after the worker stopped"
        decoded = [ev.from_envelope(e) for e in reader.wait_until(
            lambda got: any(e.routing_key == "worker.offline" and worker.name.encode() in e.body
                            for e in got))]
        mine = [e for e in decoded if e["worker"] == worker.name]
    finally:
        reader.close()
    with connect(broker_url) as broker:
        broker.delete_queue(settings.queue)
    names = [e["event"] for e in mine]
    # Then the events tell the whole story, in order
    assert names[0] == "worker.online" and names[-1] == "worker.offline"
    assert "worker.heartbeat" in names
    # (per attempt: attempt 2 may start on another slot before attempt 1's last events)
    per_attempt: dict[tuple[str, int], list[str]] = {}
    for e in mine:
        if e["event"].startswith("job."):
            per_attempt.setdefault((e["job_id"], e["attempt"]), []).append(e["event"][4:])
    assert per_attempt == {
        (ok.id, 1): ["received", "started", "succeeded"],
        (bad.id, 1): ["received", "started", "failed", "retried"],
        (bad.id, 2): ["received", "started", "failed", "dead"],
    }
    by_name = {(e["event"], e["job_id"], e.get("attempt")): e for e in mine if "job_id" in e}
    final = by_name[("job.failed", bad.id, 2)]
    assert final["final"] is True and "ValueError: boom" in final["traceback"]
    assert by_name[("job.failed", bad.id, 1)]["final"] is False
    assert by_name[("job.succeeded", ok.id, 1)]["outputs"][0]["name"] == "echo.txt"
    assert by_name[("job.received", ok.id, 1)]["params"] == {"text": "hi", "shout": False}
    assert by_name[("job.dead", bad.id, 2)]["reason"] == "attempts exhausted"
    assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)
    online = mine[0]
    assert online["queue"] == settings.queue and online["concurrency"] == settings.concurrency


def test_secret_params_never_leave_the_worker(tmp_path):
    # Given a job type that declares --dsn secret, and prints and raises with it
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    with connect(url) as broker:
        broker.declare_event_queue("mon")
    plugins = make_plugins(load=[], modules=["monitor_jobs"], extra=[Emitter()])
    route = unique_route()
    settings = settings_for(url, route, workdir=str(tmp_path / "work"))
    dsn = "postgres://app:hunter2-" + uuid.uuid4().hex + "@db/prod"
    reader = Reader(url, "mon")
    try:
        with running_worker(settings, plugins), Client(connect(url), plugins, settings) as c:
            failed = c.submit("leaky", {"dsn": dsn}, route=route, wait=True).wait(
                WAIT, raise_on_failure=False)
            got = reader.wait_until(lambda got: any(e.routing_key == "job.dead.leaky" for e in got))
        assert dsn in failed.traceback  # the client that submitted it may see it
    finally:
        reader.close()
    # Then no event carries it: params, error, traceback, stdout are masked
    bodies = [e.body.decode() for e in got]
    assert not [b for b in bodies if "hunter2" in b]
    events = {ev.from_envelope(e)["event"]: ev.from_envelope(e) for e in got}
    assert events["job.received"]["params"] == {"dsn": "***"}
    assert events["job.failed"]["error"] == "RuntimeError: cannot connect to ***"
    assert "connecting to ***" in events["job.failed"]["stdout"]


def test_secret_looking_params_are_masked():
    assert ev.redact({"size": "200x200", "api_key": "k", "password": "p"}) == {
        "size": "200x200", "api_key": "***", "password": "***",
    }


def test_events_are_buffered_and_the_oldest_dropped_while_the_broker_is_away(tmp_path):
    # Given a worker's event channel whose broker cannot be reached, with room for 5 events
    class Away:
        name, queue, bindings, concurrency, processed = "w-away", "q", ("q.#",), 1, 0
        settings = settings_for(f"sqlite:///{tmp_path / 'x.sqlite3'}", "q")

    def unreachable(url: str) -> Broker:
        raise BrokerError("connection refused")

    worker = Away()
    spool = leftovers.spool_for(worker.settings.broker_url, tmp_path / "spool")
    out = WorkerEvents(worker, heartbeat=60, buffer=5, opener=unreachable, spool=spool)
    out.start()
    # When a worker emits more than that
    started = time.monotonic()
    for i in range(20):
        out.emit("job.started", job="echo", job_id=str(i))
    # Then emitting never waited on the broker, and the oldest events went, counted
    assert time.monotonic() - started < 0.5
    assert out.dropped >= 15
    kept = [e.get("job_id") for e in out._buffer]
    assert kept[-1] == "19" and len(kept) <= 5


def test_a_worker_process_says_offline_as_it_exits(amqp_url, worker_process, cleanup_queues,
                                                  tmp_path):
    # Given a monitor queue and `runner worker` in its own process
    queue = f"test.monitor.{uuid.uuid4().hex[:10]}"
    cleanup_queues.append(queue)
    with connect(amqp_url) as broker:
        broker.declare_event_queue(queue, patterns=["worker.*"])
    route = unique_route()
    cleanup_queues.append(f"test.{route}")
    env = {"PYTHONFAULTHANDLER": "1", "XDG_DATA_HOME": str(tmp_path / "data")}
    wp = worker_process(f"test.{route}", [f"{route}.#"], env=env)
    # When it is stopped with SIGTERM, and exits at once (no job running)
    try:
        assert wp.stop(signal.SIGTERM) == 0
    except subprocess.TimeoutExpired:
        wp.stop(signal.SIGABRT)  # faulthandler prints every thread's stack into the log
        pytest.fail("the worker did not exit after SIGTERM:\n" + "".join(wp.lines))
    # And the next worker process starts (it sends what an exiting one could not)
    worker_process(f"test.{route}", [f"{route}.#"], env=env)
    # Then the last event of the first one says it is offline
    name = f"{socket.gethostname()}.{wp.proc.pid}"
    reader = Reader(amqp_url, queue)
    try:
        got = reader.wait_until(lambda got: any(
            e.routing_key == "worker.offline" and ev.from_envelope(e)["worker"] == name
            for e in got))
    finally:
        reader.close()
    states = [ev.from_envelope(e)["event"] for e in got if ev.from_envelope(e)["worker"] == name]
    assert states[0] == "worker.online" and states[-1] == "worker.offline"


class _Worker:
    """What WorkerEvents reads of a worker."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.queue, self.bindings, self.concurrency, self.processed = name, "q", ("q.#",), 1, 0
        self.settings = settings_for(url, "q")


def test_events_left_at_exit_are_spooled_at_once_and_sent_by_the_next_worker(tmp_path):
    # Given a monitor queue on the embedded broker, and a worker whose events cannot go out
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    with connect(url) as broker:
        broker.declare_event_queue("monitor")
    spool = leftovers.spool_for(url, tmp_path / "spool")

    def unreachable(url: str) -> Broker:
        raise BrokerError("connection refused")

    first = _Worker("w-first", url)
    out = WorkerEvents(first, heartbeat=60, opener=unreachable, spool=spool)
    out.start()
    out.emit("job.started", job="echo", job_id="j1")
    # When its process exits
    spooled = out.spool_at_exit()
    # Then what it had not published is on disk at once (online, the job, offline), the broker
    # never reached
    assert spooled == 3 and len(spool.pending()) == 1
    # When the next worker starts on the same broker
    reader = Reader(url, "monitor")
    second = _Worker("w-second", url)
    nxt = WorkerEvents(second, heartbeat=60, spool=spool)
    nxt.start()
    try:
        got = reader.wait_until(lambda got: any(
            ev.from_envelope(e)["worker"] == "w-second" for e in got))
    finally:
        nxt.stopping()
        assert nxt.join(WAIT)
        reader.close()
    # Then the first worker's events arrive first, in order, and the spool is empty
    names = [(ev.from_envelope(e)["worker"], e.routing_key) for e in got]
    assert names[:4] == [("w-first", "worker.online"), ("w-first", "job.started.echo"),
                         ("w-first", "worker.offline"), ("w-second", "worker.online")]
    assert spool.pending() == []


def test_runner_run_leaves_no_event_behind(tmp_path):
    # Given a monitor queue on the default broker, and `runner run` with every plugin
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    with connect(url) as broker:
        broker.declare_event_queue("monitor")
    env = {**os.environ, "RUNNER_BROKER_URL": url, "RUNNER_PLUGINS": "jobs_plugin",
           "RUNNER_WORKDIR": str(tmp_path / "work"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("RUNNER_LOAD_PLUGINS", None)

    def run() -> str:
        done = subprocess.run([sys.executable, "-m", "runner.cli", "run", "noop", "--json"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["worker"]

    # When it runs a job twice (the second process sends what the first one left, if anything)
    first, second = run(), run()
    # Then the first run's job and its worker's whole life reached the monitor's queue
    reader = Reader(url, "monitor")
    try:
        got = reader.wait_until(lambda got: any(
            ev.from_envelope(e)["worker"] == second for e in got))
    finally:
        reader.close()
    names = [e.routing_key for e in got if ev.from_envelope(e)["worker"] == first]
    assert names[0] == "worker.online" and names[-1] == "worker.offline"
    assert "job.succeeded.noop" in names


def test_a_terminated_job_ends_revoked_in_the_monitor_and_frees_its_slot(broker_url, event_queue, tmp_path):
    from runner import control
    from runner_monitor.history import History

    # Given a worker running a long job, watched by the monitor's events
    with connect(broker_url) as broker:
        broker.declare_event_queue(event_queue)
    emitter = Emitter(heartbeat=0.2)
    plugins = make_plugins(load=[], modules=["jobs_plugin"], extra=[emitter])
    route = unique_route()
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"))
    reader = Reader(broker_url, event_queue)
    history = History(tmp_path / "history.sqlite3")
    try:
        with running_worker(settings, plugins, name=f"w-{route}") as worker:
            with Client(connect(broker_url), plugins, settings) as client:
                long = client.submit("napper", {"seconds": "60"}, route=route)
            reader.wait_until(lambda got: any(b"job.started" in e.body and long.id.encode() in e.body
                                              for e in got))
            # When it is revoked with --terminate
            with connect(broker_url) as broker:
                replies = control.revoke(broker, [long.id], 60.0, terminate=True, timeout=2.0)
            assert any(long.id in (r.get("result") or {}).get("terminated", []) for r in replies)
            got = reader.wait_until(lambda got: any(b"job.revoked" in e.body for e in got))
            history.record(ev.from_envelope(e) for e in got)
            # Then the monitor shows it revoked (not "started" for ever) and the slot free
            job = history.job(long.id)
            assert job is not None and job["state"] == "revoked"
            assert [e["event"] for e in job["events"]][-2:] == ["job.released", "job.revoked"]
            mine = [w for w in history.workers() if w["name"] == worker.name]
            assert mine and mine[0]["busy"] == 0 and mine[0]["running"] in ([], "[]", None)
    finally:
        reader.close()
        with connect(broker_url) as broker:
            broker.delete_queue(settings.queue)


def test_progress_is_kept_in_the_history(tmp_path):
    from runner_monitor.history import History

    # Given a job's events, as a worker sent them: it reported progress twice, then succeeded
    origin = {"worker": "w1", "host": "h", "pid": 1}
    fields = {"job_id": "j1", "job": "stepper", "attempt": 1, "route": "default"}
    events = [ev.new_event("job.started", origin, 1, **fields),
              ev.new_event("job.progress", origin, 2, percent=50.0, message="half", **fields),
              ev.new_event("job.progress", origin, 3, percent=75.0, done=3, total=4, message="more", **fields)]
    history = History(tmp_path / "history.sqlite3")
    history.record(events)
    # Then the job has its latest progress, and its timeline every report
    job = history.job("j1")
    assert job["state"] == "started"
    assert job["progress"] == {"percent": 75.0, "done": 3, "total": 4, "message": "more"}
    assert [e["event"] for e in job["events"]] == ["job.started", "job.progress", "job.progress"]
    # And a new attempt starts with none
    history.record([ev.new_event("job.started", origin, 4, **{**fields, "attempt": 2})])
    assert history.job("j1")["progress"] is None


def test_events_wait_for_a_broker_that_comes_back(tmp_path):
    # Given a worker's event channel whose broker refuses the first three connections
    class Flaky:
        name, queue, bindings, concurrency, processed = "w-flaky", "q", ("q.#",), 1, 0
        settings = settings_for(f"sqlite:///{tmp_path / 'x.sqlite3'}", "q")

    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    with connect(url) as broker:
        broker.declare_event_queue("monitor")
    tries = []

    def opener(_: str) -> Broker:
        tries.append(time.monotonic())
        if len(tries) <= 3:
            raise BrokerError("connection refused")
        return connect(url)

    worker = Flaky()
    out = WorkerEvents(worker, heartbeat=60, buffer=50, opener=opener,
                       spool=leftovers.spool_for(url, tmp_path / "spool"))
    out.start()
    # When it emits an event
    out.emit("job.started", job="echo", job_id="j1")
    # Then it is published once the broker is back, after waits that grow (0.5 s, 1 s, 2 s)
    reader = Reader(url, "monitor")
    try:
        got = reader.wait_until(lambda got: any(b'"j1"' in e.body for e in got))
    finally:
        reader.close()
    assert len(tries) == 4 and len(got) >= 1
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.9 and gaps[2] >= 1.8, gaps
    assert out.dropped == 0

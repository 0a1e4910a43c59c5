"""The embedded broker where it differs from RabbitMQ: several processes share one file.

The transport-neutral behaviour is in test_broker_contract.py; here are the guarantees that come
from leases, polling and the file itself: no double delivery between live processes, recovery
from a killed process, durability, an idle consumer that costs nothing, and sqlite's own choices.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.broker import Delivery, Envelope, Outgoing, Target, connect
from runner.brokers.sqlite import SqliteBroker
from runner.errors import BrokerError, ConfigError
from runner.message import H_DEAD_REASON, H_DELIVERIES

WAIT = 15.0
ROOT = Path(__file__).resolve().parents[1]

# A consumer process.  Modes: "ack" settles each delivery from a slot thread, "hold" never
# settles.  It reports JSON lines: ready, got, acked, and stopped (with its CPU and wall time
# while consuming) once its stdin is closed.
CONSUMER = r"""
import json, resource, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from runner.broker import connect

url, options, queue, prefetch, mode = sys.argv[1:]
prefetch = int(prefetch)
broker = connect(url, **json.loads(options))
slots = ThreadPoolExecutor(prefetch)
out = threading.Lock()

def say(**event):
    with out:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

def work(delivery):
    time.sleep(0.002)  # the job itself
    broker.settle(delivery).result()
    say(event="acked", id=delivery.envelope.message_id)

def on_delivery(delivery):
    say(event="got", id=delivery.envelope.message_id, redelivered=delivery.redelivered)
    if mode == "ack":
        slots.submit(work, delivery)

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

threading.Thread(target=lambda: (sys.stdin.read(), broker.stop_consuming()), daemon=True).start()
say(event="ready")
cpu0, wall0 = cpu(), time.monotonic()
broker.consume(queue, prefetch, on_delivery)
say(event="stopped", cpu=cpu() - cpu0, wall=time.monotonic() - wall0)
broker.close()
"""

PUBLISH_THEN_DIE = r"""
import os, signal, sys
from runner.broker import Envelope, connect
broker = connect(sys.argv[1])
broker.declare_queue(sys.argv[2], ["default.#"])
for i in range(20):
    broker.publish(Envelope(b"job %d" % i, f"m{i}", "resize", "default.resize"))
os.kill(os.getpid(), signal.SIGKILL)
"""


class Child:
    """A consumer process; its events go to a queue shared with its siblings."""

    def __init__(
        self,
        events: queue_mod.Queue[tuple[int, dict[str, Any]]],
        number: int,
        url: str,
        queue: str,
        prefetch: int,
        mode: str,
        **options: Any,
    ) -> None:
        self.number = number
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, url, json.dumps(options), queue, str(prefetch), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue_mod.Queue[tuple[int, dict[str, Any]]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            events.put((self.number, json.loads(line)))

    def stop(self) -> None:
        """Close stdin: the consumer stops and reports."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)


class Events:
    """The events of some consumer processes, awaited with deadlines."""

    def __init__(self) -> None:
        self.queue: queue_mod.Queue[tuple[int, dict[str, Any]]] = queue_mod.Queue()
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def wait_for(self, done: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out; events so far: {self.seen[-20:]}")
            try:
                self.seen.append(self.queue.get(timeout=left))
            except queue_mod.Empty:
                continue

    def count(self, event: str) -> int:
        return sum(1 for _, e in self.seen if e["event"] == event)

    def of(self, event: str) -> list[tuple[int, dict[str, Any]]]:
        return [(n, e) for n, e in self.seen if e["event"] == event]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'broker.sqlite3'}"


@pytest.fixture
def broker(url: str) -> Iterator[SqliteBroker]:
    with SqliteBroker(url) as opened:
        opened.declare_queue("work", ["default.#"])
        yield opened  # type: ignore[misc]


class Children:
    """Consumer processes started by a test, killed at its end."""

    def __init__(self) -> None:
        self.events = Events()
        self.started: list[Child] = []

    def start(self, *args: Any, **options: Any) -> Child:
        child = Child(self.events.queue, len(self.started), *args, **options)
        self.started.append(child)
        return child


@pytest.fixture
def children() -> Iterator[Children]:
    made = Children()
    yield made
    for child in made.started:
        child.kill()


class InProcessConsumer:
    """``consume`` in a thread of this process, deliveries collected in a queue."""

    def __init__(self, broker: SqliteBroker, queue: str = "work", prefetch: int = 10) -> None:
        self.broker = broker
        self.arrived: queue_mod.Queue[Delivery] = queue_mod.Queue()
        self.thread = threading.Thread(
            target=broker.consume, args=(queue, prefetch, self.arrived.put), daemon=True
        )
        self.thread.start()

    def next(self, timeout: float = WAIT) -> Delivery:
        try:
            return self.arrived.get(timeout=timeout)
        except queue_mod.Empty:
            pytest.fail(f"nothing delivered within {timeout}s")


def job(key: str = "default.resize", **fields: Any) -> Envelope:
    fields.setdefault("message_id", uuid.uuid4().hex)
    return Envelope(body=b"{}", type="resize", routing_key=key, **fields)


def test_consumer_processes_never_share_a_message(
    url: str, broker: SqliteBroker, children: Children
) -> None:
    # Given four consumer processes on one file, each settling from slot threads
    events = children.events
    procs = [children.start(url, "work", 3, "ack") for _ in range(4)]
    events.wait_for(lambda: events.count("ready") == 4)
    # When 200 jobs are published
    ids = [f"job-{i}" for i in range(200)]
    for message_id in ids:
        broker.publish(job(message_id=message_id))
    events.wait_for(lambda: events.count("acked") == 200, timeout=60)
    for proc in procs:
        proc.stop()
    events.wait_for(lambda: events.count("stopped") == 4)
    # Then every job was handed out exactly once, never as a redelivery, and settled
    got = events.of("got")
    assert Counter(e["id"] for _, e in got) == Counter(ids)
    assert not [e for _, e in got if e["redelivered"]]
    assert sorted(e["id"] for _, e in events.of("acked")) == sorted(ids)
    assert broker.queue_depth("work") == 0
    # And the work was shared
    assert len({number for number, _ in got}) >= 2


def test_killed_consumer_process_jobs_go_to_another_after_the_lease(
    url: str, broker: SqliteBroker, children: Children
) -> None:
    # Given a consumer process holding three unsettled jobs, with a 1 s lease
    events = children.events
    ids = {f"job-{i}" for i in range(3)}
    for message_id in sorted(ids):
        broker.publish(job(message_id=message_id))
    holder = children.start(url, "work", 3, "hold", lease=1.0)
    events.wait_for(lambda: events.count("got") == 3)
    # And another consumer waiting for work
    with SqliteBroker(url, lease=1.0) as other:
        consumer = InProcessConsumer(other)
        # While the holder lives, its leases are renewed: nothing is handed out twice
        with pytest.raises(queue_mod.Empty):
            consumer.arrived.get(timeout=2.5)
        # When the holder is killed
        holder.kill()
        # Then its jobs come to the other consumer, marked as redelivered
        again = [consumer.next() for _ in range(3)]
        assert {d.envelope.message_id for d in again} == ids
        assert all(d.redelivered and d.envelope.headers[H_DELIVERIES] == 1 for d in again)
        for delivery in again:
            other.settle(delivery).result(WAIT)
        other.stop_consuming()
        consumer.thread.join(WAIT)
    assert broker.queue_depth("work") == 0


def test_idle_consumer_costs_little_cpu_and_still_picks_up_work_promptly(
    url: str, broker: SqliteBroker, children: Children
) -> None:
    # Given a consumer process idling on an empty queue
    events = children.events
    consumer = children.start(url, "work", 2, "ack")
    events.wait_for(lambda: events.count("ready") == 1)
    threading.Event().wait(2.0)  # the idle period being measured, not a synchronisation
    # When another process publishes a job
    started = time.monotonic()
    broker.publish(job(message_id="late"))
    events.wait_for(lambda: events.count("got") == 1)
    latency = time.monotonic() - started
    consumer.stop()
    events.wait_for(lambda: events.count("stopped") == 1)
    # Then it was picked up without a visible delay, and idling used a sliver of a core
    assert latency < 1.0
    stopped = events.of("stopped")[0][1]
    assert stopped["wall"] >= 2.0
    assert stopped["cpu"] < 0.1 * stopped["wall"], stopped


def test_publish_in_the_same_process_wakes_an_idle_consumer(url: str, broker: SqliteBroker) -> None:
    # Given a consumer that looks for other processes' work only every 5 s, idle for a while
    with SqliteBroker(url, poll_interval=5.0) as lazy:
        consumer = InProcessConsumer(lazy)
        with pytest.raises(queue_mod.Empty):
            consumer.arrived.get(timeout=0.7)
        # When this process publishes
        started = time.monotonic()
        broker.publish(job())
        # Then the consumer wakes at once instead of at its next poll
        delivery = consumer.next()
        assert time.monotonic() - started < 0.25
        lazy.settle(delivery).result(WAIT)
        lazy.stop_consuming()
        consumer.thread.join(WAIT)


def test_published_jobs_survive_sigkill_of_the_publisher(url: str) -> None:
    # Given a process that publishes 20 jobs and is killed right after
    done = subprocess.run(
        [sys.executable, "-c", PUBLISH_THEN_DIE, url, "work"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=WAIT * 2,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL
    # Then all 20 are in the file, in order
    with SqliteBroker(url) as broker:
        assert broker.queue_depth("work") == 20
        consumer = InProcessConsumer(broker, prefetch=20)
        got = [consumer.next().envelope for _ in range(20)]
        assert [e.message_id for e in got] == [f"m{i}" for i in range(20)]
        assert got[7].body == b"job 7"
        broker.close()


def test_close_gives_unsettled_deliveries_back_at_once(url: str, broker: SqliteBroker) -> None:
    # Given a consumer with the default 30 s lease holding a job
    broker.publish(job(message_id="held"))
    first = SqliteBroker(url)
    consumer = InProcessConsumer(first)
    consumer.next()
    # When it is closed (from another thread than the one consuming)
    first.close()
    consumer.thread.join(WAIT)
    # Then the job is ready again long before the lease would expire, as a redelivery
    with SqliteBroker(url) as second:
        again = InProcessConsumer(second).next(timeout=5.0)
        assert (again.envelope.message_id, again.redelivered) == ("held", True)
        second.settle(again).result(WAIT)
        second.close()


def test_a_job_that_keeps_killing_consumers_is_dead_lettered(
    url: str, broker: SqliteBroker
) -> None:
    # Given a broker that tolerates one unsettled redelivery
    broker.publish(job(message_id="poison"))
    # When two consumers in a row die holding it
    for redelivered in (False, True):
        dying = SqliteBroker(url, max_redeliveries=1)
        delivery = InProcessConsumer(dying).next()
        assert delivery.redelivered is redelivered
        dying.close()
    # Then the next consumer does not get it: it is dead-lettered with the reason
    with SqliteBroker(url, max_redeliveries=1) as last:
        consumer = InProcessConsumer(last)
        deadline = time.monotonic() + WAIT
        while not broker.dead_letters() and time.monotonic() < deadline:
            threading.Event().wait(0.02)  # polling the observable outcome, with a deadline
        [dead] = broker.dead_letters()
        assert dead.message_id == "poison"
        assert "delivered 2 times" in dead.headers[H_DEAD_REASON]
        assert consumer.arrived.empty()
        last.close()


def test_a_consumer_that_stalls_past_its_lease_loses_the_job_cleanly(
    url: str, broker: SqliteBroker
) -> None:
    # Given a consumer whose consuming thread is stuck (so it cannot renew its 0.5 s lease)
    broker.publish(job(message_id="slow"))
    stuck, unstick = SqliteBroker(url, lease=0.5), threading.Event()
    handed: queue_mod.Queue[Delivery] = queue_mod.Queue()

    def on_delivery(delivery: Delivery) -> None:
        handed.put(delivery)
        unstick.wait(WAIT)

    threading.Thread(target=stuck.consume, args=("work", 1, on_delivery), daemon=True).start()
    late = handed.get(timeout=WAIT)
    # When another consumer takes the job over after the lease expired
    with SqliteBroker(url) as other:
        taken = InProcessConsumer(other).next()
        assert (taken.envelope.message_id, taken.redelivered) == ("slow", True)
        # Then the stalled consumer's settle fails and publishes nothing
        reply = job(message_id="dead-copy")
        failed = stuck.settle(late, [Outgoing(reply, Target.DEAD)])
        with pytest.raises(BrokerError, match="no longer held"):
            failed.result(WAIT)
        assert broker.dead_letters() == []
        # And the new holder settles it for good
        other.settle(taken).result(WAIT)
        other.close()
    unstick.set()
    stuck.close()
    assert broker.queue_depth("work") == 0


def test_queue_depth_counts_a_delayed_job_only_once_due(broker: SqliteBroker) -> None:
    # Given a job delayed by half a second
    broker.publish(job(), delay=0.5)
    # Then it is not ready at first, and is ready after the delay
    assert broker.queue_depth("work") == 0
    deadline = time.monotonic() + WAIT
    while broker.queue_depth("work") == 0 and time.monotonic() < deadline:
        threading.Event().wait(0.05)  # polling the observable outcome, with a deadline
    assert broker.queue_depth("work") == 1


def test_url_forms_and_the_file_created(tmp_path: Path) -> None:
    # Given a URL built the way config builds it (four slashes) into missing directories
    path = tmp_path / "a" / "b" / "broker.sqlite3"
    with connect(f"sqlite:///{path}") as broker:
        broker.declare_queue("q", ["x.#"])
    # Then the file exists, private to its owner
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with connect(f"sqlite://{path}") as same:
        assert same.queue_depth("q") == 0
    # And a relative or host URL is refused with a clear error
    for bad in ("sqlite://relative/broker.sqlite3", "sqlite:broker.sqlite3"):
        with pytest.raises(ConfigError, match="absolute"):
            connect(bad)


def test_consuming_an_undeclared_queue_is_an_error(broker: SqliteBroker) -> None:
    with pytest.raises(BrokerError, match="declare it first"):
        broker.consume("missing", 1, lambda delivery: None)


PUBLISH_AND_EXIT = """
import sys
from runner.broker import Envelope, connect
with connect(sys.argv[1]) as broker:
    broker.publish(Envelope(body=b"{}", message_id=sys.argv[2], type="t", routing_key="q.t"))
"""


def test_a_process_opening_more_broker_objects_still_sees_other_processes(url: str) -> None:
    # Given a process that keeps one broker object and then opens another on the same file (as a
    # worker does for its events and remote control): closing a descriptor of the file outside
    # SQLite would drop every lock the process holds on it (issue 12)
    first = SqliteBroker(url)
    first.declare_queue("q", ["q.#"])
    second = SqliteBroker(url)
    try:
        for i in range(1, 4):
            # When another process publishes a job and exits (its last connection closing)
            subprocess.run([sys.executable, "-c", PUBLISH_AND_EXIT, url, f"job-{i}"], check=True,
                           timeout=60)
            # Then this process sees every one of them, on either object
            assert first.queue_depth("q") == i
            assert second.queue_depth("q") == i
    finally:
        second.close()
        first.close()


def test_a_stop_requested_before_broadcasts_or_events_are_read_is_kept(url: str) -> None:
    # Given stops that arrive before consume_broadcast() / consume_events() run (a SIGTERM at
    # a worker's or a monitor's start)
    with SqliteBroker(url) as setup:
        setup.declare_event_queue("monitor")
    for consume in (
        lambda b: b.consume_broadcast("w", lambda env: None),
        lambda b: b.consume_events("monitor", lambda batch: None),
    ):
        broker = SqliteBroker(url)
        broker.stop_consuming()
        # When they start, they return instead of reading forever
        done = threading.Event()
        thread = threading.Thread(
            target=lambda c=consume, b=broker, d=done: (c(b), d.set()), daemon=True
        )
        thread.start()
        assert done.wait(10), "a stop requested before reading started was lost"
        broker.close()

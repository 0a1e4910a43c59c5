"""The broker contract, kept alike by every transport: the same tests run on sqlite:// and amqp://.

Each test uses its own queues and routing words (a per-test uid), so tests never see each other's
messages on a shared RabbitMQ, and deletes its queues at the end.  Waits are on events with
deadlines; a "nothing arrives" check waits a short quiet period on the delivery queue.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.broker import Broker, Delivery, Envelope, Outgoing, Target, connect
from runner.errors import BrokerError, UnroutableError
from runner.message import H_DEAD_REASON, H_DELIVERIES

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
WAIT = 15.0  # deadline for something that must happen
QUIET = 0.6  # how long "nothing arrives" is watched
ROOT = Path(__file__).resolve().parents[1]

# A consumer in its own process: prints each delivery as a JSON line and never settles it.
HOLDING_CONSUMER = """
import json, sys
from runner.broker import connect
url, options, queue = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
broker = connect(url, **options)
def on_delivery(delivery):
    print(json.dumps({"message_id": delivery.envelope.message_id}), flush=True)
broker.consume(queue, 1, on_delivery)
"""


class Consumer:
    """``broker.consume`` running in its own thread, collecting deliveries."""

    def __init__(self, broker: Broker, queue: str, prefetch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._arrived: queue_mod.Queue[Delivery] = queue_mod.Queue()
        self._unsettled: list[Delivery] = []
        self._thread = threading.Thread(target=self._run, args=(prefetch,), daemon=True)
        self._thread.start()

    def _run(self, prefetch: int) -> None:
        try:
            self.broker.consume(self.queue, prefetch, self._arrived.put)
        except Exception as exc:  # noqa: BLE001 - reported by next() and the checks
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout: float = WAIT) -> Delivery:
        """The next delivery; fails the test when none arrives before the deadline."""
        try:
            delivery = self._arrived.get(timeout=timeout)
        except queue_mod.Empty:
            pytest.fail(f"no delivery from {self.queue} within {timeout}s (error: {self.error!r})")
        self._unsettled.append(delivery)
        return delivery

    def assert_quiet(self, seconds: float = QUIET) -> None:
        """Nothing is delivered for ``seconds``."""
        try:
            extra = self._arrived.get(timeout=seconds)
        except queue_mod.Empty:
            return
        self._unsettled.append(extra)
        pytest.fail(f"unexpected delivery {extra.envelope.message_id} from {self.queue}")

    def settle(
        self, delivery: Delivery, outgoing: list[Outgoing] | tuple[()] = (), requeue: bool = False
    ) -> None:
        """Settle and wait for the broker to confirm it."""
        self._unsettled.remove(delivery)
        assert self.broker.settle(delivery, outgoing, requeue=requeue).result(WAIT) is None

    def stop(self) -> None:
        """Requeue what the test left unsettled, then stop; consume must return."""
        self.broker.stop_consuming()
        for delivery in self._unsettled:
            self.broker.settle(delivery, requeue=True).result(WAIT)
        self._unsettled.clear()
        assert self.done.wait(WAIT), "consume did not return after stop_consuming"


class BrokerFactory:
    """Opens brokers of one transport, names queues and routes uniquely, cleans up."""

    def __init__(self, name: str, url: str, options: dict[str, Any]) -> None:
        self.name = name
        self.url = url
        self.options = options
        self.uid = uuid.uuid4().hex[:10]
        self._opened: list[Broker] = []
        self._consumers: list[Consumer] = []
        self._queues: list[str] = []
        self.admin = self()  # used by the test thread only: declares, publishes, inspects

    def __call__(self) -> Broker:
        broker = connect(self.url, **self.options)
        self._opened.append(broker)
        return broker

    def route(self, word: str) -> str:
        """A route word no other test uses."""
        return f"{word}{self.uid}"

    def queue(self, *bindings: str) -> str:
        name = f"test.{self.uid}.{len(self._queues)}"
        self.admin.declare_queue(name, bindings)
        self._queues.append(name)
        return name

    def consumer(self, queue: str, prefetch: int = 10) -> Consumer:
        consumer = Consumer(self(), queue, prefetch)
        self._consumers.append(consumer)
        return consumer

    def close(self) -> None:
        """Stop consumers, delete queues, close brokers; report the first failure after all."""
        failures: list[BaseException] = []
        for consumer in self._consumers:
            if not consumer.done.is_set():
                try:
                    consumer.stop()
                except (AssertionError, Exception) as exc:  # noqa: BLE001 - re-raised below
                    failures.append(exc)
        for name in self._queues:
            self.admin.delete_queue(name)
        for broker in reversed(self._opened):
            broker.close()
        if failures:
            raise failures[0]


@pytest.fixture(params=["sqlite", "amqp"])
def broker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker' / 'runner.sqlite3'}"
        factory = BrokerFactory("sqlite", url, {"lease": 1.0})
    else:
        factory = BrokerFactory("amqp", AMQP_URL, {})
    try:
        yield factory
    finally:
        factory.close()


def envelope(routing_key: str, **fields: Any) -> Envelope:
    fields.setdefault("message_id", uuid.uuid4().hex)
    return Envelope(body=b'{"n": 1}', type="resize", routing_key=routing_key, **fields)


def drain(factory: BrokerFactory, queue: str, count: int) -> list[Envelope]:
    """Consume and acknowledge ``count`` messages; then the queue must be empty."""
    consumer = factory.consumer(queue)
    got = []
    for _ in range(count):
        delivery = consumer.next()
        consumer.settle(delivery)
        got.append(delivery.envelope)
    consumer.stop()
    assert factory.admin.queue_depth(queue) == 0
    return got


def test_envelope_travels_unchanged(broker_factory: BrokerFactory) -> None:
    # Given a queue bound to a route
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    sent = Envelope(
        body=b"\x00\xffbinary body\n",
        message_id=uuid.uuid4().hex,
        type="resize",
        routing_key=f"{route}.resize",
        headers={"x-runner-protocol": 1, "x-runner-attempt": 2, "who": "me", "ok": True},
        priority=4,
        reply_to="somewhere",
        correlation_id="corr-1",
        timestamp=1_700_000_000,
        content_type="application/octet-stream",
    )
    # When it is published and consumed
    broker_factory.admin.publish(sent)
    delivery = broker_factory.consumer(queue).next()
    # Then every property arrives as sent
    assert delivery.envelope == sent
    assert delivery.redelivered is False
    assert delivery.queue == queue


def test_topic_bindings_route_by_pattern(broker_factory: BrokerFactory) -> None:
    # Given queues bound by "<route>.#", "<route>.*" and an exact key
    default, heavy, exact = (broker_factory.route(w) for w in ("default", "heavy", "exact"))
    q_default = broker_factory.queue(f"{default}.#")
    q_heavy = broker_factory.queue(f"{heavy}.*")
    q_exact = broker_factory.queue(f"{exact}.resize")
    admin = broker_factory.admin
    # When jobs are published with matching keys
    for key in (f"{default}.resize", f"{default}", f"{default}.a.b", f"{heavy}.convert"):
        admin.publish(envelope(key, message_id=key))
    admin.publish(envelope(f"{exact}.resize", message_id="exact"))
    # Then non-matching keys are refused: "*" is exactly one word, exact means exact
    for key in (f"{heavy}.a.b", f"{heavy}", f"{exact}.convert"):
        with pytest.raises(UnroutableError):
            admin.publish(envelope(key))
    # And each queue got exactly its own jobs
    got_default = {e.message_id for e in drain(broker_factory, q_default, 3)}
    assert got_default == {f"{default}.resize", default, f"{default}.a.b"}
    assert [e.message_id for e in drain(broker_factory, q_heavy, 1)] == [f"{heavy}.convert"]
    assert [e.message_id for e in drain(broker_factory, q_exact, 1)] == ["exact"]


def test_every_matching_queue_gets_a_copy(broker_factory: BrokerFactory) -> None:
    # Given two queues whose bindings both match, one of them with two matching bindings
    route = broker_factory.route("default")
    first = broker_factory.queue(f"{route}.#", f"{route}.resize")
    second = broker_factory.queue(f"{route}.*")
    # When one job is published
    job = envelope(f"{route}.resize")
    broker_factory.admin.publish(job)
    # Then each queue holds one copy
    assert drain(broker_factory, first, 1) == [job]
    assert drain(broker_factory, second, 1) == [job]


def test_unroutable_job_is_refused_with_its_route(broker_factory: BrokerFactory) -> None:
    # Given a queue declared twice (idempotent) and then unbound
    route = broker_factory.route("nowhere")
    queue = broker_factory.queue(f"{route}.#")
    broker_factory.admin.declare_queue(queue, [f"{route}.#"])
    broker_factory.admin.publish(envelope(f"{route}.resize"))
    assert broker_factory.admin.queue_depth(queue) == 1  # one binding, one copy
    broker_factory.admin.unbind(queue, f"{route}.#")
    # When a job is published to the route nobody is bound to any more
    with pytest.raises(UnroutableError) as caught:
        broker_factory.admin.publish(envelope(f"{route}.resize"))
    # Then the error names the route, and nothing was queued
    assert caught.value.routing_key == f"{route}.resize"
    assert route in str(caught.value)
    assert broker_factory.admin.queue_depth(queue) == 1


def test_acknowledged_delivery_is_gone(broker_factory: BrokerFactory) -> None:
    # Given a delivered job
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    broker_factory.admin.publish(envelope(f"{route}.resize"))
    consumer = broker_factory.consumer(queue)
    delivery = consumer.next()
    assert broker_factory.admin.queue_depth(queue) == 0  # unacknowledged: not ready
    # When it is settled and the consumer goes away
    consumer.settle(delivery)
    consumer.stop()
    consumer.broker.close()
    # Then it is not delivered again
    assert broker_factory.admin.queue_depth(queue) == 0
    broker_factory.consumer(queue).assert_quiet()


def test_requeued_delivery_comes_back(broker_factory: BrokerFactory) -> None:
    # Given a delivered job
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    job = envelope(f"{route}.resize")
    broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue)
    # When it is settled with requeue
    consumer.settle(consumer.next(), requeue=True)
    # Then it is delivered again, unchanged
    again = consumer.next()
    assert again.envelope.message_id == job.message_id
    assert again.envelope.body == job.body
    consumer.settle(again)
    assert broker_factory.admin.queue_depth(queue) == 0


def test_unsettled_delivery_of_a_dead_consumer_comes_back(broker_factory: BrokerFactory) -> None:
    # Given a consumer process holding a delivery it never settles
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    job = envelope(f"{route}.resize")
    broker_factory.admin.publish(job)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDING_CONSUMER,
            broker_factory.url,
            json.dumps(broker_factory.options),
            queue,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = _read_line(child, WAIT)
        assert json.loads(line) == {"message_id": job.message_id}
    finally:
        # When that process is killed
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    # Then another consumer gets the job, marked as redelivered
    again = broker_factory.consumer(queue).next()
    assert again.envelope.message_id == job.message_id
    assert again.redelivered is True
    assert again.envelope.headers[H_DELIVERIES] == 1


def _read_line(child: subprocess.Popen[str], timeout: float) -> str:
    lines: queue_mod.Queue[str] = queue_mod.Queue()
    assert child.stdout is not None
    threading.Thread(target=lambda: lines.put(child.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    try:
        return lines.get(timeout=timeout)
    except queue_mod.Empty:
        pytest.fail(f"the consumer process printed nothing within {timeout}s")


def test_delayed_job_arrives_after_its_delay(broker_factory: BrokerFactory) -> None:
    # Given a running consumer
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    consumer = broker_factory.consumer(queue)
    # When a job is published with a delay
    job = envelope(f"{route}.resize")
    started = time.monotonic()
    broker_factory.admin.publish(job, delay=1.5)
    # Then it is not delivered early, and is delivered after the delay
    consumer.assert_quiet(0.8)
    delivery = consumer.next()
    assert time.monotonic() - started >= 1.4
    assert delivery.envelope.message_id == job.message_id
    assert delivery.envelope.body == job.body


def test_higher_priority_first_fifo_within_a_priority(broker_factory: BrokerFactory) -> None:
    # Given jobs of mixed priorities waiting in a queue
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    for name, priority in (("a", 0), ("b", 5), ("c", 9), ("d", 5), ("e", 0)):
        broker_factory.admin.publish(
            envelope(f"{route}.resize", message_id=name, priority=priority)
        )
    # When a consumer takes them one at a time
    consumer = broker_factory.consumer(queue, prefetch=1)
    order = []
    for _ in range(5):
        delivery = consumer.next()
        order.append(delivery.envelope.message_id)
        consumer.settle(delivery)
    # Then the highest priority comes first, and equal priorities keep their order
    assert order == ["c", "b", "d", "a", "e"]


def test_prefetch_bounds_unsettled_deliveries(broker_factory: BrokerFactory) -> None:
    # Given five jobs and a consumer with prefetch 2
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    for _ in range(5):
        broker_factory.admin.publish(envelope(f"{route}.resize"))
    consumer = broker_factory.consumer(queue, prefetch=2)
    # When two are delivered, no third comes while they are unsettled
    first, second = consumer.next(), consumer.next()
    consumer.assert_quiet()
    assert broker_factory.admin.queue_depth(queue) == 3
    # Then settling one lets exactly one more through
    consumer.settle(first)
    third = consumer.next()
    consumer.assert_quiet()
    assert len({d.envelope.message_id for d in (first, second, third)}) == 3


def test_a_stop_requested_before_consuming_starts_is_kept(broker_factory: BrokerFactory) -> None:
    # Given a stop that arrives before consume() runs (a SIGTERM right at a worker's start)
    queue = broker_factory.queue(f"{broker_factory.route('early')}.#")
    broker = broker_factory()
    broker.stop_consuming()
    # When consume() starts, it returns instead of consuming forever
    done = threading.Event()
    thread = threading.Thread(target=lambda: (broker.consume(queue, 1, lambda d: None), done.set()))
    thread.start()
    assert done.wait(WAIT), "consume ignored a stop requested before it started"
    thread.join(WAIT)


def test_stop_consuming_waits_for_unsettled_deliveries(broker_factory: BrokerFactory) -> None:
    # Given a consumer holding one delivery, with another job waiting
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    consumer = broker_factory.consumer(queue, prefetch=1)
    broker_factory.admin.publish(envelope(f"{route}.resize"))
    held = consumer.next()
    broker_factory.admin.publish(envelope(f"{route}.resize"))
    # When it is asked to stop
    consumer.broker.stop_consuming()
    # Then consume keeps running until the held delivery is settled, hands out nothing new,
    # and returns once it is settled
    assert not consumer.done.wait(QUIET)
    consumer.settle(held)
    assert consumer.done.wait(WAIT)
    assert consumer.error is None
    assert broker_factory.admin.queue_depth(queue) == 1


def test_requeue_after_stop_consuming_puts_the_job_back(broker_factory: BrokerFactory) -> None:
    # Given a consumer holding a job when it is asked to stop (a worker's shutdown grace)
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    job = envelope(f"{route}.resize")
    broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue, prefetch=2)
    held = consumer.next()
    consumer.broker.stop_consuming()
    # When the unfinished job is requeued
    consumer.settle(held, requeue=True)
    # Then consume returns without handing the job out again, and the job waits in the queue
    assert consumer.done.wait(WAIT), "consume did not return after the last settle"
    consumer.assert_quiet(0.1)
    assert broker_factory.admin.queue_depth(queue) == 1
    assert [e.message_id for e in drain(broker_factory, queue, 1)] == [job.message_id]


def test_reply_reaches_the_waiting_inbox(broker_factory: BrokerFactory) -> None:
    # Given a client waiting on an inbox for the reply to its job
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    client = broker_factory.admin
    inbox = client.reply_inbox()
    job = envelope(f"{route}.resize", reply_to=inbox.address, correlation_id="job-1")
    client.publish(job)
    # When a worker settles the job with a reply
    consumer = broker_factory.consumer(queue)
    delivery = consumer.next()
    reply = Envelope(
        body=b'{"status": "succeeded"}',
        message_id=uuid.uuid4().hex,
        type="result",
        routing_key=delivery.envelope.reply_to or "",
        headers={"x-runner-protocol": 1},
        correlation_id=delivery.envelope.correlation_id,
    )
    consumer.settle(delivery, [Outgoing(reply, Target.REPLY)])
    # Then the client receives it, and only once
    got = inbox.get("job-1", timeout=WAIT)
    assert got is not None
    assert (got.body, got.correlation_id, got.type) == (reply.body, "job-1", "result")
    assert got.headers["x-runner-protocol"] == 1
    assert inbox.get("job-1", timeout=0.3) is None
    assert broker_factory.admin.queue_depth(queue) == 0
    inbox.close()


def test_settle_with_delayed_job_delivers_it_again_later(broker_factory: BrokerFactory) -> None:
    # Given a delivered job
    route = broker_factory.route("heavy")
    queue = broker_factory.queue(f"{route}.*")
    job = envelope(f"{route}.resize", headers={"x-runner-attempt": 1})
    broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue)
    delivery = consumer.next()
    # When it is settled with its next attempt, delayed (a retry)
    retry = job.with_headers(**{"x-runner-attempt": 2})
    started = time.monotonic()
    consumer.settle(delivery, [Outgoing(retry, Target.JOBS, delay=1.5)])
    # Then the first attempt is gone, and the retry arrives after the delay, routed as before
    consumer.assert_quiet(0.8)
    again = consumer.next()
    assert time.monotonic() - started >= 1.4
    assert again.envelope.message_id == job.message_id
    assert again.envelope.headers["x-runner-attempt"] == 2
    assert again.envelope.routing_key == job.routing_key
    assert again.redelivered is False


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_retry_goes_back_only_to_the_queue_it_came_from(
    broker_factory: BrokerFactory, delay: float
) -> None:
    # Given a job that two queues receive (both bound to its key)
    route = broker_factory.route("both")
    mine = broker_factory.queue(f"{route}.#")
    other = broker_factory.queue(f"{route}.*")
    job = envelope(f"{route}.resize", headers={"x-runner-attempt": 1})
    broker_factory.admin.publish(job)
    assert drain(broker_factory, other, 1) == [job]
    # When one queue's consumer settles its copy with a retry
    consumer = broker_factory.consumer(mine)
    consumer.settle(consumer.next(), [Outgoing(job.with_headers(**{"x-runner-attempt": 2}), Target.JOBS, delay)])
    # Then the retry comes back to that queue, keeping its routing key, and the other queue gets nothing
    again = consumer.next()
    assert again.envelope.headers["x-runner-attempt"] == 2
    assert again.envelope.routing_key == job.routing_key
    consumer.settle(again)
    assert broker_factory.admin.queue_depth(other) == 0


def test_dead_letters_can_be_listed_taken_and_purged(broker_factory: BrokerFactory) -> None:
    # Given a job settled into the dead letters
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    job = envelope(f"{route}.resize")
    broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue)
    delivery = consumer.next()
    dead = job.with_headers(**{H_DEAD_REASON: "boom"})
    consumer.settle(delivery, [Outgoing(dead, Target.DEAD)])
    admin = broker_factory.admin
    # Then it is listed (and stays listed), not queued
    assert admin.queue_depth(queue) == 0
    listed = [e for e in admin.dead_letters() if e.message_id == job.message_id]
    assert [e.headers[H_DEAD_REASON] for e in listed] == ["boom"]
    assert any(e.message_id == job.message_id for e in admin.dead_letters())
    # When it is taken, it is returned once and gone
    taken = admin.take_dead(job.message_id)
    assert taken is not None and taken.body == job.body
    assert admin.take_dead(job.message_id) is None
    # And purge removes every dead letter (not on the shared RabbitMQ: that would wipe the
    # dead letters of whoever else uses it)
    if broker_factory.name == "amqp":
        return
    others = [envelope(f"{route}.resize") for _ in range(2)]
    for other in others:
        admin.publish(other)
        consumer.settle(consumer.next(), [Outgoing(other, Target.DEAD)])
    assert admin.purge_dead() >= 2
    assert not [e for e in admin.dead_letters() if e.message_id in {o.message_id for o in others}]


def test_deleted_queue_is_gone_with_its_messages(broker_factory: BrokerFactory) -> None:
    # Given a queue holding a job
    route = broker_factory.route("default")
    queue = broker_factory.queue(f"{route}.#")
    broker_factory.admin.publish(envelope(f"{route}.resize"))
    # When it is deleted
    broker_factory.admin.delete_queue(queue)
    # Then its route is unroutable and the queue cannot be inspected
    with pytest.raises(UnroutableError):
        broker_factory.admin.publish(envelope(f"{route}.resize"))
    with pytest.raises(BrokerError):
        broker_factory.admin.queue_depth(queue)


def test_outcomes_settled_together_are_all_published_and_acknowledged(
    broker_factory: BrokerFactory,
) -> None:
    # Given six delivered jobs, all held at once
    route = broker_factory.route("many")
    queue = broker_factory.queue(f"{route}.#")
    jobs = [envelope(f"{route}.resize", headers={"x-runner-attempt": 1}) for _ in range(6)]
    for job in jobs:
        broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue)
    deliveries = [consumer.next() for _ in jobs]
    # When every one is settled with its next attempt without waiting for the one before
    futures = [
        consumer.broker.settle(d, [Outgoing(d.envelope.with_headers(**{"x-runner-attempt": 2}), Target.JOBS)])
        for d in deliveries
    ]
    for delivery, future in zip(deliveries, futures):
        consumer._unsettled.remove(delivery)
        assert future.result(WAIT) is None
    # Then each next attempt arrives once, as a fresh copy, and nothing else comes back
    again = [consumer.next() for _ in jobs]
    assert sorted(d.envelope.message_id for d in again) == sorted(j.message_id for j in jobs)
    assert all(d.envelope.headers["x-runner-attempt"] == 2 and not d.redelivered for d in again)
    for delivery in again:
        consumer.settle(delivery)
    consumer.assert_quiet()
    consumer.stop()
    consumer.broker.close()
    assert broker_factory.admin.queue_depth(queue) == 0


def test_a_delivery_whose_outcome_is_returned_comes_back(broker_factory: BrokerFactory) -> None:
    if broker_factory.name != "amqp":
        pytest.skip("RabbitMQ returns unroutable mandatory messages; the embedded broker has no routes to miss")
    # Given a delivered job
    route = broker_factory.route("lost")
    queue = broker_factory.queue(f"{route}.#")
    job = envelope(f"{route}.resize", headers={"x-runner-attempt": 1})
    broker_factory.admin.publish(job)
    consumer = broker_factory.consumer(queue)
    delivery = consumer.next()
    # When its outcome (a retry) goes to a queue that does not exist, so RabbitMQ returns it
    nowhere = replace(delivery, queue=f"{queue}.missing")
    consumer._unsettled.remove(delivery)
    with pytest.raises(UnroutableError):
        consumer.broker.settle(nowhere, [Outgoing(job, Target.JOBS)]).result(WAIT)
    # Then the delivery was not acknowledged: RabbitMQ delivers the job again
    again = consumer.next()
    assert again.envelope.message_id == job.message_id
    assert again.redelivered
    consumer.settle(again)
    consumer.stop()

"""The job pipeline end to end against the real RabbitMQ: routing, results, retries, dead letters."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from runner.broker import Envelope, connect
from runner.errors import JobError, JobFailed, UnroutableError
from runner.message import JobMessage
from runner.testing import running_worker




def test_result_and_output_files_come_back(client, plugins, settings_factory, route, tmp_path):
    # Given a worker on a route
    with running_worker(settings_factory(route), plugins):
        # When a job is submitted and waited on
        result = client.submit("echo", {"text": "hello", "shout": True}, route=route, wait=True).wait(30)
    # Then its value and its output file come back
    assert result.ok and result.value == {"text": "hello", "attempt": 1}
    assert [(f.name, f.data) for f in result.outputs] == [("echo.txt", b"HELLO")]


def test_routing_reaches_only_the_worker_bound_to_the_route(client, plugins, settings_factory):
    # Given two workers: one bound to default-like route A, one to heavy route B
    light, heavy = f"l{uuid.uuid4().hex[:8]}", f"h{uuid.uuid4().hex[:8]}"
    with running_worker(settings_factory(light), plugins, name="light-box"), \
         running_worker(settings_factory(heavy), plugins, name="heavy-box"):
        # When jobs go to each route
        on_heavy = [client.submit("echo", {"text": str(i)}, route=heavy, wait=True) for i in range(4)]
        on_light = [client.submit("echo", {"text": str(i)}, route=light, wait=True) for i in range(4)]
        heavy_workers = {h.wait(30).worker for h in on_heavy}
        light_workers = {h.wait(30).worker for h in on_light}
    # Then each lands only on the box bound to it
    assert heavy_workers == {"heavy-box"}
    assert light_workers == {"light-box"}


def test_unroutable_route_is_a_clear_error(client):
    with pytest.raises(UnroutableError, match="no worker queue is bound to route 'nosuchroute'"):
        client.submit("echo", {"text": "x"}, route="nosuchroute")


def test_bad_params_are_refused_before_submitting(client):
    with pytest.raises(JobError, match="fail_times"):
        client.submit("flaky", {"fail_times": "many"}, route="whatever")
    with pytest.raises(JobError, match="unknown job 'nosuchjob'"):
        client.submit("nosuchjob", {}, route="whatever")


def test_timeout_kills_the_whole_process_tree(client, plugins, settings_factory, route):
    # Given a job that leaves busy grandchildren (one of them re-parented) and hangs
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    with running_worker(settings_factory(route), plugins):
        # When it runs past its 1 s timeout
        result = client.submit("spawner", {"marker": marker}, route=route, wait=True).wait(
            30, raise_on_failure=False
        )
    # Then it failed with a timeout, and nothing it started is still running
    assert not result.ok and "timed out after 1s" in result.error
    with connect(client.broker.url) as broker:
        assert broker.take_dead(result.id) is not None
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert left.stdout == ""


def test_retry_then_success(client, plugins, settings_factory, route):
    with running_worker(settings_factory(route), plugins):
        result = client.submit("flaky", {"fail_times": 2}, route=route, wait=True).wait(30)
    assert result.ok and result.value == 3 and result.attempts == 3
    # The attempt history travels with the job: who tried, when, and how it failed
    assert [h["attempt"] for h in result.history] == [1, 2, 3]
    assert [h["error"] for h in result.history] == [
        "RuntimeError: flaky failure on attempt 1", "RuntimeError: flaky failure on attempt 2", None,
    ]


def test_retries_exhausted_dead_letter_with_traceback(client, plugins, settings_factory, route, amqp_url):
    with running_worker(settings_factory(route), plugins):
        handle = client.submit("boom", {"message": "bad pixels"}, route=route, wait=True)
        with pytest.raises(JobFailed, match="ValueError: boom: bad pixels") as info:
            handle.wait(30)
    # The waiting client gets the job's own traceback, naming the job's source file
    assert "jobs_plugin.py" in info.value.result.traceback
    assert info.value.result.attempts == 2
    # And the job is in the dead-letter queue with its reason and traceback
    with connect(amqp_url) as broker:
        dead = broker.take_dead(handle.id)
    assert dead is not None
    assert dead.headers["x-runner-dead-reason"] == "attempts exhausted"
    assert "raise ValueError" in json.loads(dead.headers["x-runner-result"])["traceback"]


def test_exit_codes_map_to_retry_or_fatal(client, plugins, settings_factory, route):
    with running_worker(settings_factory(route), plugins):
        retried = client.submit("exitcode", {"code": 75}, route=route, wait=True)
        fatal = client.submit("exitcode", {"code": 2}, route=route, wait=True)
        retried_result = retried.wait(30, raise_on_failure=False)
        fatal_result = fatal.wait(30, raise_on_failure=False)
    assert retried_result.attempts == 3 and "exited with status 75: failing" in retried_result.error
    assert fatal_result.attempts == 1 and fatal_result.exit_code == 2
    with connect(client.broker.url) as broker:
        assert broker.take_dead(retried.id).headers["x-runner-dead-reason"] == "attempts exhausted"
        assert broker.take_dead(fatal.id).headers["x-runner-dead-reason"] == "failed for good"


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"\xff not json", "not UTF-8 JSON"),
        (b'{"protocol": 1, "id": "x", "job": "nosuchjob", "route": "r", "params": {}}', "unknown job 'nosuchjob'"),
        (b'{"protocol": 1, "id": "x", "job": "flaky", "route": "r", "params": {"fail_times": "x"}}', "parameter 'fail_times'"),
        (b'{"protocol": 1, "id": "x", "job": "echo", "route": "r", "params": {"text": "a", "rm": "-rf"}}', "no parameter 'rm'"),
        (b'{"protocol": 7, "id": "x", "job": "echo"}', "unsupported protocol version 7"),
    ],
)
def test_malformed_messages_are_dead_lettered_and_the_worker_goes_on(
    client, plugins, settings_factory, route, amqp_url, body, reason
):
    bad_id = uuid.uuid4().hex
    with running_worker(settings_factory(route), plugins):
        # Given a message that cannot be run, published raw
        with connect(amqp_url) as raw:
            raw.publish(Envelope(body=body, message_id=bad_id, type="x", routing_key=f"{route}.x"))
        # When a good job follows, it still runs
        assert client.submit("echo", {"text": "after"}, route=route, wait=True).wait(30).ok
    # Then the bad one is dead-lettered with its reason, never run
    with connect(amqp_url) as broker:
        dead = broker.take_dead(bad_id)
    assert dead is not None and reason in dead.headers["x-runner-dead-reason"]


def test_waiting_client_hears_about_an_unrunnable_job(client, plugins, settings_factory, route, amqp_url):
    # A message this worker cannot validate still answers the client that waits on it.
    msg = JobMessage(job="flaky", params={"fail_times": "lots"}, route=route)
    inbox = client.broker.reply_inbox()
    with running_worker(settings_factory(route), plugins):
        client.broker.publish(msg.to_envelope(reply_to=inbox.address))
        reply = inbox.get(msg.id, 30)
    assert reply is not None and b"parameter 'fail_times'" in reply.body
    with connect(amqp_url) as broker:
        assert broker.take_dead(msg.id) is not None


def test_a_job_that_keeps_killing_workers_is_dead_lettered_not_looped(client, plugins, settings_factory, route, amqp_url):
    # Given a job already delivered 5 times without finishing (each time its worker died)
    msg = JobMessage(job="echo", params={"text": "x"}, route=route)
    inbox = client.broker.reply_inbox()
    env = msg.to_envelope(reply_to=inbox.address).with_headers(**{"x-runner-deliveries": 5})
    with running_worker(settings_factory(route, max_redeliveries=4), plugins):
        client.broker.publish(env)
        reply = inbox.get(msg.id, 30)
    # Then it is not run again: it is dead-lettered with the reason, and the waiting client told
    assert reply is not None and b"delivered 6 times without finishing" in reply.body
    with connect(amqp_url) as broker:
        dead = broker.take_dead(msg.id)
    assert dead is not None and "it may crash workers" in dead.headers["x-runner-dead-reason"]


def test_a_client_keeps_working_after_its_connection_drops(client, plugins, settings_factory, route):
    with running_worker(settings_factory(route), plugins):
        assert client.submit("echo", {"text": "before"}, route=route, wait=True).wait(30).ok
        client.broker._conn.close()  # the connection drops (a broker restart, a network blip)
        after = [client.submit("echo", {"text": f"after {i}"}, route=route, wait=True) for i in range(3)]
        assert [h.wait(30).value["text"] for h in after] == ["after 0", "after 1", "after 2"]


def test_submit_many_hands_every_job_to_the_broker(client, settings_factory, route):
    # Given a queue bound to the route and no worker yet
    queue = settings_factory(route).queue
    client.broker.declare_queue(queue, (f"{route}.#",))
    # When 50 jobs are submitted in one call (confirms pipelined)
    handles = client.submit_many([{"job": "echo", "params": {"text": str(i)}, "route": route} for i in range(50)])
    # Then it returned only once RabbitMQ had all of them, each with its own id
    assert len({h.id for h in handles}) == 50
    assert client.broker.queue_depth(queue) == 50


def test_submit_many_validates_every_job_before_sending_any(client, settings_factory, route):
    queue = settings_factory(route).queue
    client.broker.declare_queue(queue, (f"{route}.#",))
    with pytest.raises(JobError, match="fail_times"):
        client.submit_many([{"job": "echo", "params": {"text": "fine"}, "route": route},
                            {"job": "flaky", "params": {"fail_times": "many"}, "route": route}])
    assert client.broker.queue_depth(queue) == 0


def test_submit_many_reports_an_unroutable_job(client, settings_factory, route):
    client.broker.declare_queue(settings_factory(route).queue, (f"{route}.#",))
    with pytest.raises(UnroutableError, match="no worker queue is bound to route 'nosuchroute'"):
        client.submit_many([{"job": "echo", "params": {"text": "x"}, "route": route},
                            {"job": "echo", "params": {"text": "y"}, "route": "nosuchroute"}])


def test_submit_many_results_can_be_awaited(client, plugins, settings_factory, route):
    with running_worker(settings_factory(route), plugins):
        handles = client.submit_many([{"job": "echo", "params": {"text": str(i)}, "route": route, "wait": True}
                                      for i in range(5)])
        assert [h.wait(30).value["text"] for h in handles] == [str(i) for i in range(5)]


@pytest.mark.parametrize("asked", [86400.0, None])
def test_a_submitter_cannot_raise_the_operators_timeout(client, plugins, settings_factory, route, asked):
    # Given an operator who capped a job type at 1 s ([jobs.napper.sandbox] timeout = "1s")
    settings = settings_factory(route, jobs={"napper": {"sandbox": {"timeout": "1s"}}})
    with running_worker(settings, plugins):
        # When a submitter asks for a day (or for nothing) for a job that needs 30 s
        result = client.submit("napper", {"seconds": "30"}, route=route, wait=True,
                               timeout=asked).wait(60, raise_on_failure=False)
    # Then the cap holds: the job is stopped after 1 s
    assert not result.ok and "timed out after 1s" in result.error, result.error


def test_a_submitter_may_ask_for_less_time(client, plugins, settings_factory, route):
    with running_worker(settings_factory(route), plugins):
        result = client.submit("napper", {"seconds": "30"}, route=route, wait=True,
                               timeout=1.0).wait(60, raise_on_failure=False)
    assert not result.ok and "timed out after 1s" in result.error, result.error

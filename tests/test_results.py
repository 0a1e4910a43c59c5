"""Results that outlive the client: fetched later, by id, from another process (both brokers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import WorkerProcess, wait_until

from runner.broker import connect
from runner.client import Client
from runner.errors import JobFailed
from runner.results import open_store
from runner.testing import settings_for, unique_route


@pytest.fixture(params=["sqlite", "amqp"])
def box(request, tmp_path):
    """A broker URL, a result store URL and the environment every process of the test shares."""
    if request.param == "amqp":
        broker_url = request.getfixturevalue("amqp_url")
    else:
        broker_url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    route = unique_route()
    with connect(broker_url) as broker:  # the worker's queue exists before any worker runs
        broker.declare_queue(f"test.{route}", [f"{route}.#"])
    results_url = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    env = {**os.environ, "RUNNER_BROKER_URL": broker_url, "RUNNER_PLUGINS": "jobs_plugin",
           "RUNNER_RESULTS_URL": results_url, "RUNNER_WORKDIR": str(tmp_path / "work")}
    workers: list[WorkerProcess] = []

    class Box:
        def __init__(self) -> None:
            self.broker_url, self.results_url, self.route, self.env = broker_url, results_url, route, env
            self.settings = replace(settings_for(broker_url, route), results={"url": results_url})

        def worker(self) -> WorkerProcess:
            wp = WorkerProcess(env, ["--queue", f"test.{route}", "--bind", f"{route}.#"],
                               tmp_path / f"worker{len(workers)}.log")
            workers.append(wp)
            wp.wait_for_log("consuming queue")
            return wp

        def cli(self, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120)

    yield Box()
    for wp in workers:
        wp.stop(9)
    with connect(broker_url) as broker:
        broker.delete_queue(f"test.{route}")


def test_runner_result_fetches_a_job_after_the_worker_that_ran_it_exited(box, tmp_path):
    # Given two jobs submitted without --wait by processes that have exited, and a worker
    ok = box.cli("submit", "echo", "--text", "kept", "--route", box.route)
    bad = box.cli("submit", "boom", "--message", "nope", "--route", box.route)
    ok_id, bad_id = ok.stdout.strip(), bad.stdout.strip()
    assert ok.returncode == 0 and bad.returncode == 0 and ok_id and bad_id
    worker = box.worker()
    with open_store(box.results_url) as store:
        wait_until(lambda: store.get(ok_id) and store.get(bad_id), 60, "both results stored")  # noqa
    # When the worker has exited
    assert worker.stop() == 0
    # Then another process fetches each result, with the exit codes of submit --wait
    shown = box.cli("result", ok_id, "--json", "--output-dir", str(tmp_path / "got"))
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["status"] == "succeeded" and record["value"]["text"] == "kept"
    assert (tmp_path / "got" / "echo.txt").read_text() == "kept"
    failed = box.cli("result", bad_id)
    assert failed.returncode == 1 and "boom: nope" in failed.stderr
    assert "attempt" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


def test_an_unknown_id_is_one_clear_line(box):
    shown = box.cli("result", "no-such-job")
    assert shown.returncode == 3
    assert shown.stderr.strip().splitlines() == [
        "error: no result for job no-such-job: unknown, not finished yet, or expired "
        "(results are kept 7 days)"]
    waited = box.cli("result", "no-such-job", "--wait", "--wait-timeout", "1s")
    assert waited.returncode == 4 and "no result after 1s" in waited.stderr


def test_a_handle_waits_for_a_job_submitted_before_any_worker_ran(box, plugins):
    # Given a job submitted without waiting while no worker runs, by a client now closed
    settings = replace(box.settings, routes={"echo": box.route, "boom": box.route})
    with Client(connect(box.broker_url), plugins, settings) as client:
        job_id = client.submit("echo", {"text": "later"}).id
        failing = client.submit("boom", {"message": "x"}).id
        assert client.result(job_id) is None
    # When a worker comes up, and another client asks by id
    box.worker()
    with Client(connect(box.broker_url), plugins, settings) as other:
        result = other.handle(job_id).wait(timeout=60)
        # Then it gets the result, its outputs, and a failure raises as for a waited job
        assert result.value["text"] == "later"
        assert [(f.name, f.data) for f in result.outputs] == [("echo.txt", b"later")]
        with pytest.raises(JobFailed, match="boom: x"):
            other.handle(failing).wait(timeout=60)
        assert other.result(job_id).history[0]["attempt"] == 1


def test_the_store_can_be_turned_off(box, plugins):
    settings = replace(box.settings, results={"url": "off"})
    with Client(connect(box.broker_url), plugins, settings) as client:
        handle = client.submit("echo", {"text": "x"}, route=box.route)
        with pytest.raises(Exception, match="no result store"):
            handle.wait(timeout=1)


def test_a_default_store_that_cannot_be_opened_does_not_stop_a_worker(tmp_path):
    from runner.config import Settings
    from runner.results import StoreError, recorder_for

    # Given an embedded broker in a place where no results file can be made (/proc)
    settings = Settings(broker_url="sqlite:////proc/no-such-dir/broker.sqlite3")
    # Then the worker's recorder keeps no results, rather than refusing to start
    recorder = recorder_for(settings)
    assert recorder.store is None
    # But a store the operator asked for is an error
    with pytest.raises(StoreError, match="cannot open the result store"):
        recorder_for(replace(settings, results={"url": "sqlite:////proc/no-such-dir/r.sqlite3"}))

"""Groups, maps and chains finish on the workers: one callback with every member's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_until

from runner.broker import connect
from runner.client import Client
from runner.errors import JobFailed
from runner.message import JobResult, JobStatus
from runner.results import GroupStatus, open_store
from runner.results.groups import JobSpec, callback_id
from runner.testing import running_worker, settings_for, unique_route


@pytest.fixture(params=["sqlite", "amqp"])
def setup(request, tmp_path, plugins, monkeypatch):
    """Settings of a worker and a client sharing a broker, a route and a result store."""
    if request.param == "amqp":
        broker_url = request.getfixturevalue("amqp_url")
    else:
        broker_url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    route = unique_route()
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("RUNNER_TEST_LEDGER", str(ledger))  # job_succeeded writes each id here
    settings = replace(settings_for(broker_url, route), workdir=str(tmp_path / "work"),
                       results={"url": f"sqlite:///{tmp_path / 'results.sqlite3'}", "lease": "1s"})
    with connect(broker_url) as broker:
        broker.declare_queue(settings.queue, settings.bindings)
    client = Client(connect(broker_url), plugins, replace(settings, routes=_Everything(route)))
    yield settings, client, ledger
    client.close()
    with connect(broker_url) as broker:
        broker.delete_queue(settings.queue)


class _Everything(dict):
    def __init__(self, route: str) -> None:
        super().__init__()
        self.route = route

    def get(self, key, default=None):
        return self.route


def succeeded(ledger: Path) -> list[str]:
    return ledger.read_text().split()[::2] if ledger.exists() else []


def test_a_group_runs_its_callback_once_with_every_member(setup, plugins):
    settings, client, ledger = setup
    # Given a map of three echo jobs with a callback
    handle = client.map("echo", [{"text": t} for t in ("a", "b", "c")]).then("collect", {"label": "L"})
    assert handle.callback.id == callback_id(handle.id)
    # When workers run them
    with running_worker(settings, plugins):
        result = handle.wait(timeout=120)
    # Then the callback got members.json and the members' files, in submission order
    assert result.value["label"] == "L" and result.value["group"] == handle.id
    assert result.value["texts"] == ["a", "b", "c"]
    assert [m[:2] for m in result.value["members"]] == [[h.id, "succeeded"] for h in handle.members]
    assert [v["text"] for v in result.value["values"]] == ["a", "b", "c"]
    assert [(f.name, f.data) for f in result.outputs] == [("collected.txt", b"a\nb\nc")]
    state = handle.state()
    assert state.status is GroupStatus.PUBLISHED and (state.done, state.failed) == (3, 0)
    assert succeeded(ledger).count(handle.callback.id) == 1


def test_a_dead_lettered_member_reaches_the_callback_as_failed(setup, plugins):
    settings, client, _ = setup
    # Given a group with a member that fails for good (dead-lettered after its attempts)
    handle = client.group([JobSpec("echo", {"text": "fine"}), JobSpec("boom", {"message": "bad"})]
                          ).then("collect")
    with running_worker(settings, plugins):
        result = handle.wait(timeout=120)
    # Then the callback still ran, and sees the failure with its error
    (ok_id, ok_status, _), (bad_id, bad_status, bad_error) = result.value["members"]
    assert (ok_status, bad_status) == ("succeeded", "failed")
    assert "boom: bad" in bad_error
    assert client.result(bad_id).status is JobStatus.FAILED
    with connect(settings.broker_url) as broker:
        assert bad_id in [env.message_id for env in broker.dead_letters()]
        broker.take_dead(bad_id)


def test_skip_on_failure_fails_the_group_without_running_the_callback(setup, plugins):
    settings, client, ledger = setup
    handle = client.group([JobSpec("boom", {"message": "no"})]).then("collect", on_failure="skip")
    with running_worker(settings, plugins):
        with pytest.raises(JobFailed, match="skipped: 1 of 1 members"):
            handle.wait(timeout=120)
    assert handle.state().status is GroupStatus.SKIPPED
    assert handle.callback.id not in succeeded(ledger)
    with connect(settings.broker_url) as broker:
        broker.take_dead(handle.members[0].id)


def test_a_chain_passes_outputs_on_as_inputs(setup, plugins):
    settings, client, _ = setup
    # Given echo -> shout-file -> collect
    handle = client.chain(JobSpec("echo", {"text": "hi"}), JobSpec("shout-file"),
                          JobSpec("collect", {"label": "end"}))
    with running_worker(settings, plugins):
        result = handle.wait(timeout=120)
    # Then each step got the step before's outputs
    assert result.value["texts"] == ["HI!"]
    assert result.value["label"] == "end"


def test_a_crash_between_count_and_publish_is_published_by_a_reconciler(setup, plugins):
    settings, client, ledger = setup
    # Given a group whose only member was counted by a worker that died before publishing
    handle = client.group([JobSpec("echo", {"text": "x"})]).then("collect")
    member = handle.members[0].id
    with open_store(settings.results["url"]) as store:
        died = store.put(JobResult(id=member, job="echo", status=JobStatus.SUCCEEDED, attempts=1,
                                   value={"text": "x"}), handle.id, lease=1.0)
        assert died is not None and store.group(handle.id).status is GroupStatus.COMPLETE
    # When a worker runs (its reconciler sees the claim expire; the member runs again too)
    with running_worker(settings, plugins):
        result = handle.wait(timeout=120)
        wait_until(lambda: member in succeeded(ledger), 60, "the member's second run")
    # Then the callback ran exactly once
    assert result.value["members"][0][1] == "succeeded"
    assert succeeded(ledger).count(handle.callback.id) == 1
    assert handle.state().status is GroupStatus.PUBLISHED


def test_the_group_finishes_after_the_submitting_client_exited(setup, tmp_path):
    settings, _, ledger = setup
    # Given `runner submit shout-file a.txt b.txt --then collect`, from a process that exited
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(name)
    env = {**os.environ, "RUNNER_BROKER_URL": settings.broker_url, "RUNNER_PLUGINS": "jobs_plugin",
           "RUNNER_RESULTS_URL": settings.results["url"]}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    route = settings.bindings[0].split(".")[0]
    sent = cli("submit", "shout-file", "a.txt", "b.txt", "--route", route, "--then", "collect",
               "--then-param", "label=sheet", "--json")
    assert sent.returncode == 0, sent.stderr
    record = json.loads(sent.stdout)
    shown = cli("group", record["group"], "--json")
    assert json.loads(shown.stdout)["pending"] == 2
    # When a worker runs the group
    from runner.plugins import make_plugins

    with running_worker(replace(settings, results={**settings.results}),
                        make_plugins(modules=["jobs_plugin"])):
        with open_store(settings.results["url"]) as store:
            done = wait_until(lambda: store.get(record["callback"]["id"]), 120, "the callback")
    # Then the callback ran with both members' outputs, and `runner group` says so
    assert done.value["texts"] == ["A!", "B!"] and done.value["label"] == "sheet"
    state = json.loads(cli("group", record["group"], "--json").stdout)
    assert (state["succeeded"], state["failed"], state["pending"]) == (2, 0, 0)
    assert state["callback"]["status"] == "succeeded"
    text = cli("group", record["group"]).stdout
    assert "2 succeeded, 0 failed, 0 pending of 2" in text and "succeeded" in text.splitlines()[-1]
    assert succeeded(ledger).count(record["callback"]["id"]) == 1


def test_a_group_finishes_with_the_postgres_store(tmp_path, plugins, postgres_url):
    # Given workers and a client sharing a PostgreSQL result store (the fleet setup)
    route = unique_route()
    settings = replace(settings_for(f"sqlite:///{tmp_path / 'broker.sqlite3'}", route),
                       workdir=str(tmp_path / "work"), results={"url": postgres_url})
    with connect(settings.broker_url) as broker:
        broker.declare_queue(settings.queue, settings.bindings)
    with Client(connect(settings.broker_url), plugins, settings) as client:
        handle = client.map("echo", [{"text": "p"}, {"text": "g"}], route=route).then(
            "collect", route=route)
        # When two workers run it
        with running_worker(settings, plugins, name="pg-a"), \
                running_worker(settings, plugins, name="pg-b"):
            result = handle.wait(timeout=120)
        # Then the callback saw both members, and the group is done in the database
        assert result.value["texts"] == ["p", "g"]
        assert handle.state().status is GroupStatus.PUBLISHED
        assert client.result(handle.members[1].id).value["text"] == "g"

"""The basic sandbox layer, observed through real jobs on a real worker."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from runner.broker import connect
from runner.client import Client
from runner.errors import JobError
from runner.message import FileData
from runner.testing import running_worker
from conftest import wait_until




def test_worker_secrets_do_not_reach_the_job(client, plugins, settings_factory, route, monkeypatch):
    monkeypatch.setenv("RUNNER_SECRET_API_TOKEN", "s3cr3t-value")
    with running_worker(settings_factory(route), plugins):
        result = client.submit("envdump", route=route, wait=True).wait(30)
    assert "s3cr3t-value" not in result.stdout
    assert "RUNNER_BROKER_URL" not in result.stdout and "PATH=/usr/local/bin:/usr/bin:/bin" in result.stdout


def test_symlinks_planted_in_out_are_not_followed(client, plugins, settings_factory, route, tmp_path):
    secret = tmp_path / "worker-only.txt"
    secret.write_text("private")
    with running_worker(settings_factory(route), plugins):
        result = client.submit("symlinker", {"target": str(secret)}, route=route, wait=True).wait(30)
    assert [(f.name, f.data) for f in result.outputs] == [("real.txt", b"real\n")]


def test_outputs_over_the_inline_limit_fail_clearly(client, plugins, settings_factory, route, amqp_url):
    settings = settings_factory(route, inline_limit=1000)
    with running_worker(settings, plugins):
        result = client.submit("bigoutput", {"size": 5000}, route=route, wait=True).wait(30, raise_on_failure=False)
    assert not result.ok and result.error == "outputs exceed the inline limit of 1000 bytes"
    with connect(amqp_url) as broker:
        broker.take_dead(result.id)


def test_inputs_over_the_inline_limit_are_refused_at_submit(amqp_url, plugins, settings_factory):
    small = replace(settings_factory("client"), inline_limit=10)
    with Client(connect(amqp_url), plugins, small) as client:
        with pytest.raises(JobError, match="over the inline limit of 10 bytes"):
            client.submit("resize", {"size": "10x10"}, files={"image": FileData("a.png", b"x" * 11)}, route="r")


def test_each_job_gets_a_private_work_dir_that_is_removed(client, plugins, settings_factory, route, tmp_path):
    with running_worker(settings_factory(route), plugins) as worker:
        result = client.submit("echo", {"text": "x"}, route=route, wait=True).wait(30)
        assert result.ok
        # A warm slot keeps its (empty) jobs directory and its own log directory; a finished
        # job's directory leaves the slot at once and is removed just after.
        def left() -> set[str]:
            found = set()
            for d in os.listdir(worker.workroot):
                if d.startswith("slot-") or d == "trash":
                    found |= {os.path.join(d, name) for name in os.listdir(worker.workroot / d)}
                elif not d.startswith("log-"):
                    found.add(d)
            return found

        wait_until(lambda: not left(), 10, "the job's directory to be removed")

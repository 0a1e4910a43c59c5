"""`runner doctor`, required layers, per-job tightening and the logged exec chain."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from runner.broker import connect
from runner.client import Client
from runner.errors import ConfigError, RunnerError
from runner.jobs import JobType, SandboxProfile, tighten
from runner.sandbox.probe import LAYERS
from runner.testing import running_worker

CLI = [sys.executable, "-m", "runner.cli"]


def runner_cli(*args: str, config: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNNER_PLUGINS": "jobs_plugin"}
    if config is not None:
        env["RUNNER_CONFIG"] = config
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_doctor_reports_every_layer_with_a_reason():
    proc = runner_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [layer["name"] for layer in report["layers"]] == list(LAYERS)
    assert all(layer["detail"] for layer in report["layers"])
    # This machine kind (root, bubblewrap, writable cgroups): the strong layers are on
    assert {"uid", "bwrap", "seccomp", "cgroup", "network"} <= set(report["active"])
    text = runner_cli("doctor").stdout
    assert "active       bwrap" in text and "active       landlock" in text


def test_a_missing_required_layer_stops_doctor_and_the_worker(tmp_path, amqp_url):
    config = tmp_path / "runner.toml"
    config.write_text('[sandbox]\nrequire = ["bwrap", "landlock"]\ndisable = ["landlock"]\n')
    proc = runner_cli("doctor", config=str(config))
    assert proc.returncode == 3 and "required sandbox layers not active: landlock" in proc.stderr
    env_config = str(config)
    worker = subprocess.run(
        [*CLI, "--broker-url", amqp_url, "worker", "--queue", "test.never"],
        env={**os.environ, "RUNNER_CONFIG": env_config, "RUNNER_PLUGINS": "jobs_plugin"},
        capture_output=True, text=True, timeout=60,
    )
    assert worker.returncode == 3
    assert "require names layers that are not active here: landlock: disabled" in worker.stderr
    assert "Traceback" not in worker.stderr


def test_unknown_layer_names_are_refused(tmp_path):
    config = tmp_path / "runner.toml"
    config.write_text('[sandbox]\nrequire = ["bubblewrap"]\n')
    proc = runner_cli("doctor", config=str(config))
    assert proc.returncode == 3 and "unknown layer 'bubblewrap'" in proc.stderr


def test_disabling_a_required_layer_is_refused(plugins, settings_factory, route):
    settings = replace(settings_factory(route), sandbox={"require": ["cgroup"], "disable": ["cgroup"]})
    with pytest.raises(RunnerError, match="require names layers that are not active here: cgroup"):
        with running_worker(settings, plugins):
            pass


JOB = JobType(name="j", function="m:f", timeout=60,
              sandbox=SandboxProfile(network=True, memory=1 << 30, processes=100))


def test_operators_can_tighten_a_job_profile():
    job = tighten(JOB, {"memory": "512m", "processes": 10, "network": False, "timeout": "30s"})
    assert job.sandbox.memory == 512 << 20 and job.sandbox.processes == 10
    assert job.sandbox.network is False and job.timeout == 30


@pytest.mark.parametrize("table, word", [
    ({"memory": "2g"}, "memory"), ({"processes": "none"}, "processes"),
    ({"timeout": "2m"}, "timeout"), ({"cpu_seconds": 5, "file_size": "none"}, "file_size"),
])
def test_loosening_needs_allow_loosen(table, word):
    with pytest.raises(ConfigError, match=f"{word}.*allow_loosen = true"):
        tighten(JOB, table)
    assert tighten(JOB, {**table, "allow_loosen": True})


def test_network_cannot_be_granted_without_allow_loosen():
    offline = replace(JOB, sandbox=SandboxProfile(network=False))
    with pytest.raises(ConfigError, match="network = true would loosen"):
        tighten(offline, {"network": True})
    with pytest.raises(ConfigError, match="unknown key 'memroy'"):
        tighten(JOB, {"memroy": "1g"})


def test_a_tightened_job_runs_under_the_operator_limit(plugins, settings_factory, route, amqp_url):
    # Given an operator who caps the echo job at 2 processes and 2 open files
    settings = replace(settings_factory(route), jobs={"echo": {"sandbox": {"open_files": 2}}})
    with running_worker(settings, plugins), \
            Client(connect(amqp_url), plugins, settings_factory("client")) as client:
        result = client.submit("echo", {"text": "x"}, route=route, wait=True).wait(30, raise_on_failure=False)
    # Then the child interpreter cannot even start with so few descriptors
    assert not result.ok
    with connect(amqp_url) as broker:
        broker.take_dead(result.id)


def test_loosening_in_config_stops_the_worker(plugins, settings_factory, route):
    settings = replace(settings_factory(route), jobs={"sleeper": {"sandbox": {"timeout": "1h"}}})
    with pytest.raises(RunnerError, match=r"\[jobs.sleeper.sandbox\] timeout"):
        with running_worker(settings, plugins):
            pass


@pytest.mark.parametrize("warm", [False, True])
def test_debug_logs_the_exact_exec_chain(plugins, settings_factory, route, amqp_url, caplog, warm):
    # Cold, each job's own chain ends in its argv; warm, the slot host's chain ends in the host,
    # and the job's argv is logged when the host forks it.
    with caplog.at_level(logging.DEBUG, logger="runner.sandbox"):
        with running_worker(settings_factory(route, sandbox={"warm": warm}), plugins), \
                Client(connect(amqp_url), plugins, settings_factory("client")) as client:
            assert client.submit("envdump", route=route, wait=True).wait(30).ok
    chains = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exec ")]
    assert chains, "no exec chain logged"
    chain = chains[-1]
    for part in ("runner-cgroup", "prlimit --core=0", "bwrap --unshare-ipc", "--unshare-net",
                 "--seccomp", "setpriv --reuid=", "--no-new-privs", "runner-job env"):
        if warm and part == "runner-job env":  # forked by the slot host: no exec chain per job
            # (the host, too, starts only if the worker still lives: runner-job's check)
            assert "runner-job " in chain and " -I -S " in chain and "sandbox/host.py" in chain, chain
            forks = [r.getMessage() for r in caplog.records if "forks and execs" in r.getMessage()]
            assert any(m.endswith(": env") for m in forks), forks
            continue
        assert part in chain, (part, chain)

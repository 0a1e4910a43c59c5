"""Warm slots under attack: what a hostile job leaves in its slot, checked by the NEXT job there.

Each worker has a single slot (``-c 1``), so the job that looks runs right after the attacker,
forked by the same slot host (or by its replacement).  The three variants of the attack suite:
``root`` (slot uid, bubblewrap, seccomp, cgroup), ``unprivileged`` (bubblewrap in a user
namespace; needs an interpreter outside /root, see issue 20) and ``landlock`` (root without
bubblewrap: the slot uid is the kill domain).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.broker import connect
from runner.client import Client
from runner.config import Settings
from runner.plugins import make_plugins
from test_attacks import TESTS, WorkerUnderTest, eventually, pgrep, run, still_serving

from runner.sandbox.hostproc import HOST_SCRIPT


@pytest.fixture(scope="module", params=["root", "unprivileged", "landlock"])
def worker(request, amqp_url) -> Iterator[WorkerUnderTest]:
    w = WorkerUnderTest(request.param, amqp_url, concurrency=1)
    try:
        w.wait_for_log("consuming queue")
        off = next((ln for ln in w.lines if "warm slots off" in ln), None)
        if off is not None:  # the cold path, covered by test_attacks.py, runs every job instead
            pytest.skip(off.split("INFO runner.worker: ", 1)[-1].strip())
        w.wait_for_log("warm slots on")
        yield w
    finally:
        w.stop()
        with connect(amqp_url) as broker:
            broker.delete_queue(w.queue)


@pytest.fixture(scope="module")
def client(amqp_url) -> Iterator[Client]:
    plugins = make_plugins(modules=["jobs_plugin", "attack_jobs"])
    with Client(connect(amqp_url), plugins, Settings(broker_url=amqp_url)) as c:
        yield c


def look(client, worker, token: str) -> dict:
    result = run(client, worker, "warm-look", token=token)
    assert result.ok, result.error
    return result.value


def test_jobs_of_a_slot_are_forked_by_its_host(client, worker):
    token = uuid.uuid4().hex
    first, second = look(client, worker, token), look(client, worker, token)
    assert "sandbox/host.py" in first["parent"] and first["parent"] == second["parent"]
    assert first["pid"] != second["pid"]


def test_an_argv_job_gets_only_stdin_stdout_and_stderr(client, worker):
    for _ in range(2):  # the second from a host that has run a job already
        result = run(client, worker, "warm-fds")
        assert result.ok and result.stdout.split() == ["0", "1", "2"], result.stdout


def test_each_job_draws_its_own_random_numbers(client, worker):
    # Every job starts from the host's memory: without a reseed each would draw the same.
    draws = [run(client, worker, "warm-draw") for _ in range(3)]
    assert all(d.ok for d in draws) and len({d.value for d in draws}) == 3


def test_files_environment_and_memory_do_not_reach_the_next_job(client, worker):
    token = uuid.uuid4().hex
    left = run(client, worker, "warm-litter", token=token)
    assert left.ok, left.error
    assert left.value["home"] == "written" and left.value["tmpdir"] == "written"
    assert left.value["sysv-shm"].startswith("segment"), left.value
    seen = look(client, worker, token)
    assert seen["seen"] == [] and seen["env"] == [] and seen["memory"] == []


def test_argv_litter_and_daemon_do_not_reach_the_next_job(client, worker):
    token = uuid.uuid4().hex
    assert run(client, worker, "warm-litter-argv", token=token).ok
    seen = look(client, worker, token)
    assert seen["seen"] == [] and seen["processes"] == []
    assert eventually(lambda: not pgrep(f"runner-left-{token}")), "the daemon outlived its job"


def test_a_daemon_with_listening_sockets_is_gone_for_the_next_job(client, worker):
    token = uuid.uuid4().hex
    left = run(client, worker, "warm-leave", token=token)
    assert left.ok and left.value["sockets"] >= 1, left.error
    seen = look(client, worker, token)
    assert seen["processes"] == [] and seen["sockets"] == [] and seen["seen"] == []
    assert eventually(lambda: not pgrep(f"runner-left-{token}")), "the daemon outlived its job"


def test_bound_paths_cannot_be_changed(client, worker):
    module = TESTS / "attack_jobs.py"
    before = hashlib.sha256(module.read_bytes()).hexdigest()
    result = run(client, worker, "warm-tamper")
    assert result.ok, result.error
    assert all(v.startswith("refused") for v in result.value.values()), result.value
    assert hashlib.sha256(module.read_bytes()).hexdigest() == before
    assert not (TESTS / "planted.py").exists()
    still_serving(client, worker)


def test_a_job_cannot_trace_or_read_its_host(client, worker):
    result = run(client, worker, "warm-spy")
    assert result.ok, result.error
    assert result.value["ptrace"].startswith("refused"), result.value
    assert result.value["mem"].startswith("refused") and result.value["environ"].startswith("refused")
    still_serving(client, worker)


def test_a_job_that_kills_its_host_gets_a_new_one_and_the_next_job_runs(client, worker):
    token = uuid.uuid4().hex
    result = run(client, worker, "warm-kill-host")
    assert not result.ok and "slot host died" in (result.error or ""), result.error
    worker.wait_for_log("the slot host died during a job")
    seen = look(client, worker, token)
    assert "sandbox/host.py" in seen["parent"] and seen["processes"] == []
    still_serving(client, worker)


@pytest.mark.parametrize("domain", ["pidns", "uid:0", f"uid:{os.getuid() + 1}", ""])
def test_a_slot_host_refuses_to_start_outside_a_kill_domain(domain):
    # As the test's own uid and in the initial PID namespace, kill(-1) would reach far beyond a
    # slot: the host must refuse before it reads a single job.
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        done = subprocess.run(
            [sys.executable, "-I", "-S", HOST_SCRIPT, str(theirs.fileno()), "--domain", domain],
            pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=30,
        )
    assert done.returncode == 2 and "refusing to start" in done.stderr, done.stderr
    assert Path(HOST_SCRIPT).is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups of its own need a root worker here")
def test_a_cgroup_per_job_caps_and_kills_each_job(amqp_url, settings_factory, route):
    # [sandbox] job_cgroups = true: each warm job is moved into a group of its own before it runs.
    from runner.testing import running_worker

    plugins = make_plugins(modules=["jobs_plugin", "attack_jobs"])
    settings = settings_factory(route, sandbox={"job_cgroups": True})
    with running_worker(settings, plugins), Client(connect(amqp_url), plugins, Settings(broker_url=amqp_url)) as c:
        hog = c.submit("attack-memory", {"megabytes": 1024}, route=route, wait=True).wait(90, raise_on_failure=False)
        token = uuid.uuid4().hex
        left = c.submit("warm-leave", {"token": token}, route=route, wait=True).wait(60)
        seen = [c.submit("warm-look", {"token": token}, route=route, wait=True).wait(60) for _ in range(2)]
        with connect(amqp_url) as broker:
            broker.take_dead(hog.id)
    assert not hog.ok and "out of memory" in (hog.error or ""), hog.error
    assert left.ok and all(s.ok and s.value["processes"] == [] and s.value["sockets"] == [] for s in seen)
    assert all("sandbox/host.py" in s.value["parent"] for s in seen)

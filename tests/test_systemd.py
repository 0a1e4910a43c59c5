"""Running under systemd: the units in contrib/systemd are valid, the worker tells systemd it is
ready only once it consumes, and secrets come from credential files (real RabbitMQ)."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS, WorkerProcess
from runner.broker import connect
from runner.client import Client
from runner.config import load
from runner.plugins import make_plugins
from runner.testing import settings_for, unique_route

UNITS = Path(__file__).parent.parent / "contrib" / "systemd"
RUNNER_BIN = Path(sys.executable).parent / "runner"


def units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_units_are_valid(unit, tmp_path):
    text = unit.read_text()
    # Parsed as systemd reads them: the service waits for READY, restarts on failure, and
    # the broker URL (a password) comes as a credential, never in the unit or argv
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(text)
    service = parser["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert "\nLoadCredential=broker-url:/etc/runner/credentials/broker-url\n" in text
    assert "RUNNER_BROKER_URL_FILE=%d/broker-url" in text and "amqp://" not in text
    if unit.name.startswith("runner-worker"):
        assert service["KillMode"] == "mixed" and service["Delegate"] == "yes"
        assert "CAP_SYS_ADMIN" in service["CapabilityBoundingSet"]
    else:
        assert service["DynamicUser"] == "yes" and service["CapabilityBoundingSet"] == ""
    # And systemd itself accepts them, pointed at this installation's runner
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # parsed above; systemd is not installed here
    name = unit.name.replace("@.service", "@test.service")
    (tmp_path / name).write_text(text.replace("/opt/runner/bin/runner", str(RUNNER_BIN)))
    proc = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=60)
    problems = [ln for ln in proc.stderr.splitlines() if name in ln or "Unknown" in ln]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_the_worker_is_ready_only_once_it_consumes(amqp_url, tmp_path, cleanup_queues):
    # Given systemd's notification socket, as systemd makes it for a Type=notify service
    route = unique_route("sd")
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(60)
        env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_PLUGINS": "jobs_plugin",
               "RUNNER_WORKDIR": str(tmp_path / "work"), "NOTIFY_SOCKET": address,
               "WATCHDOG_USEC": "400000"}
        worker = WorkerProcess(env, ["--queue", queue, "--bind", f"{route}.#"], tmp_path / "w.log")
        try:
            # When the worker tells systemd it is ready
            ready = notify.recv(4096).decode()
            assert "READY=1" in ready and f"consuming queue {queue}" in ready
            # Then it was already consuming: the log says so, and a job sent now runs
            assert any("consuming queue" in ln for ln in worker.lines), worker.lines
            plugins = make_plugins(load=[], modules=["jobs_plugin"])
            with Client(connect(amqp_url), plugins, settings_for(amqp_url, route)) as client:
                assert client.submit("echo", {"text": "up"}, route=route, wait=True).wait(60).ok
            # And it pings the watchdog while it runs
            assert "WATCHDOG=1" in notify.recv(4096).decode()
        finally:
            code = worker.stop()
        # And says it is stopping when told to stop
        seen = []
        notify.settimeout(5)
        while not any("STOPPING=1" in s for s in seen):
            seen.append(notify.recv(4096).decode())
        assert code == 0


def test_a_setting_can_come_from_a_credential_file(tmp_path):
    secret = tmp_path / "broker-url"
    secret.write_text("amqp://svc:s3cret@broker.internal:5672/jobs\n")
    secret.chmod(0o600)
    settings = load({}, environ={"RUNNER_BROKER_URL_FILE": str(secret)}, cwd=tmp_path)
    assert settings.broker_url == "amqp://svc:s3cret@broker.internal:5672/jobs"
    assert settings.sources["broker_url"] == "file RUNNER_BROKER_URL_FILE"
    # An unreadable credential is one clear error
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="RUNNER_BROKER_URL_FILE: cannot read"):
        load({}, environ={"RUNNER_BROKER_URL_FILE": str(tmp_path / "missing")}, cwd=tmp_path)


def test_the_units_are_documented():
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    for unit in units():
        assert unit.name in text, unit.name
    assert "LoadCredential" in text and "RUNNER_BROKER_URL_FILE" in text


def test_runner_binary_for_the_units_exists():
    assert RUNNER_BIN.exists(), f"{RUNNER_BIN}: the units are verified against it"

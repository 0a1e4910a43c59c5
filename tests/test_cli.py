"""The user flow from the command line, against the real RabbitMQ and a real photo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

PHOTO = Path(__file__).parent.parent / "fixtures" / "images" / "rocket.jpg"


@pytest.fixture
def cli(amqp_url, tmp_path):
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_PLUGINS": "jobs_plugin"}

    def run(*args: str, check_code: int | None = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "runner.cli", *args], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=120,
        )
        if check_code is not None:
            assert proc.returncode == check_code, proc.stderr + proc.stdout
        return proc

    return run


def test_submit_resize_wait_writes_the_output_beside_the_input(cli, worker_process, route, tmp_path, cleanup_queues):
    # Given a worker bound to a route and a real photo
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    photo = tmp_path / "photos" / "rocket.jpg"
    photo.parent.mkdir()
    shutil.copy(PHOTO, photo)
    # When it is resized from the CLI
    proc = cli("submit", "resize", "--size", "200x200", str(photo), "--route", route, "--wait")
    # Then the output lands beside the input, fits the box, and one summary line is printed
    out = photo.parent / "rocket_200x200.jpg"
    assert proc.stdout.count("\n") == 1 and "succeeded" in proc.stdout and str(out) in proc.stdout
    with Image.open(out) as img:
        assert max(img.size) == 200 and img.format == "JPEG"


def test_submit_with_output_dir_and_json(cli, worker_process, route, tmp_path, cleanup_queues):
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    proc = cli("submit", "resize", "--size", "64x64", "--mode", "fill", str(PHOTO), "--route", route,
               "--wait", "--json", "--output-dir", str(tmp_path / "thumbs"))
    record = json.loads(proc.stdout)
    assert record["status"] == "succeeded" and record["outputs"] == [str(tmp_path / "thumbs" / "rocket_64x64.jpg")]
    with Image.open(record["outputs"][0]) as img:
        assert img.size == (64, 64)


def test_submit_without_wait_prints_the_job_id(cli, worker_process, route, cleanup_queues):
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    proc = cli("submit", "echo", "--text", "hi", "--route", route)
    assert len(proc.stdout.strip()) == 32


def test_failed_job_exits_1_with_its_error(cli, worker_process, route, cleanup_queues, amqp_url):
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    proc = cli("submit", "boom", "--message", "no", "--route", route, "--wait", check_code=1)
    assert "failed after 2 attempt(s): ValueError: boom: no" in proc.stderr
    job_id = proc.stderr.split()[1]
    shown = json.loads(cli("dead", "show", job_id, "--json").stdout)
    assert shown["reason"] == "attempts exhausted" and "jobs_plugin.py" in shown["traceback"]
    listed = json.loads(cli("dead", "list", "--json").stdout)
    assert job_id in [r["id"] for r in listed]
    # Retry sends it back on its route as a fresh first attempt; it fails again and is dead again
    assert "sent back on" in cli("dead", "retry", job_id).stdout
    from runner.broker import connect

    with connect(amqp_url) as broker:
        import time
        deadline = time.monotonic() + 30
        while broker.take_dead(job_id) is None:
            assert time.monotonic() < deadline, "retried job never came back to the dead letters"


def test_unroutable_route_is_one_line_exit_3(cli):
    proc = cli("submit", "echo", "--text", "x", "--route", "nobodyhome", check_code=3)
    assert proc.stderr.strip().count("\n") == 0
    assert "no worker queue is bound to route 'nobodyhome'" in proc.stderr


def test_bad_parameter_is_a_usage_error(cli):
    proc = cli("submit", "resize", "--size", "200x200", "missing.jpg", check_code=2)
    assert "missing.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_job_help_is_generated_from_its_parameters(cli):
    out = cli("submit", "resize", "--help").stdout
    for flag in ("--size", "--mode", "--route", "--wait", "--timeout", "--retries", "--delay", "--priority", "--json"):
        assert flag in out


def test_plugins_and_config(cli, amqp_url):
    plugins = json.loads(cli("plugins", "--json").stdout)["plugins"]
    assert {"name": "media", "package": "runner", "version": "0.1.0",
            "jobs": ["contact-sheet", "convert", "resize", "thumbnails"]} in plugins
    config = json.loads(cli("config", "--json").stdout)
    assert config["broker_url"] == {"value": amqp_url, "source": "env RUNNER_BROKER_URL"}
    assert config["concurrency"]["source"] == "default"

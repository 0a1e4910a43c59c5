"""The user flow from the command line, against the real RabbitMQ and a real photo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_until
from PIL import Image

from runner import redact_url

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
    assert config["broker_url"] == {"value": redact_url(amqp_url), "source": "env RUNNER_BROKER_URL"}
    assert config["concurrency"]["source"] == "default"


def test_passwords_are_never_printed(cli, worker_process, route, cleanup_queues, amqp_url):
    # Given a broker URL with a password (the test broker's is "guest")
    password = amqp_url.split("@")[0].rpartition(":")[2]
    assert password
    # When the settings are shown, both ways
    shown = cli("config").stdout + cli("config", "--json").stdout
    # Then the URL is there with its password masked
    assert f":{password}@" not in shown
    assert ":***@127.0.0.1" in shown
    # And a worker's start-up log names the broker without the password
    cleanup_queues.append(f"test.{route}")
    line = worker_process(f"test.{route}", [f"{route}.#"]).wait_for_log("consuming queue")
    assert ":***@127.0.0.1" in line and f":{password}@" not in line


@pytest.mark.parametrize("toml, env, expected", [
    ("[broker\nurl = 1\n", {}, "Expected ']'"),
    ('[jobs.x]\nargv = 5\n', {}, "[jobs.x] argv"),
    ("", {"RUNNER_LOAD_PLUGINS": "", "RUNNER_PLUGINS": "no_such_plugin_module"}, "no_such_plugin_module failed to load"),
])
def test_config_and_plugin_errors_are_shown_instead_of_no_such_command(tmp_path, toml, env, expected):
    # Given a broken runner.toml, or a plugin that cannot be imported
    if toml:
        (tmp_path / "runner.toml").write_text(toml)
    full_env = {**os.environ, "RUNNER_PLUGINS": "jobs_plugin", **env}
    full_env.pop("RUNNER_CONFIG", None)
    # When a job is submitted
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", "submit", "resize", "--size", "2x2", "x.jpg"],
        env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    # Then the real error is printed in one line, as a runner error (exit 3)
    assert proc.returncode == 3, proc.stderr
    assert expected in proc.stderr and "No such command" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bash_completion_offers_job_names_and_their_options(tmp_path):
    # Given the completion script that `runner completion bash` prints, loaded in a real bash
    env = {**os.environ, "RUNNER_PLUGINS": "jobs_plugin",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = subprocess.run([sys.executable, "-m", "runner.cli", "completion", "bash"], env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        proc = subprocess.run(
            ["bash", "-c", f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
             '_runner_completion runner; printf "%s\\n" "${COMPREPLY[@]}"'],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout.split()

    # When a job name and then one of its options are half typed, Then both complete
    assert "resize" in complete("runner", "submit", "re")
    assert "--size" in complete("runner", "submit", "resize", "--si")
    assert "resize" in complete("runner", "run", "res")


def test_unclear_input_gets_a_clear_line(cli, tmp_path):
    photo = tmp_path / "rocket.jpg"
    shutil.copy(PHOTO, photo)
    # A bad duration names the option as the user typed it, never an internal name
    bad_delay = cli("submit", "resize", "--size", "20x20", "--delay", "5x", str(photo), check_code=2)
    assert "'--delay': '5x' is not a duration" in bad_delay.stderr and "opt_" not in bad_delay.stderr
    # A size past the limit names the limit
    huge = cli("submit", "resize", "--size", "99999999x99999999", str(photo), check_code=2)
    assert "each side must be between 1 and 20000" in huge.stderr
    # Something that is not a job id is refused before anything is sent
    revoke = cli("revoke", "notanid", check_code=2)
    assert "'notanid' is not a job id" in revoke.stderr


def test_a_past_eta_is_said_out_loud(cli, tmp_path, route, cleanup_queues, worker_process):
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    proc = cli("submit", "echo", "--text", "hi", "--route", route, "--eta", "2020-01-01T00:00Z")
    assert "warning: --eta 2020-01-01T00:00Z is in the past: the job may start at once" in proc.stderr


def test_dead_letters_from_foreign_publishers_are_listed(cli, amqp_url, cleanup_queues):
    # Given a dead letter with a millisecond timestamp and an AMQP timestamp header (the shared
    # runner.dead queue had both; `runner dead list --json` failed with a traceback)
    import datetime as dt

    from runner.broker import Envelope, Outgoing, Target, connect
    from runner.testing import unique_route

    route = unique_route()
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    job_id = f"foreign-{route}"
    odd = Envelope(body=b"{}", message_id=job_id, type="boom", routing_key=f"{route}.boom",
                   timestamp=1_700_000_000_000,
                   headers={"x-runner-attempt": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)})
    with connect(amqp_url) as broker:
        broker.declare_queue(queue, [f"{route}.#"])
        broker.publish(odd)

        settled = []

        def dead_letter(delivery) -> None:  # on the connection's thread: do not wait here
            settled.append(broker.settle(delivery, [Outgoing(odd, Target.DEAD)]))
            broker.stop_consuming()

        broker.consume(queue, 1, dead_letter)
        settled[0].result(10)
        try:
            # When the dead letters are listed (the shared queue may be scanned by other runs at
            # the same moment, hiding a letter for a while: list again until it shows)
            def listed() -> list:
                rows = json.loads(cli("dead", "list", "--json").stdout)
                return [r for r in rows if r["id"] == job_id]

            mine = wait_until(listed, 30, "the dead letter to be listed")
            # Then the listing works, with what could not be read as a time left out or as text
            assert mine[0]["submitted"] == "invalid timestamp 1700000000000"
            assert mine[0]["attempts"].startswith("2026")
        finally:
            assert broker.take_dead(job_id) is not None


def test_a_command_jobs_output_is_shown_unless_quiet(cli):
    # A command job's standard output comes first, as `docker run` shows it, then our line
    shown = cli("run", "envdump")
    assert "HOME=" in shown.stdout and "envdump " in shown.stdout.splitlines()[-1]
    assert shown.stdout.index("HOME=") < shown.stdout.index("succeeded in")
    # --quiet keeps only our line
    quiet = cli("run", "envdump", "--quiet")
    assert "HOME=" not in quiet.stdout and "succeeded in" in quiet.stdout
    # A failing command's standard error is shown before the failure line
    failing = cli("run", "exitcode", "--code", "3", check_code=1)
    assert failing.stderr.index("failing") < failing.stderr.index("failed after")
    # Progress lines are the progress bar's, not output
    progress = cli("run", "stepper-sh")
    assert "runner-progress" not in progress.stdout + progress.stderr

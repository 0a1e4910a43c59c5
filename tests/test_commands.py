"""Admin-defined system commands ([jobs.NAME] argv = [...]) through a real worker and RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from runner_commands import build_job

from runner import JobContext, PluginError
from runner.broker import connect
from runner.client import Client
from runner.errors import JobError
from runner.message import JobMessage
from runner.plugins import make_plugins
from runner.testing import running_worker

PRINTF = {"argv": ["printf", "%s\\n", "{text}"], "params": {"text": "str"}, "retries": 0}
EXIT = {
    # sh with a constant script: the value arrives as "$1", never as script text
    "argv": ["sh", "-c", 'echo "exiting $1" >&2; exit "$1"', "sh", "{code}"],
    "params": {"code": {"type": "int", "min": 0, "max": 255}},
    "retries": 2, "backoff": 0, "retry_on_exit": [75],
}


def injections(marker_dir: Path) -> list[str]:
    """Values a shell would run; each must arrive as one literal argument."""
    target = marker_dir / "pwned"
    return [
        f"; touch {target}1",
        f"$(touch {target}2)",
        f"`touch {target}3`",
        f"x && touch {target}4 || touch {target}4",
        f"| touch {target}5",
        "'\"; $HOME ${PATH} * ?",
        "{out} {text} %s %n",
    ]


@pytest.fixture
def command_env(amqp_url, settings_factory, route):
    """Start a worker, and a client, that both read the given [jobs] tables."""
    with ExitStack() as stack:

        def start(**jobs):
            settings = settings_factory(route, jobs=jobs)
            plugins = make_plugins(load=["commands"], settings=settings)
            stack.enter_context(running_worker(settings, plugins))
            return stack.enter_context(Client(connect(amqp_url), plugins, settings))

        yield start


def ctx(tmp_path: Path) -> JobContext:
    return JobContext(job_id="j", job="t", attempt=1, workdir=tmp_path)


@pytest.mark.parametrize("index", range(7))
def test_each_value_is_exactly_one_argv_element(tmp_path, index):
    # Given a command whose argument is a placeholder
    job = build_job("greet", PRINTF)
    value = injections(tmp_path)[index]
    # When the worker builds the argv from validated params
    argv = job.argv(job.validate({"text": value}, {}), ctx(tmp_path))
    # Then the value is one literal element, untouched
    assert argv == ["printf", "%s\\n", value]


def test_injection_attempts_print_literally_and_run_nothing(command_env, route, tmp_path):
    # Given a printf command job on a real worker
    client = command_env(greet=PRINTF)
    values = injections(tmp_path)
    # When each shell-injection attempt is submitted as the text
    handles = [client.submit("greet", {"text": v}, route=route, wait=True) for v in values]
    results = [h.wait(30) for h in handles]
    # Then printf printed each value literally, and none of the commands ran
    assert [r.stdout for r in results] == [v + "\n" for v in values]
    assert not list(tmp_path.glob("pwned*"))


def test_placeholders_inside_an_element_and_directories(command_env, route, tmp_path):
    # Given a command that writes into {out} with a file name built from a parameter
    client = command_env(note={
        "argv": ["sh", "-c", 'printf %s "$1" > "$2"', "sh", "{text}", "{out}/note-{name}.txt"],
        "params": {"text": "str", "name": {"pattern": "[a-z]+"}},
    })
    # When it runs
    result = client.submit("note", {"text": "$(id) `id`", "name": "abc"}, route=route,
                           wait=True).wait(30)
    # Then the output file carries the literal text
    assert [(f.name, f.data) for f in result.outputs] == [("note-abc.txt", b"$(id) `id`")]


def test_input_files_arrive_as_paths_in_the_in_directory(command_env, route, tmp_path):
    source = tmp_path / "; rm -rf ~.txt"
    source.write_text("payload")
    client = command_env(copy={"argv": ["cp", "{src}", "{out}/copy.txt"], "params": {"src": "file"}})
    result = client.submit("copy", files={"src": source}, route=route, wait=True).wait(30)
    assert [(f.name, f.data) for f in result.outputs] == [("copy.txt", b"payload")]


@pytest.mark.parametrize(
    "value, reason",
    [
        ("--version", "starts with '-'"),
        ("-rf", "starts with '-'"),
        ("two\nlines", "contains a newline"),
        ("nul\x00byte", "control character"),
        ("esc\x1b[31m", "control character"),
    ],
)
def test_option_smuggling_and_control_characters_are_refused(command_env, route, value, reason):
    client = command_env(greet=PRINTF)
    # The client refuses before anything is sent
    with pytest.raises(JobError, match=f"parameter 'text'.*{reason}"):
        client.submit("greet", {"text": value}, route=route)
    # And a worker refuses the same value in a hand-made message: dead-lettered, never run
    msg = JobMessage(job="greet", params={"text": value}, route=route)
    inbox = client.broker.reply_inbox()
    client.broker.publish(msg.to_envelope(reply_to=inbox.address))
    reply = inbox.get(msg.id, 30)
    assert reply is not None and reason in json.loads(reply.body)["error"]
    assert json.loads(reply.body)["attempts"] == 0
    assert client.broker.take_dead(msg.id) is not None


def test_dashes_and_newlines_pass_only_where_the_admin_allows_them(command_env, route):
    client = command_env(greet={
        **PRINTF, "params": {"text": {"allow_dash": True, "multiline": True}},
    })
    result = client.submit("greet", {"text": "--version\nrm -rf /"}, route=route, wait=True).wait(30)
    assert result.stdout == "--version\nrm -rf /\n"


@pytest.mark.parametrize(
    "params, bad, message",
    [
        ({"level": {"type": "int", "min": 0, "max": 9}}, {"level": 10}, "level"),
        ({"mode": {"choices": ["fast", "safe"]}}, {"mode": "fast; reboot"}, "mode"),
        ({"name": {"pattern": "^[a-z]+$"}}, {"name": "abc/../etc"}, "does not match"),
        ({"name": "str"}, {"name": ["a", "b"]}, "expected text"),
        ({"ratio": "float"}, {"ratio": "nan"}, "not a finite number"),
    ],
)
def test_values_are_validated_against_the_declaration(params, bad, message):
    argv = ["echo", *(f"{{{name}}}" for name in params)]
    job = build_job("check", {"argv": argv, "params": params})
    with pytest.raises(JobError, match=message):
        job.validate(bad, {})


def test_exit_codes_map_to_success_retry_and_fatal(command_env, route):
    # Given retry_on_exit = [75] and two retries
    client = command_env(status=EXIT)
    ok, retried, fatal = (
        client.submit("status", {"code": c}, route=route, wait=True) for c in (0, 75, 3)
    )
    # Then 0 succeeds, 75 is tried three times, anything else fails for good at once
    assert ok.wait(30).ok
    retried_result = retried.wait(30, raise_on_failure=False)
    assert retried_result.attempts == 3 and retried_result.error == "exited with status 75: exiting 75"
    fatal_result = fatal.wait(30, raise_on_failure=False)
    assert fatal_result.attempts == 1 and fatal_result.exit_code == 3
    assert fatal_result.stderr == "exiting 3\n"
    broker = client.broker
    assert broker.take_dead(retried.id).headers["x-runner-dead-reason"] == "attempts exhausted"
    assert broker.take_dead(fatal.id).headers["x-runner-dead-reason"] == "failed for good"


def test_retry_on_any_exit_except_the_fatal_ones(command_env, route):
    client = command_env(status={**EXIT, "retry_on_exit": "any", "fatal_on_exit": [64]})
    soft, hard = (client.submit("status", {"code": c}, route=route, wait=True) for c in (1, 64))
    assert soft.wait(30, raise_on_failure=False).attempts == 3
    assert hard.wait(30, raise_on_failure=False).attempts == 1
    client.broker.take_dead(soft.id)
    client.broker.take_dead(hard.id)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"argv": "pg_dump --dbname {db}"}, r"\[jobs.bad\] argv: expected a non-empty list of strings"),
        ({"argv": []}, r"\[jobs.bad\] argv: expected a non-empty list"),
        ({"argv": ["{prog}", "x"], "params": {"prog": "str"}}, "the program itself cannot be a placeholder"),
        ({"argv": ["echo", "{db.__class__}"]}, r"argv: .*attribute or index access"),
        ({"argv": ["echo", "{db[0]}"]}, r"argv: .*attribute or index access"),
        ({"argv": ["echo", "{db!r}"]}, r"argv: .*conversion or format spec"),
        ({"argv": ["echo", "{db:>9}"]}, r"argv: .*conversion or format spec"),
        ({"argv": ["echo", "{}"]}, r"argv: .*placeholders need a name"),
        ({"argv": ["echo", "{0}"]}, r"argv: .*placeholders need a name"),
        ({"argv": ["echo", "{unclosed"]}, r"argv: .*"),
        ({"argv": ["echo", "{db}"]}, r"argv: \{db\} is not a declared parameter"),
        ({"argv": ["echo"], "params": {"db": "str"}}, r"params.db: declared but not used in argv"),
        ({"argv": ["echo", "{db}"], "params": {"db": "text"}}, r"params.db.type: 'text' is not one of"),
        ({"argv": ["echo", "{db}"], "params": {"db": {"pattern": "("}}}, r"params.db.pattern: '\(' is not a regular"),
        ({"argv": ["echo", "{db}"], "params": {"db": {"type": "int", "pattern": "x"}}}, r"params.db.pattern: does not apply"),
        ({"argv": ["echo", "{db}"], "params": {"db": {"colour": "red"}}}, r"params.db.colour: unknown key"),
        ({"argv": ["echo", "{db}"], "params": {"db": {"default": "-x"}}}, r"params.db.default: .*starts with '-'"),
        ({"argv": ["echo", "{out}"], "params": {"out": "str"}}, r"params.out: 'out' is reserved"),
        ({"argv": ["echo", "{Db}"], "params": {"Db": "str"}}, r"params.Db: parameter name"),
        ({"argv": ["true"], "timeout": "soon"}, r"timeout: 'soon' is not a duration"),
        ({"argv": ["true"], "retries": -1}, r"retries: -1 is not an integer >= 0"),
        ({"argv": ["true"], "retry_on_exit": [0]}, r"retry_on_exit: \[0\]: expected a list of exit codes"),
        ({"argv": ["true"], "fatal_on_exit": "any"}, r"fatal_on_exit: 'any': expected a list"),
        ({"argv": ["true"], "route": "Heavy Jobs"}, r"route: 'Heavy Jobs' must be one lower-case word"),
        ({"argv": ["true"], "network": "yes"}, r"network: expected true or false"),
        ({"argv": ["true"], "memory": "lots"}, r"memory: 'lots' is not a size"),
    ],
)
def test_invalid_config_is_one_error_naming_job_and_field(table, message):
    with pytest.raises(PluginError, match=message):
        make_plugins(load=["commands"], settings=_settings(bad=table))


def test_config_becomes_timeout_route_policy_and_sandbox():
    job = make_plugins(load=["commands"], settings=_settings(backup={
        "argv": ["pg_dump", "--dbname", "{db}", "--file", "{out}/dump.sql"],
        "params": {"db": "str"}, "timeout": "10m", "retries": 3, "route": "heavy",
        "network": True, "retry_on_exit": [75], "memory": "1g", "webhook": "https://x.test/h",
    })).jobs.get("backup")
    assert (job.timeout, job.route, job.retry.attempts, job.retry.retry_on_exit) == (600, "heavy", 4, (75,))
    assert job.sandbox.network is True and job.sandbox.memory == 1 << 30
    assert job.retry.exit_is_retryable(75) and not job.retry.exit_is_retryable(1)
    assert [p.opts for p in job.params] == [["--db"]] and job.plugin == "commands"


def _settings(**jobs):
    from runner.config import Settings

    return Settings(jobs=jobs)


def test_from_the_cli_with_a_config_file(amqp_url, tmp_path, cleanup_queues):
    # Given a runner.toml an operator wrote
    (tmp_path / "runner.toml").write_text(
        "[jobs.greet]\n"
        'argv = ["printf", "%s\\\\n", "{text}"]\n'
        'params = { text = { help = "What to print." } }\n'
    )
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_LOAD_PLUGINS": "commands"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], check=False, env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    # Then `runner submit greet --help` shows the generated option
    helped = cli("submit", "greet", "--help")
    assert helped.returncode == 0 and "--text TEXT" in helped.stdout and "What to print." in helped.stdout
    # And `runner run` runs it through the pipeline, the value printed literally
    ran = cli("run", "greet", "--text", "$(touch pwned); rm -rf ~", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["stdout"] == "$(touch pwned); rm -rf ~\n"
    assert not (tmp_path / "pwned").exists()
    # And an option smuggled in is a usage error (exit 2) naming the parameter
    smuggled = cli("run", "greet", "--text=--help")
    assert smuggled.returncode == 2 and "starts with '-'" in smuggled.stderr

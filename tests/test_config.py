"""Settings precedence: flag > RUNNER_* env > runner.toml / [tool.runner] > default."""

from __future__ import annotations

import pytest

from runner.config import load, parse_duration, parse_size
from runner.errors import ConfigError


def test_precedence_and_sources(tmp_path):
    (tmp_path / "runner.toml").write_text('concurrency = 3\nqueue = "files"\n[routes]\nresize = "heavy"\n')
    env = {"RUNNER_QUEUE": "envq", "RUNNER_BROKER_URL": "amqp://h/"}
    s = load({"concurrency": 8}, environ=env, cwd=tmp_path)
    assert (s.concurrency, s.queue, s.broker_url, dict(s.routes)) == (8, "envq", "amqp://h/", {"resize": "heavy"})
    assert s.sources["concurrency"] == "flag"
    assert s.sources["queue"] == "env RUNNER_QUEUE"
    assert s.sources["routes"] == str(tmp_path / "runner.toml")
    assert s.sources["grace"] == "default"


def test_pyproject_tool_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname="x"\n[tool.runner]\nbindings = ["a.#", "b.*"]\n')
    s = load(environ={}, cwd=tmp_path)
    assert s.effective_bindings == ("a.#", "b.*")


def test_default_broker_is_the_embedded_one(tmp_path):
    s = load(environ={}, cwd=tmp_path)
    assert s.broker_url.startswith("sqlite:///") and s.sources["broker_url"] == "default"
    assert s.effective_bindings == ("default.#",)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUNNER_CONCURRENCY": "zero"}, "RUNNER_CONCURRENCY: invalid value 'zero' for concurrency"),
        ({"RUNNER_GRACE": "soon"}, "is not a duration"),
        ({"RUNNER_QUEUE": "bad queue!"}, "queue name 'bad queue!' is not valid"),
    ],
)
def test_bad_values_are_one_clear_error(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load(environ=env, cwd=tmp_path)


def test_unknown_setting_in_file_is_an_error(tmp_path):
    (tmp_path / "runner.toml").write_text("concurency = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'concurency'"):
        load(environ={}, cwd=tmp_path)


def test_units():
    assert parse_duration("1.5m") == 90 and parse_duration("250ms") == 0.25 and parse_duration(7) == 7
    assert parse_size("16MiB") == 16 << 20 and parse_size("512k") == 512 << 10


def test_redaction_masks_url_passwords_and_secret_keys():
    from runner.config import redact, redact_url

    assert redact_url("amqp://u:p%40ss@h1:5672/v,amqp://u:pw@h2/") == "amqp://u:***@h1:5672/v,amqp://u:***@h2/"
    assert redact_url("sqlite:////var/lib/runner/broker.sqlite3") == "sqlite:////var/lib/runner/broker.sqlite3"
    shown = redact({"email": {"password": "hunter2", "password_file": "/run/pw", "host": "smtp"},
                    "webhook": "https://user:tok@hooks.example/x"})
    assert shown == {"email": {"password": "***", "password_file": "/run/pw", "host": "smtp"},
                     "webhook": "https://user:***@hooks.example/x"}

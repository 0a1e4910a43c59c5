"""Signed job messages: a worker with keys runs only valid ones and dead-letters the rest."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pika
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runner.broker import JOBS_EXCHANGE, Envelope, connect
from runner.client import Client
from runner.message import H_ATTEMPT, JobMessage
from runner.signing import (
    H_SIG,
    SignatureError,
    Signer,
    Verifier,
    generate,
)
from runner.testing import running_worker


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    private, public = generate(tmp_path / "keys", "api-1")
    return {"private": private, "public": public}


@pytest.fixture
def signer(keys) -> Signer:
    return Signer.from_file(keys["private"])


@pytest.fixture
def signed_worker_settings(settings_factory, route, keys):
    return replace(settings_factory(route), signing={"trusted": {"api-1": str(keys["public"])}})


def _job(route: str, **params) -> Envelope:
    return JobMessage(job="echo", params={"text": "hi", **params}, route=route).to_envelope()


# --- the verifier on its own -------------------------------------------------------------------
def test_each_bad_signature_has_its_own_reason(signer):
    verifier = Verifier({"api-1": signer.key.public_key()}, ["r.#"])
    good = signer.sign(_job("r"))
    assert verifier.verify(good, 1).kid == "api-1"
    stranger = Signer(Ed25519PrivateKey.generate(), "api-1")  # claims a trusted key id
    other_kid = Signer(Ed25519PrivateKey.generate(), "somebody")
    cases = {
        "unsigned": _job("r"),
        "tampered": replace(good, body=good.body.replace(b'"hi"', b'"rm"')),
        "forged": stranger.sign(_job("r")),
        "wrong key": other_kid.sign(_job("r")),
        "expired": Signer(signer.key, "api-1", ttl=60).sign(_job("r"), now=time.time() - 3600),
        "not yet valid": signer.sign(_job("r"), now=time.time() + 3600),
        "wrongly routed": signer.sign(_job("elsewhere")),
    }
    reasons = {}
    for expected, env in cases.items():
        with pytest.raises(SignatureError) as info:
            verifier.verify(env, 1)
        reasons[expected] = str(info.value)
        assert str(info.value).startswith(expected), (expected, str(info.value))
    assert len(set(reasons.values())) == len(cases)


def test_a_settled_attempt_is_a_replay_but_the_next_attempt_is_not(signer):
    verifier = Verifier({"api-1": signer.key.public_key()}, ["r.#"])
    env = signer.sign(_job("r"))
    signed = verifier.verify(env, 1)
    verifier.settled(env, signed, 1)
    with pytest.raises(SignatureError, match="^replayed"):
        verifier.verify(env, 1)
    # A retry re-published by a worker: same signature, higher attempt
    retry = env.with_headers(**{H_ATTEMPT: 2})
    assert verifier.verify(retry, 2).kid == "api-1"


def test_the_signature_covers_every_field_a_worker_acts_on(signer):
    verifier = Verifier({"api-1": signer.key.public_key()}, ["#"])
    env = signer.sign(_job("r"))
    for change in (
        {"content_type": "application/x-pickle"}, {"routing_key": "r.rm"}, {"message_id": "other"},
        {"type": "boom"},
    ):
        with pytest.raises(SignatureError, match="^tampered"):
            verifier.verify(replace(env, **change), 1)


# --- through RabbitMQ ------------------------------------------------------------------------
def _publish_raw(amqp_url: str, env: Envelope, queue: str | None = None) -> None:
    """Publish as an attacker with broker access would: straight to the exchange or a queue."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        headers = dict(env.headers)
        if queue is not None:
            headers["x-runner-routing-key"] = env.routing_key
        props = pika.BasicProperties(content_type=env.content_type, message_id=env.message_id,
                                     type=env.type, headers=headers, delivery_mode=2)
        exchange, key = ("", queue) if queue else (JOBS_EXCHANGE, env.routing_key)
        conn.channel().basic_publish(exchange, key, env.body, props)
    finally:
        conn.close()


def _dead_reason(amqp_url: str, message_id: str, caplog, timeout: float = 30) -> str:
    """The reason the worker gave when it dead-lettered ``message_id`` (from its log line).

    The log, not the shared dead-letter queue, is the witness: other test runs on the same
    RabbitMQ may scan or purge that queue at any time.  The dead letter is removed when found.
    """
    prefix = f"message {message_id} dead-lettered: "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
        if lines:
            with connect(amqp_url) as broker:
                broker.take_dead(message_id)
            return lines[0][len(prefix):]
        time.sleep(0.05)  # waiting for the worker thread's log line
    raise AssertionError(f"{message_id} was not dead-lettered")


def test_bad_messages_are_dead_lettered_with_distinct_reasons_and_never_run(
    amqp_url, plugins, signed_worker_settings, settings_factory, route, signer, caplog
):
    caplog.set_level(logging.ERROR, logger="runner.worker")
    stranger = Signer(Ed25519PrivateKey.generate(), "api-1")  # a forger who knows the key id
    template = signer.sign(_job(route, text="original"))
    cases = {
        "unsigned": _job(route),
        "tampered": replace(template, body=template.body.replace(b'"original"', b'"changed"')),
        "forged": stranger.sign(_job(route)),
        "wrong key": Signer(Ed25519PrivateKey.generate(), "stolen").sign(_job(route)),
        "expired": Signer(signer.key, "api-1", ttl=1).sign(_job(route), now=time.time() - 600),
        # valid, but pushed into this worker's queue under another route's name
        "wrongly routed": signer.sign(_job(f"{route}x")),
    }
    with running_worker(signed_worker_settings, plugins), \
            Client(connect(amqp_url), plugins, settings_factory("client"), signer=signer) as client:
        for name, env in cases.items():
            queue = signed_worker_settings.queue if name == "wrongly routed" else None
            _publish_raw(amqp_url, env, queue)
        # A valid signed job runs once; the same message published again is a replay
        inbox = client.broker.reply_inbox()
        good = signer.sign(
            JobMessage(job="echo", params={"text": "signed"}, route=route).to_envelope(inbox.address)
        )
        client.broker.publish(good)
        reply = inbox.get(good.message_id, 30)
        assert reply is not None and b'"status":"succeeded"' in reply.body
        client.broker.publish(good)
        reasons = {name: _dead_reason(amqp_url, env.message_id, caplog) for name, env in cases.items()}
        reasons["replayed"] = _dead_reason(amqp_url, good.message_id, caplog)
    for expected, reason in reasons.items():
        assert reason.startswith(expected), (expected, reason)
    assert len(set(reasons.values())) == len(reasons)


def test_signed_jobs_keep_their_signature_through_retries(plugins, signed_worker_settings, settings_factory, route, signer, amqp_url):
    with running_worker(signed_worker_settings, plugins):
        with Client(connect(amqp_url), plugins, settings_factory("client"), signer=signer) as client:
            result = client.submit("flaky", {"fail_times": 2}, route=route, wait=True).wait(30)
    assert result.ok and result.attempts == 3


def test_a_replayed_retry_past_the_job_attempts_is_refused(plugins, signed_worker_settings, route, signer, amqp_url, caplog):
    caplog.set_level(logging.ERROR, logger="runner.worker")
    env = signer.sign(JobMessage(job="echo", params={"text": "x"}, route=route).to_envelope())
    with running_worker(signed_worker_settings, plugins):
        _publish_raw(amqp_url, env.with_headers(**{H_ATTEMPT: 50}))
        reason = _dead_reason(amqp_url, env.message_id, caplog)
    assert reason == "attempt 50 is past the job's 3 attempts"


def test_a_worker_without_keys_warns_once(plugins, settings_factory, route, caplog):
    with caplog.at_level(logging.WARNING, logger="runner.worker"):
        with running_worker(settings_factory(route), plugins):
            pass
    warnings = [r for r in caplog.records if "message signing is off" in r.getMessage()]
    assert len(warnings) == 1
    assert "anyone who can publish to the broker can run jobs" in warnings[0].getMessage()


def test_config_names_the_keys_for_client_and_worker(tmp_path, amqp_url, plugins, route, cleanup_queues):
    # Given keys from the CLI and a runner.toml naming them (relative to the file)
    cli = [sys.executable, "-m", "runner.cli"]
    out = subprocess.run([*cli, "keys", "generate", "--out", str(tmp_path / "keys"), "--kid", "k1"],
                         capture_output=True, text=True, check=True).stdout
    assert "k1.key" in out and (tmp_path / "keys" / "k1.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*cli, "keys", "generate", "--out", str(tmp_path / "keys"), "--kid", "k1"],
                           capture_output=True, text=True)
    assert again.returncode == 3 and "exists" in again.stderr
    config = tmp_path / "runner.toml"
    config.write_text('[signing]\nkey = "keys/k1.key"\n[signing.trusted]\nk1 = "keys/k1.pub"\n')
    from runner.config import load
    from runner.testing import settings_for

    loaded = load(environ={"RUNNER_CONFIG": str(config)})
    settings = settings_for(amqp_url, route, signing=loaded.signing, sources=loaded.sources,
                            workdir=str(tmp_path / "work"))
    cleanup_queues.append(settings.queue)
    # When a client signs with it and a worker verifies with it, the job runs
    with running_worker(settings, plugins) as worker, Client(connect(amqp_url), plugins, settings) as client:
        assert client.signer is not None and worker.verifier is not None
        env = client.submit("echo", {"text": "k"}, route=route, wait=True)
        assert env.wait(30).ok
    assert json.loads(json.dumps(loaded.signing))["trusted"] == {"k1": "keys/k1.pub"}


def test_message_headers_name_the_key_and_validity(signer):
    env = signer.sign(_job("r"), delay=10)
    h = env.headers
    assert h["x-runner-sig-kid"] == "api-1" and h["x-runner-sig-alg"] == "ed25519"
    assert h["x-runner-expires"] - h["x-runner-issued-at"] == (10 + 24 * 3600) * 1000
    assert len(h[H_SIG]) == 88

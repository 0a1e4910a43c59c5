"""Failure e-mails against a real SMTP server (aiosmtpd on loopback, STARTTLS + AUTH, a private CA
made at test time) and real workers on the real RabbitMQ."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from html import escape
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runner.broker import connect
from runner.client import Client
from runner.config import Settings
from runner.errors import ConfigError, JobFailed
from runner.message import JobMessage, JobResult, JobStatus
from runner.plugins import make_plugins
from runner.testing import running_worker, unique_route
from runner_notify import notifier_for
from runner_notify.config import email_settings, job_rules
from runner_notify.flood import Verdict
from runner_notify.report import Failure, normalise
from runner_notify.sender import NOTIFIERS, Notifier

HOST = socket.gethostname()
TESTS = Path(__file__).parent
USER, PASSWORD = "runner", "smtp-pass-5ecret"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


# --- a private CA and an SMTP server that insists on STARTTLS and a login --------------------
@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1/localhost, made now."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runner test CA")])

    def cert(subject, public_key, *extensions):
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = cert(ca_name, ca_key.public_key(),
              (x509.BasicConstraints(ca=True, path_length=0), True),
              (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                             key_agreement=False, encipher_only=False, decipher_only=False), True),
              (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False))
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key.public_key(),
                  (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                  (x509.BasicConstraints(ca=False, path_length=None), True),
                  (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
                  (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return SimpleNamespace(ca_file=str(ca_file), context=context)


class Sink:
    """aiosmtpd handler keeping what it received; tests wait on it with a deadline."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list = []
        self.sessions: list[dict] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        msg = message_from_bytes(envelope.content, policy=policy.default)
        with self.changed:
            self.messages.append(msg)
            tls = server.transport.get_extra_info("ssl_object") is not None
            self.sessions.append({"tls": tls, "user": session.auth_data,
                                  "rcpt": list(envelope.rcpt_tos)})
            self.changed.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 30) -> list:
        with self.changed:
            arrived = self.changed.wait_for(lambda: len(self.messages) >= count, timeout)
            assert arrived, f"{len(self.messages)} of {count} e-mails arrived within {timeout}s"
            return list(self.messages)


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=USER if ok else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp(tls):
    """Start an SMTP server (STARTTLS required, or implicit TLS with security="ssl"), AUTH required."""
    controllers = []

    def start(port: int | None = None, security: str = "starttls") -> Sink:
        sink = Sink(port or free_port())
        tls_args = ({"ssl_context": tls.context, "auth_require_tls": False}  # all of it is TLS
                    if security == "ssl" else {"tls_context": tls.context, "require_starttls": True})
        controller = Controller(sink, hostname="127.0.0.1", port=sink.port, auth_required=True,
                                authenticator=authenticate, **tls_args)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def silent_smtp():
    """A server that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = SimpleNamespace(port=listener.getsockname()[1], accepted=threading.Event(), conns=[])

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            server.conns.append(conn)
            server.accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    yield server
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    for conn in server.conns:
        conn.close()


@pytest.fixture(autouse=True)
def stop_senders():
    yield
    NOTIFIERS.halt_all(timeout=10)


def email_config(tmp_path: Path, tls, port: int, **changes) -> dict:
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    return {
        "smtp_host": "127.0.0.1", "smtp_port": port, "security": "starttls",
        "username": USER, "password_file": str(password_file), "ca_file": tls.ca_file,
        "from": "runner@test.example", "to": ["ops@test.example"],
        "spool_dir": str(tmp_path / "spool"), "timeout": "10s",
        "retry_wait": "50ms", "retry_max_wait": "200ms",  # fast backoff, not a sleep in the test
        **changes,
    }


def write_toml(path: Path, email: dict) -> Path:
    path.write_text("[notify.email]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in email.items()))
    return path


def runner_notify_test(config: Path) -> subprocess.CompletedProcess:
    """``runner notify test`` with this configuration (and only this plugin loaded)."""
    env = {**os.environ, "RUNNER_CONFIG": str(config), "RUNNER_LOAD_PLUGINS": "notify"}
    return subprocess.run([sys.executable, "-m", "runner.cli", "notify", "test"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def parts(msg) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


@pytest.fixture(scope="module")
def notify_plugins():
    return make_plugins(modules=["jobs_plugin", "notify_jobs"])


@pytest.fixture
def client(amqp_url, notify_plugins, settings_factory):
    c = Client(connect(amqp_url), notify_plugins, settings_factory("client"))
    yield c
    c.close()


@pytest.fixture
def dead(amqp_url):
    """Ids of jobs that end up dead-lettered; removed from the dead-letter queue afterwards."""
    ids: list[str] = []
    yield ids
    with connect(amqp_url) as broker:
        for job_id in ids:
            broker.take_dead(job_id)


# --- one failure, end to end -----------------------------------------------------------------
def test_a_dead_job_sends_one_email_with_what_it_takes_to_act(
    client, notify_plugins, settings_factory, route, smtp, tls, tmp_path, dead
):
    # Given a worker whose failure e-mails go through a server wanting STARTTLS and a login
    sink = smtp()
    email = email_config(tmp_path, tls, sink.port, dashboard_url="https://dash.example/jobs/{id}")
    with running_worker(settings_factory(route, notify={"email": email}, grace=1.0), notify_plugins) as worker:
        # When a job fails on its last attempt
        handle = client.submit("boom", {"message": "bad <pixels> & more"}, route=route, wait=True)
        dead.append(handle.id)
        with pytest.raises(JobFailed):
            handle.wait(30)
        # Then exactly one e-mail arrives, over TLS, logged in
        assert notifier_for(worker).wait(lambda n: n.delivered == 1 and not n.spool.pending(), 30)
    [msg] = sink.wait_for(1)
    assert sink.sessions == [{"tls": True, "user": USER, "rcpt": ["ops@test.example"]}]
    assert msg["Subject"] == f"[runner] boom dead: ValueError: boom: bad <pixels> & more [{HOST}]"
    assert (msg["From"], msg["To"], msg["Auto-Submitted"]) == (
        "runner@test.example", "ops@test.example", "auto-generated")
    assert (msg["X-Runner-Job"], msg["X-Runner-Job-Id"]) == ("boom", handle.id)
    text, html = parts(msg)
    raising = 'raise ValueError(f"boom: {message}")'
    for body, source_line in ((text, raising), (html, escape(raising))):
        assert handle.id in body and f"{route}.boom" in body and HOST in body
        assert "is dead after 2 attempt(s): attempts exhausted" in body
        # the job's own traceback, from its child interpreter: its source file and line
        assert f'{TESTS / "jobs_plugin.py"}' in body and source_line in body
        assert "runner/worker.py" not in body
        assert f"runner dead retry {handle.id}" in body
        assert f"https://dash.example/jobs/{handle.id}" in body
    # attempt history with times and workers
    assert "#1  " in text and "#2  " in text and text.count(f"on {worker.name}") >= 2
    assert 'message = "bad <pixels> & more"' in text
    # HTML escapes what the job said
    assert "bad &lt;pixels&gt; &amp; more" in html and "<pixels>" not in html
    assert f'<a href="https://dash.example/jobs/{handle.id}">' in html


def test_secrets_stay_out_of_the_email(client, notify_plugins, settings_factory, route, smtp, tls, tmp_path, dead):
    # Given a job whose password is declared secret, whose token is secret by name, and whose
    # note is named secret by the operator; and a per-job recipient
    sink = smtp()
    secrets = {"password": "hunter2-pass", "api_token": "tok-9f8e7d6c", "note": "private-note"}
    settings = settings_factory(
        route, grace=1.0, notify={"email": email_config(tmp_path, tls, sink.port)},
        jobs={"login": {"notify": {"secret_params": ["note"], "to": ["security@test.example"]}}},
    )
    with running_worker(settings, notify_plugins):
        # When it fails, printing and raising its secrets
        handle = client.submit("login", {"user": "alice", **secrets}, route=route, wait=True)
        dead.append(handle.id)
        result = handle.wait(30, raise_on_failure=False)
        assert secrets["password"] in result.error  # the job really leaked it
        [msg] = sink.wait_for(1)
    # Then the e-mail names the user but none of the secrets, anywhere
    text, html = parts(msg)
    assert msg["To"] == "security@test.example"
    for value in secrets.values():
        assert value not in msg["Subject"] and value not in text and value not in html
    assert 'password = "[redacted]"' in text and 'api_token = "[redacted]"' in text
    assert 'note = "[redacted]"' in text and 'user = "alice"' in text
    assert "connecting as alice with password [redacted] and token [redacted]" in text  # stderr tail
    assert "notify_jobs.py" in text and "PermissionError: login refused for alice" in text


def test_every_failure_mode_mails_each_attempt_and_per_job_rules_apply(
    client, notify_plugins, settings_factory, route, smtp, tls, tmp_path, dead
):
    # Given boom's failures mailed on every attempt, and echo's not at all
    sink = smtp()
    settings = settings_factory(route, grace=1.0, notify={"email": email_config(tmp_path, tls, sink.port)},
                                jobs={"boom": {"notify": {"on": "every_failure"}},
                                      "login": {"notify": {"enabled": False}}})
    with running_worker(settings, notify_plugins) as worker:
        # When boom fails twice (then is dead), and login fails for good
        quiet = client.submit("login", {"user": "u", "password": "p", "api_token": "t"}, route=route, wait=True)
        handle = client.submit("boom", {"message": "twice"}, route=route, wait=True)
        dead.extend([quiet.id, handle.id])
        for h in (quiet, handle):
            h.wait(30, raise_on_failure=False)
        # Then two e-mails: the retried attempt, and the death; none for login
        assert notifier_for(worker).wait(lambda n: n.delivered >= 2 and not n.spool.pending(), 30)
    assert [m["Subject"] for m in sink.messages] == [
        f"[runner] boom attempt 1 failed: ValueError: boom: twice [{HOST}]",
        f"[runner] boom dead: ValueError: boom: twice [{HOST}]",
    ]
    assert "failed on attempt 1; runner will try it again" in parts(sink.messages[0])[0]


def test_a_message_that_cannot_run_is_reported_too(amqp_url, plugins, settings_factory, route, smtp, tls, tmp_path, dead):
    # Given a worker with failure e-mails
    sink = smtp()
    with running_worker(settings_factory(route, grace=1.0, notify={"email": email_config(tmp_path, tls, sink.port)}), plugins):
        # When a message for a job type nobody knows arrives
        message = JobMessage(job="nosuchjob", params={"token": "tok-123456"}, route=route)
        dead.append(message.id)
        with connect(amqp_url) as broker:
            broker.publish(message.to_envelope())
        [msg] = sink.wait_for(1)
    # Then the people are told it could not run, and why
    assert msg["Subject"] == f"[runner] nosuchjob dead: unknown job 'nosuchjob' [{HOST}]"
    text = parts(msg)[0]
    assert f"Job nosuchjob {message.id} could not be run (unknown job 'nosuchjob')." in text
    assert 'token = "[redacted]"' in text and "tok-123456" not in text


# --- flood control -----------------------------------------------------------------------------
def test_a_burst_of_identical_failures_is_one_email_then_one_digest(plugins, settings_factory, route, smtp, tls, tmp_path):
    # Given a worker with failure e-mails and a long grouping window
    sink = smtp()
    settings = settings_factory(route, grace=1.0, notify={"email": email_config(tmp_path, tls, sink.port, window="1h")})
    job = plugins.jobs.get("boom")
    with running_worker(settings, plugins) as worker:
        notifier = notifier_for(worker)

        def fail(i: int) -> str:
            message = JobMessage(job="boom", params={"message": f"row {i}"}, route=route, attempt=2)
            error = f"ValueError: boom: bad <row> {i} in batch {uuid.uuid4().hex}"
            result = JobResult(id=message.id, job="boom", status=JobStatus.FAILED, attempts=2, error=error,
                               traceback=f"Traceback (most recent call last):\n{error}\n", worker=worker.name)
            plugins.job_failed(job, message, result, True, worker)
            plugins.job_dead(job, message, "attempts exhausted", result, worker)
            return message.id

        # When 50 identical failures (ids and numbers aside) happen at once in 8 slots
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(fail, range(50)))
        # Then one e-mail goes out at once
        assert notifier.wait(lambda n: n.delivered >= 1 and not n.spool.pending(), 30)
        assert len(sink.messages) == 1
        # And when the window closes, one digest with the count and every other job id
        notifier.flush()
        assert notifier.wait(lambda n: n.delivered >= 2 and not n.spool.pending(), 30)
    first, digest = sink.wait_for(2)
    assert len(sink.messages) == 2
    assert first["X-Runner-Notification"] == "dead" and first["X-Runner-Job-Id"] in ids
    assert "bad &lt;row&gt;" in parts(first)[1]
    assert (digest["X-Runner-Notification"], digest["X-Runner-Digest-Count"]) == ("digest", "49")
    assert digest["Subject"] == f"[runner] boom digest: 49 identical failure(s) [{HOST}]"
    text, html = parts(digest)
    others = set(ids) - {first["X-Runner-Job-Id"]}
    assert all(job_id in text and job_id in html for job_id in others)
    assert "49 failure(s) of job boom" in text and "runner dead retry ID" in text


def test_windows_close_by_the_clock_and_the_hourly_cap_holds(smtp, tls, tmp_path):
    # Given a notifier on a clock the test moves, a 10-minute window and a cap of 3 an hour
    sink = smtp()
    cfg = email_settings(Settings(notify={"email": email_config(tmp_path, tls, sink.port, window="10m", max_per_hour=3)}))
    now = [1_000_000.0]
    notifier = Notifier(cfg, clock=lambda: now[0])
    notifier.start()

    def failure(job_id: str, error: str) -> Failure:
        return Failure(kind="dead", job="boom", job_id=job_id, error=error, to=cfg.to)

    try:
        # When failures come: two identical, then distinct ones past the cap
        verdicts = [notifier.notify(failure(i, e)) for i, e in [
            ("a1", "OSError: disk 1 full"), ("a2", "OSError: disk 2 full"), ("b1", "KeyError: 'width'"),
            ("c1", "TypeError: no"), ("d1", "IndexError: out of range"), ("e1", "ZeroDivisionError"),
        ]]
        # Then three e-mails and a single "cap reached" notice go out
        assert verdicts == [Verdict.SEND, Verdict.GROUPED, Verdict.SEND, Verdict.SEND, Verdict.CAPPED, Verdict.CAPPED]
        sink.wait_for(4)
        assert [m["X-Runner-Notification"] for m in sink.messages] == ["dead", "dead", "dead", "cap"]
        assert [m["X-Runner-Job-Id"] for m in sink.messages[:3]] == ["a1", "b1", "c1"]
        # When the windows close within the capped hour: their digests are held back too
        now[0] += 601
        notifier.kick()

        def windows_closed(n: Notifier) -> bool:
            with n.gate.state() as state:
                return not state.windows

        assert notifier.wait(windows_closed, 30)
        with notifier.gate.state() as state:
            assert state.withheld == 3
        assert len(sink.messages) == 4
        # When the hour is over: the next e-mail goes out and says how many were held back
        now[0] += 3600
        assert notifier.notify(failure("f1", "RuntimeError: new")) is Verdict.SEND
        last = sink.wait_for(5)[-1]
        assert "3 failure(s) before this one were not e-mailed" in parts(last)[0]
    finally:
        notifier.halt()


def test_identical_means_same_job_and_error_with_ids_and_numbers_blanked():
    assert normalise("ValueError: row 17 of batch 3f2a9c1e8b7d4e6f") == normalise(
        "ValueError: row 9 of batch 0b1c2d3e4f5a6b7c")
    assert normalise("OSError: at 0x7f3a2b and job 123e4567-e89b-12d3-a456-426614174000") == (
        "OSError: at <hex> and job <id>")
    assert normalise("KeyError: 'width'") != normalise("KeyError: 'height'")


# --- delivery off the job path -----------------------------------------------------------------
def test_smtp_down_then_up_every_notification_is_delivered_once(
    client, notify_plugins, settings_factory, route, smtp, tls, tmp_path, dead
):
    # Given a worker whose SMTP server is down
    port = free_port()
    settings = settings_factory(route, grace=1.0, notify={"email": email_config(tmp_path, tls, port)})
    with running_worker(settings, notify_plugins) as worker:
        notifier = notifier_for(worker)
        # When three different jobs fail for good
        handles = [client.submit("boom", {"message": w}, route=route, wait=True) for w in WORDS[:3]]
        dead.extend(h.id for h in handles)
        for handle in handles:
            handle.wait(30, raise_on_failure=False)
        # Then their e-mails wait in the spool while the sender keeps trying
        assert notifier.wait(lambda n: len(n.spool.pending()) == 3 and n.failed_passes >= 2, 30)
        # And when the server comes back, each is delivered, once
        sink = smtp(port=port)
        assert notifier.wait(lambda n: not n.spool.pending() and n.delivered == 3, 30)
    received = sink.wait_for(3)
    assert sorted(m["X-Runner-Job-Id"] for m in received) == sorted(h.id for h in handles)
    assert len({m["Message-ID"] for m in received}) == 3 and len(sink.messages) == 3


def test_spooled_mail_survives_a_worker_restart(worker_process, amqp_url, plugins, cleanup_queues, smtp, tls, tmp_path, dead):
    # Given a `runner worker` process whose SMTP server is down
    port = free_port()
    config = write_toml(tmp_path / "runner.toml", email_config(tmp_path, tls, port))
    route = unique_route()
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    env = {"RUNNER_CONFIG": str(config)}
    first = worker_process(queue, [f"{route}.#"], env=env)
    client = Client(connect(amqp_url), plugins, Settings(broker_url=amqp_url))
    try:
        # When a job fails for good and its e-mail cannot go out
        handle = client.submit("boom", {"message": "before the restart"}, route=route, wait=True)
        dead.append(handle.id)
        handle.wait(30, raise_on_failure=False)
        first.wait_for_log("cannot deliver e-mail")
        # and the worker is stopped
        assert first.stop() == 0
    finally:
        client.close()
    assert len(list((tmp_path / "spool").glob("*.eml"))) == 1
    # Then a new worker delivers it once the server is back
    sink = smtp(port=port)
    second = worker_process(queue, [f"{route}.#"], env=env)
    [msg] = sink.wait_for(1, timeout=60)
    second.wait_for_log("notify: delivered")
    assert msg["X-Runner-Job-Id"] == handle.id
    assert list((tmp_path / "spool").glob("*.eml")) == []


def test_workers_in_one_process_share_the_sender_of_their_spool(
    client, plugins, settings_factory, smtp, tls, tmp_path, dead
):
    # Given two workers in this process, on two routes, with the same spool directory
    sink = smtp()
    email = email_config(tmp_path, tls, sink.port)
    first_route, second_route = unique_route(), unique_route()
    with running_worker(settings_factory(second_route, grace=1.0, notify={"email": email}), plugins) as second:
        # (grace 0: were the sender stopped with the first worker, it would stop at once)
        with running_worker(settings_factory(first_route, grace=0.0, notify={"email": email}), plugins) as first:
            assert notifier_for(first) is notifier_for(second)
        # When the first worker has stopped and a job fails on the second
        handle = client.submit("boom", {"message": "after the first stopped"}, route=second_route, wait=True)
        dead.append(handle.id)
        handle.wait(30, raise_on_failure=False)
        # Then its e-mail still goes out
        [msg] = sink.wait_for(1)
    assert msg["X-Runner-Job-Id"] == handle.id


def test_jobs_keep_flowing_while_the_smtp_server_hangs(
    client, notify_plugins, settings_factory, route, silent_smtp, tls, tmp_path, dead
):
    # Given an SMTP server that accepts connections and never answers, and a patient client
    email = email_config(tmp_path, tls, silent_smtp.port, timeout="120s")
    settings = settings_factory(route, grace=1.0, concurrency=2, notify={"email": email})
    with running_worker(settings, notify_plugins) as worker:
        # When ten jobs fail for good, each with its own error: ten e-mails to send
        handles = [client.submit("boom", {"message": w}, route=route, wait=True) for w in WORDS]
        dead.extend(h.id for h in handles)
        # Then every job still completes: no job slot waits for the mail
        results = [h.wait(60, raise_on_failure=False) for h in handles]
        assert [r.attempts for r in results] == [2] * 10 and not any(r.ok for r in results)
        # And the mail waits, durably, for the server to answer
        assert silent_smtp.accepted.wait(30)
        assert notifier_for(worker).wait(lambda n: len(n.spool.pending()) == 10, 30)


# --- `runner notify test` ----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS is TLS
@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_notify_test_sends_a_test_email_and_says_so(smtp, tls, tmp_path, security):
    sink = smtp(security=security)
    config = write_toml(tmp_path / "runner.toml", email_config(tmp_path, tls, sink.port, security=security))
    out = runner_notify_test(config)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"test e-mail to ops@test.example accepted by 127.0.0.1:{sink.port} ({security}, as {USER})\n"
    [msg] = sink.wait_for(1)
    assert msg["Subject"] == f"[runner] test e-mail [{HOST}]"
    assert sink.sessions[0]["tls"] and sink.sessions[0]["user"] == USER


@pytest.mark.parametrize("problem, expected", [
    ("down", "Connection refused"),
    ("bad password", "535"),
    ("untrusted", "TLS certificate not trusted"),
])
def test_notify_test_reports_a_failure_in_one_line(smtp, tls, tmp_path, problem, expected):
    port = free_port() if problem == "down" else smtp().port
    email = email_config(tmp_path, tls, port)
    if problem == "bad password":
        (tmp_path / "wrong-password").write_text("nope")
        email["password_file"] = str(tmp_path / "wrong-password")
    if problem == "untrusted":
        del email["ca_file"]
    config = write_toml(tmp_path / "runner.toml", email)
    out = runner_notify_test(config)
    assert out.returncode == 3
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"error: test e-mail not sent via 127.0.0.1:{port} (starttls, as {USER}): ")
    assert expected in line


# --- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"smtp_host": None}, "[notify.email] smtp_host is required"),
    ({"security": "tls"}, "[notify.email] security: 'tls' is not one of starttls, ssl, none"),
    ({"to": ["ops at example"]}, "[notify.email] to: 'ops at example' is not an e-mail address"),
    ({"to": ["ops@example.com\r\nBcc: x@evil"]}, "is not an e-mail address"),
    ({"password_file": None}, "username and password_file go together"),
    ({"password_file": "/nonexistent/pw"}, "[notify.email] password_file: cannot read /nonexistent/pw"),
    ({"smtp_hots": "x"}, "unknown setting 'smtp_hots'"),
    ({"window": "soon"}, "[notify.email] window: 'soon' is not a duration"),
    ({"on": "sometimes"}, "[notify.email] on: 'sometimes' is not one of dead, every_failure"),
    ({"max_per_hour": 0}, "max_per_hour: expected a whole number from 1"),
])
def test_bad_settings_are_one_clear_line(tls, tmp_path, change, message):
    email = {k: v for k, v in {**email_config(tmp_path, tls, 25), **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        email_settings(Settings(notify={"email": email}))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_per_job_overrides_are_checked():
    with pytest.raises(ConfigError, match=r"\[jobs.resize.notify\] on: 'daily' is not one of"):
        job_rules(Settings(jobs={"resize": {"notify": {"on": "daily"}}}))
    rules = job_rules(Settings(jobs={"resize": {"notify": {"to": ["a@b.example"], "enabled": False}},
                                     "other": {"argv": ["true"]}}))
    assert list(rules) == ["resize"] and rules["resize"].to == ("a@b.example",) and not rules["resize"].enabled


def test_a_bad_configuration_turns_mail_off_with_one_error_line(plugins, settings_factory, route, caplog):
    email = {"smtp_host": "127.0.0.1", "to": ["ops@test.example"], "security": "tls"}
    with caplog.at_level(logging.INFO, logger="runner_notify"), \
         running_worker(settings_factory(route, notify={"email": email}), plugins) as worker:
        assert notifier_for(worker) is None
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("runner_notify")]
    assert errors == [(f"notify: [notify.email] security: 'tls' is not one of starttls, ssl, none; "
                       f"failure e-mails are off for worker {worker.name}")]


def test_without_email_settings_the_plugin_does_nothing(client, plugins, settings_factory, route, caplog, dead):
    before = set(threading.enumerate())
    with caplog.at_level(logging.DEBUG, logger="runner_notify"), \
         running_worker(settings_factory(route), plugins) as worker:
        handle = client.submit("boom", {"message": "quiet"}, route=route, wait=True)
        dead.append(handle.id)
        handle.wait(30, raise_on_failure=False)
        started = set(threading.enumerate()) - before
    assert notifier_for(worker) is None
    assert not [t for t in started if t.name == "notify-sender"]
    assert not [r for r in caplog.records if r.name.startswith("runner_notify")]

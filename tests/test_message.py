"""Protocol v1: golden messages pin the bytes; bad messages are refused with a reason."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from runner.broker import Envelope
from runner.errors import MessageError
from runner.message import JobMessage, JobResult

GOLDEN = Path(__file__).parent.parent / "fixtures" / "messages"
sys.path.insert(0, str(GOLDEN))
from make_golden import envelope_record, golden_job, golden_result  # noqa: E402


def test_job_message_encodes_to_the_golden_bytes():
    env = golden_job().to_envelope(reply_to="amq.rabbitmq.reply-to")
    assert env.body == (GOLDEN / "job-v1.body.json").read_bytes()
    assert envelope_record(env) == json.loads((GOLDEN / "job-v1.envelope.json").read_text())


def test_golden_job_message_decodes_to_the_same_job():
    record = json.loads((GOLDEN / "job-v1.envelope.json").read_text())
    env = Envelope(
        body=(GOLDEN / "job-v1.body.json").read_bytes(), message_id=record["message_id"],
        type=record["type"], routing_key=record["routing_key"], headers=record["headers"],
    )
    assert JobMessage.from_envelope(env) == golden_job()


def test_result_message_round_trips_through_the_golden_bytes():
    env = golden_result().to_envelope("amq.rabbitmq.reply-to.x")
    assert env.body == (GOLDEN / "result-v1.body.json").read_bytes()
    assert JobResult.from_envelope(env) == golden_result()


def _env(body: dict | bytes, **headers) -> Envelope:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Envelope(body=raw, message_id="m", type="t", routing_key="r.t", headers=headers)


GOOD = json.loads((GOLDEN / "job-v1.body.json").read_text())


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"protocol": 2}, "unsupported protocol version 2"),
        ({"job": ""}, "job: expected a non-empty name"),
        ({"route": "a.b"}, "route 'a.b' must be one word"),
        ({"params": [1]}, "params: expected an object"),
        ({"options": {"priority": 10}}, "options.priority"),
        ({"options": {"timeout": -1}}, "options.timeout: must be positive"),
        ({"files": {"image": {"name": "../../etc/passwd", "data": ""}}}, "is not a plain file name"),
        ({"files": {"image": {"name": "a.png", "data": "!!!"}}}, "not valid base64"),
        ({"files": {"image": {"name": "a.png", "data": base64.b64encode(b"x").decode(), "sha256": "0" * 64}}},
         "sha256 does not match"),
    ],
)
def test_invalid_job_messages_are_refused_with_the_reason(change, reason):
    with pytest.raises(MessageError, match=reason.replace(".", r"\.").replace("(", r"\(")):
        JobMessage.from_envelope(_env({**GOOD, **change}))


def test_non_json_and_wrong_content_type_are_refused():
    with pytest.raises(MessageError, match="not UTF-8 JSON"):
        JobMessage.from_envelope(_env(b"\x80\x81"))
    with pytest.raises(MessageError, match="not application/json"):
        JobMessage.from_envelope(
            Envelope(body=b"{}", message_id="m", type="t", routing_key="r", content_type="application/x-pickle")
        )

"""Wire protocol v1: job and result messages, and their encoding into envelopes.

The body is UTF-8 JSON; properties and headers carry what a broker or monitor needs without
decoding the body.  docs/protocol.md describes every field, and the golden messages in
``fixtures/messages/`` pin the exact bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runner import headers as bounded
from runner import fields, safejson
from runner.broker import Envelope
from runner.errors import MessageError
from runner.fields import MAX_HISTORY, MAX_NAME, check_file_name, check_url  # noqa: F401 - API

PROTOCOL = 1
H_PROTOCOL = "x-runner-protocol"
H_ATTEMPT = "x-runner-attempt"
H_DELIVERIES = "x-runner-deliveries"
H_DEAD_REASON = "x-runner-dead-reason"
H_DEAD_ERROR = "x-runner-error"
H_HISTORY = "x-runner-history"  # JSON list of earlier attempts of this job
MAX_BODY = 64 * 1024 * 1024
MAX_PRIORITY = 9
MAX_PARAMS = 256  # parameters of one job
MAX_FILES = 64  # input files of one job
MAX_HEADER = 256 * 1024  # characters of one string header (the attempt history is the largest)


class JobStatus(str, enum.Enum):
    """The final state a result reports."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class FileData:
    """A file in a message: inline (``data``), or by reference to shared storage (``ref``).

    A reference is a path relative to the ``shared_storage`` directory, with the file's size
    and sha256 (see :mod:`runner.shared`).
    """

    name: str
    data: bytes = b""
    ref: str | None = None
    ref_size: int = 0
    ref_sha256: str = ""

    @property
    def sha256(self) -> str:
        return self.ref_sha256 if self.ref else hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return self.ref_size if self.ref else len(self.data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "size": self.size, "sha256": self.sha256}
        if self.ref:
            out["ref"] = self.ref
        else:
            out["data"] = base64.b64encode(self.data).decode("ascii")
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> FileData:
        if not isinstance(obj, dict):
            raise MessageError(f"{where}: expected an object")
        name = check_file_name(obj.get("name"), where)
        if "ref" in obj:
            ref, size, sha = obj.get("ref"), obj.get("size"), obj.get("sha256")
            parts = ref.split("/") if isinstance(ref, str) else []
            if len(parts) != 3 or parts[1] not in ("in", "out"):
                raise MessageError(f"{where}: ref must be <job id>/in|out/<name>")
            for part in parts:
                check_file_name(part, f"{where}.ref")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise MessageError(f"{where}: size must be a non-negative integer")
            if not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef"):
                raise MessageError(f"{where}: sha256 must be 64 hex digits")
            return cls(name=name, ref=ref, ref_size=size, ref_sha256=sha)
        try:
            data = base64.b64decode(obj.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise MessageError(f"{where}: data is not valid base64") from exc
        if "sha256" in obj and hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise MessageError(f"{where}: sha256 does not match the data")
        return cls(name=name, data=data)


@dataclass(frozen=True)
class JobOptions:
    """Per-submission options; they never mix with the job's own parameters."""

    timeout: float | None = None
    retries: int | None = None
    priority: int = 0
    webhook: str | None = None
    expires: float | None = None  # epoch seconds: not started by then, the job is dropped
    group: str | None = None  # jobs submitted together (a batch) share a group id
    after: str | None = None  # a group's callback: the group whose members' results it gets

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timeout": self.timeout, "retries": self.retries, "priority": self.priority
        }
        if self.webhook:
            out["webhook"] = self.webhook
        if self.expires is not None:
            out["expires"] = self.expires
        if self.group:
            out["group"] = self.group
        if self.after:
            out["after"] = self.after
        return out


@dataclass(frozen=True)
class JobMessage:
    """A job as submitted: what to run, with which parameters and input files."""

    job: str
    params: Mapping[str, Any]
    route: str = "default"
    files: Mapping[str, FileData] = field(default_factory=dict)
    options: JobOptions = field(default_factory=JobOptions)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 1
    created_at: float = field(default_factory=time.time)
    history: tuple[Mapping[str, Any], ...] = ()

    @property
    def routing_key(self) -> str:
        return f"{self.route}.{self.job}"

    def with_files(self, files: Mapping[str, FileData]) -> JobMessage:
        """The same job with other input files (a callback's, filled in by the worker)."""
        return replace(self, files=dict(files))

    def next_attempt(self) -> JobMessage:
        return replace(self, attempt=self.attempt + 1)

    def to_envelope(self, reply_to: str | None = None) -> Envelope:
        """Encode as protocol v1."""
        body = {
            "protocol": PROTOCOL,
            "id": self.id,
            "job": self.job,
            "route": self.route,
            "params": dict(self.params),
            "files": {k: f.to_json() for k, f in sorted(self.files.items())},
            "options": self.options.to_json(),
            "created_at": self.created_at,
        }
        return Envelope(
            body=_dump(body),
            message_id=self.id,
            type=self.job,
            routing_key=self.routing_key,
            headers={
                H_PROTOCOL: PROTOCOL,
                H_ATTEMPT: self.attempt,
                **({H_HISTORY: bounded.history(self.history, MAX_HISTORY)} if self.history else {}),
            },
            priority=self.options.priority,
            reply_to=reply_to,
            correlation_id=self.id if reply_to else None,
            timestamp=int(self.created_at),
        )

    @classmethod
    def from_envelope(cls, env: Envelope) -> JobMessage:
        """Decode and validate; any problem raises :class:`MessageError` with the reason."""
        obj = _load(env, "job")
        protocol = obj.get("protocol")
        if protocol != PROTOCOL or type(protocol) is not int:
            raise MessageError(f"unsupported protocol version {repr(protocol)[:20]}")
        _check_headers(env.headers)
        job = fields.name(obj.get("job"), "job")
        route = fields.name(obj.get("route"), "route")
        if "." in route or "*" in route or "#" in route:
            raise MessageError(f"route {route!r} must be one word")
        params = obj.get("params")
        if not isinstance(params, dict):
            raise MessageError("params: expected an object")
        if len(params) > MAX_PARAMS:
            raise MessageError(f"params: more than {MAX_PARAMS} parameters")
        files_obj = obj.get("files", {})
        if not isinstance(files_obj, dict):
            raise MessageError("files: expected an object")
        if len(files_obj) > MAX_FILES:
            raise MessageError(f"files: more than {MAX_FILES} input files")
        files = {k: FileData.from_json(v, f"files.{k}") for k, v in files_obj.items()}
        opts = obj.get("options", {})
        if not isinstance(opts, dict):
            raise MessageError("options: expected an object")
        options = JobOptions(
            timeout=fields.number(
                opts.get("timeout"), "options.timeout", positive=True, high=fields.MAX_TIMEOUT
            ),
            retries=fields.integer(opts.get("retries"), "options.retries", 0, 1000),
            priority=fields.integer(opts.get("priority", 0), "options.priority", 0, MAX_PRIORITY) or 0,
            webhook=check_url(opts.get("webhook"), "options.webhook"),
            expires=fields.number(
                opts.get("expires"), "options.expires", positive=True, high=fields.MAX_EPOCH
            ),
            group=fields.group(opts.get("group")),
            after=fields.group(opts.get("after"), "options.after"),
        )
        attempt = fields.integer(env.headers.get(H_ATTEMPT, 1), "attempt header", 1, 100000) or 1
        msg_id = fields.check_id(obj.get("id"))
        created = fields.number(obj.get("created_at"), "created_at", high=fields.MAX_EPOCH) or 0.0
        if created < 0:
            raise MessageError("created_at: must not be before 1970")
        history = fields.history(env.headers.get(H_HISTORY))
        return cls(
            job=job,
            params=params,
            route=route,
            files=files,
            options=options,
            id=msg_id,
            attempt=attempt,
            created_at=created,
            history=history,
        )


def retry_envelope(env: Envelope, attempt: int, history: tuple[Mapping[str, Any], ...]) -> Envelope:
    """The next attempt of a job: the delivered envelope, body and signature untouched.

    Only the attempt number and history change (both outside the signature), and the broker's
    redelivery count starts over.
    """
    headers = {k: v for k, v in env.headers.items() if k != H_DELIVERIES}
    headers[H_ATTEMPT] = attempt
    if history:
        headers[H_HISTORY] = bounded.history(history, MAX_HISTORY)  # a byte budget, encoded
    return replace(env, headers=headers)


@dataclass(frozen=True)
class JobResult:
    """What a worker reports when a job is finished, successfully or for good."""

    id: str
    job: str
    status: JobStatus
    attempts: int
    value: Any = None
    outputs: tuple[FileData, ...] = ()
    error: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    worker: str = ""
    history: tuple[Mapping[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "id": self.id,
            "job": self.job,
            "status": self.status.value,
            "attempts": self.attempts,
            "value": self.value,
            "outputs": [f.to_json() for f in self.outputs],
            "error": self.error,
            "traceback": self.traceback,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration": round(self.duration, 6),
            "worker": self.worker,
            "history": list(self.history),
        }

    def to_envelope(self, address: str) -> Envelope:
        return Envelope(
            body=_dump(self.to_json()),
            message_id=uuid.uuid4().hex,
            type="result",
            routing_key=address,
            headers={H_PROTOCOL: PROTOCOL},
            correlation_id=self.id,
            timestamp=int(time.time()),
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobResult:
        try:
            return cls(
                id=obj["id"],
                job=obj["job"],
                status=JobStatus(obj["status"]),
                attempts=int(obj["attempts"]),
                value=obj.get("value"),
                outputs=tuple(
                    FileData.from_json(o, f"outputs[{i}]")
                    for i, o in enumerate(obj.get("outputs", []))
                ),
                error=obj.get("error"),
                traceback=obj.get("traceback"),
                exit_code=obj.get("exit_code"),
                stdout=obj.get("stdout", ""),
                stderr=obj.get("stderr", ""),
                duration=float(obj.get("duration", 0.0)),
                worker=obj.get("worker", ""),
                history=tuple(obj.get("history") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"malformed result: {exc}") from exc

    @classmethod
    def from_envelope(cls, env: Envelope) -> JobResult:
        return cls.from_json(_load(env, "result"))


PROGRESS_SUFFIX = ":progress"


def progress_envelope(job_id: str, address: str, record: Mapping[str, Any]) -> Envelope:
    """A progress update for a waiting client; its correlation id is ``<job id>:progress``."""
    return Envelope(
        body=_dump({"protocol": PROTOCOL, "id": job_id, **record}),
        message_id=uuid.uuid4().hex,
        type="progress",
        routing_key=address,
        headers={H_PROTOCOL: PROTOCOL},
        correlation_id=job_id + PROGRESS_SUFFIX,
        timestamp=int(time.time()),
    )


def _check_headers(headers: Mapping[str, Any]) -> None:
    """Every header is bounded, whatever its name: the broker hands over any AMQP table."""
    if not isinstance(headers, Mapping):
        raise MessageError("headers: expected a table")
    for key, value in headers.items():
        if not isinstance(key, str) or len(key) > 255:
            raise MessageError(f"header name {str(key)[:100]!r} is not a short string")
        if isinstance(value, (str, bytes)) and len(value) > MAX_HEADER:
            raise MessageError(f"header {key[:100]!r} is longer than {MAX_HEADER}")


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _load(env: Envelope, what: str) -> dict[str, Any]:
    if env.content_type not in ("application/json", "", None):
        raise MessageError(f"content type {env.content_type!r} is not application/json")
    if len(env.body) > MAX_BODY:
        raise MessageError(f"{what} message is larger than {MAX_BODY} bytes")
    if not isinstance(env.body, (bytes, bytearray)):
        raise MessageError(f"{what} message body is not bytes")
    if what == "job":
        obj = safejson.loads(env.body, "job message")
    else:  # what a worker reports back: any JSON value a job returned, within looser bounds
        obj = safejson.loads(env.body, f"{what} message", max_depth=200, max_nodes=10**7,
                             allow_nan=True)
    if not isinstance(obj, dict):
        raise MessageError(f"{what} message is not a JSON object")
    return obj

"""What a failure e-mail reports, gathered from the hook arguments, secrets already redacted.

A :class:`Failure` is plain data: it is built in the job's slot thread (cheap, no I/O) and
rendered into an e-mail by :mod:`runner_notify.mail`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from runner_notify.config import HOST, EmailSettings, JobRule
from runner_notify.redact import Redactor, declared_secrets

MAX_TEXT = 64 * 1024
_UUID = re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.I)
_MIXED = re.compile(r"\b(?=[A-Za-z_-]*\d)(?=[\d_-]*[A-Za-z])[A-Za-z0-9_-]{6,}\b")
_HEX = re.compile(r"\b0x[0-9a-f]+\b", re.I)
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Failure:
    """One failed attempt (``kind="failed"``) or one dead-lettered job (``kind="dead"``)."""

    kind: str
    job: str
    job_id: str
    error: str
    reason: str = ""
    route: str = ""
    routing_key: str = ""
    params: Mapping[str, Any] | None = None
    attempts: int = 0
    exit_code: int | None = None
    exception: str = ""
    traceback: str = ""
    stderr: str = ""
    history: tuple[Mapping[str, Any], ...] = ()
    worker: str = ""
    host: str = HOST
    submitted_at: float | None = None
    to: tuple[str, ...] = ()
    dashboard: str | None = None

    @property
    def signature(self) -> str:
        """Identical failures share it: kind, job type, and the error with ids and numbers blanked."""
        return f"{self.kind}|{self.job}|{normalise(self.error)}"

    @property
    def short_error(self) -> str:
        line = (self.error.strip().splitlines() or ["unknown error"])[0]
        return line if len(line) <= 90 else line[:89] + "…"


def normalise(error: str) -> str:
    """``"ValueError: row 17 of 3f2a9c1e8b7d..."`` -> ``"ValueError: row # of <id>"``."""
    text = _UUID.sub("<id>", error)
    text = _HEX.sub("<hex>", text)
    text = _MIXED.sub("<id>", text)
    text = _DIGITS.sub("#", text)
    return _SPACE.sub(" ", text).strip()[:500]


def signature_key(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()[:20]


def describe(
    kind: str,
    cfg: EmailSettings,
    rule: JobRule,
    *,
    job: Any = None,
    message: Any = None,
    result: Any = None,
    reason: str = "",
    worker: str = "",
) -> Failure:
    """Gather a failure from the hook arguments; ``message``/``result`` may be ``None``."""
    redactor = Redactor(cfg.secret_patterns, (*declared_secrets(job), *rule.secret_params))
    params = redactor.params(dict(message.params)) if message is not None else None
    text = redactor.text
    error = (result.error if result is not None and result.error else reason) or "unknown error"
    job_id = message.id if message is not None else (result.id if result is not None else "")
    name = message.job if message is not None else (result.job if result is not None else "(undecodable)")
    tb = text(result.traceback if result is not None else "")[-MAX_TEXT:]
    stderr = result.stderr if result is not None else ""
    history = tuple(
        {**h, "error": text(str(h["error"])) if h.get("error") else h.get("error")}
        for h in (result.history if result is not None else ())
    )
    return Failure(
        kind=kind,
        job=name,
        job_id=job_id,
        error=text(error),
        reason=reason,
        route=message.route if message is not None else "",
        routing_key=message.routing_key if message is not None else "",
        params=params,
        attempts=result.attempts if result is not None else 0,  # 0: it could not be run
        exit_code=result.exit_code if result is not None else None,
        exception=_last_line(tb),
        traceback=tb,
        stderr=text(tail(stderr, cfg.stderr_lines)),
        history=history,
        worker=(result.worker if result is not None and result.worker else worker),
        submitted_at=message.created_at if message is not None else None,
        to=rule.to or cfg.to,
        dashboard=dashboard_link(cfg.dashboard_url, job_id, name),
    )


def tail(text: str, lines: int) -> str:
    if lines <= 0 or not text:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])[-MAX_TEXT:]


def dashboard_link(template: str | None, job_id: str, job: str) -> str | None:
    """``{id}`` and ``{job}`` in the template are replaced; without ``{id}`` the id is appended."""
    if not template or not job_id:
        return None
    if "{id}" in template:
        return template.replace("{id}", quote(job_id, safe="")).replace("{job}", quote(job, safe=""))
    return f"{template.rstrip('/')}/{quote(job_id, safe='')}"


def _last_line(traceback: str) -> str:
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""

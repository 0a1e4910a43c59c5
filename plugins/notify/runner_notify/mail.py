"""Rendering: failures, digests, the cap notice and the test message as e-mails.

Each e-mail is one :class:`Doc` (a lead sentence, a table of fields, titled blocks) rendered twice,
as the plain-text part and as the HTML alternative, so the two always say the same thing.
Everything that came from a job is escaped in the HTML and stripped of line breaks in headers.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from runner_notify.config import HOST, EmailSettings
from runner_notify.report import Failure

MAX_PARAM = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class Doc:
    lead: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (title, preformatted text)
    link: tuple[str, str] | None = None  # (label, url)


def failure_email(f: Failure, cfg: EmailSettings, note: str = "") -> EmailMessage:
    """The e-mail for one failed attempt or one dead-lettered job."""
    if f.kind == "dead" and f.attempts:
        lead = f"is dead after {f.attempts} attempt(s): {f.reason or 'failed'}"
    elif f.kind == "dead":
        lead = f"could not be run ({f.reason})"
    else:
        lead = f"failed on attempt {f.attempts}; runner will try it again"
    subject = f"{f.job} dead" if f.kind == "dead" else f"{f.job} attempt {f.attempts} failed"
    doc = Doc(lead=f"Job {f.job} {f.job_id or '(no id)'} {lead}.")
    doc.fields = [
        ("Error", f.error),
        ("Job type", f.job),
        ("Job id", f.job_id or "unknown"),
        ("Route", f"{f.route} (routing key {f.routing_key})" if f.route else "unknown"),
        ("Worker", f"{f.worker or '?'} on {f.host}"),
        ("Submitted", when(f.submitted_at) if f.submitted_at else "unknown"),
        ("Attempts", str(f.attempts)),
        ("Exit code", "none" if f.exit_code is None else str(f.exit_code)),
    ]
    if f.exception:
        doc.fields.append(("Exception", f.exception))
    if note:
        doc.fields.append(("Note", note))
    if f.params is not None:
        doc.blocks.append(("Parameters (secrets redacted)", params_text(f.params)))
    if f.history:
        doc.blocks.append(("Attempts", history_text(f.history)))
    doc.blocks.append((
        "Traceback (from the job's own process)",
        f.traceback.rstrip() or "none: the job is a command, or failed before running (see stderr)",
    ))
    doc.blocks.append(("Stderr (last lines)", f.stderr.rstrip() or "(empty)"))
    if f.kind == "dead" and f.job_id:
        doc.blocks.append(("To retry it", f"runner dead show {f.job_id}\nrunner dead retry {f.job_id}"))
    if f.dashboard:
        doc.link = ("Open in the dashboard", f.dashboard)
    headers = {"X-Runner-Job": f.job, "X-Runner-Job-Id": f.job_id, "X-Runner-Notification": f.kind}
    return compose(cfg, f.to, f"{subject}: {f.short_error} [{f.host}]", doc, headers)


def digest_email(window: Mapping[str, Any], cfg: EmailSettings, note: str = "") -> EmailMessage:
    """The summary of failures grouped with a first e-mail, sent when their window closes."""
    ids: list[str] = list(window["ids"])
    count = int(window["count"])
    more = f"\n… and {count - len(ids)} more" if count > len(ids) else ""
    doc = Doc(
        lead=(
            f"{count} failure(s) of job {window['job']} with the same error between "
            f"{when(window['opened'])} and {when(window['closes'])} were not e-mailed one by one."
        ),
        fields=[
            ("Job type", window["job"]),
            ("Error", window["error"]),
            ("Error signature", window["signature"].split("|", 2)[-1]),
            ("Failures", str(count)),
            ("First one e-mailed", window.get("first_id") or "none (the hourly cap was reached)"),
        ],
        blocks=[
            ("Job ids", "\n".join(ids) + more),
            ("To see and retry them", "runner dead list\nrunner dead retry ID"),
        ],
    )
    if note:
        doc.fields.append(("Note", note))
    subject = f"{window['job']} digest: {count} identical failure(s) [{HOST}]"
    headers = {"X-Runner-Job": window["job"], "X-Runner-Notification": "digest",
               "X-Runner-Digest-Count": str(count)}
    return compose(cfg, tuple(window["to"]), subject, doc, headers)


def cap_email(cfg: EmailSettings, until: float) -> EmailMessage:
    doc = Doc(
        lead=(
            f"More than {cfg.max_per_hour} failure e-mails were due within an hour, so runner on "
            f"{HOST} sends no more until {when(until)}. Failures are still dead-lettered and "
            "counted; the next e-mail says how many were held back."
        ),
        fields=[("Cap", f"max_per_hour = {cfg.max_per_hour}"), ("Paused until", when(until))],
        blocks=[("To see the failed jobs", "runner dead list")],
    )
    subject = f"e-mail cap reached: failure e-mails paused [{HOST}]"
    return compose(cfg, cfg.to, subject, doc, {"X-Runner-Notification": "cap"})


def test_email(cfg: EmailSettings, to: Sequence[str]) -> EmailMessage:
    doc = Doc(
        lead=f"This is a test e-mail from runner on {HOST}: failure e-mails can reach you.",
        fields=[
            ("SMTP server", cfg.endpoint()),
            ("From", cfg.sender),
            ("To", ", ".join(to)),
            ("Sent on", cfg.on),
            ("Grouping window", f"{cfg.window:g}s"),
            ("Hourly cap", str(cfg.max_per_hour)),
            ("Spool", str(cfg.spool_dir)),
        ],
    )
    return compose(cfg, tuple(to), f"test e-mail [{HOST}]", doc, {"X-Runner-Notification": "test"})


def compose(
    cfg: EmailSettings, to: Sequence[str], subject: str, doc: Doc, headers: Mapping[str, str]
) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = header(f"{cfg.subject_prefix} {subject}".strip())
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("runner", domain=re.sub(r"[^A-Za-z0-9.-]", "-", HOST) or "localhost")
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    for name, value in headers.items():
        msg[name] = header(value)
    msg.set_content(render_text(doc))
    msg.add_alternative(render_html(doc), subtype="html")
    return msg


def render_text(doc: Doc) -> str:
    width = max((len(k) for k, _ in doc.fields), default=0) + 1
    lines = [doc.lead, ""]
    lines += [f"{k + ':':<{width}} {v}" for k, v in doc.fields]
    if doc.link:
        lines.append(f"{doc.link[0]}: {doc.link[1]}")
    for title, body in doc.blocks:
        lines += ["", f"{title}:", *(f"    {line}" for line in body.splitlines())]
    return "\n".join(lines) + "\n"


def render_html(doc: Doc) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><th align="left" valign="top">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in doc.fields
    )
    parts = [f"<p>{e(doc.lead)}</p>", f"<table cellpadding=\"3\">{rows}</table>"]
    if doc.link:
        parts.append(f'<p><a href="{e(doc.link[1], quote=True)}">{e(doc.link[0])}</a></p>')
    for title, body in doc.blocks:
        parts.append(f'<h3>{e(title)}</h3><pre style="white-space: pre-wrap">{e(body)}</pre>')
    return "<!DOCTYPE html><html><body>" + "\n".join(parts) + "</body></html>\n"


def params_text(params: Mapping[str, Any]) -> str:
    if not params:
        return "(none)"
    out = []
    for name, value in params.items():
        shown = json.dumps(value, ensure_ascii=False, default=str)
        out.append(f"{name} = {shown if len(shown) <= MAX_PARAM else shown[:MAX_PARAM] + '…'}")
    return "\n".join(out)


def history_text(history: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for h in history:
        finished = when(h["finished_at"]) if h.get("finished_at") else "?"
        took = f"{h['duration']:.1f}s" if isinstance(h.get("duration"), (int, float)) else "?"
        code = f" exit {h['exit_code']}" if h.get("exit_code") is not None else ""
        out.append(
            f"#{h.get('attempt', '?')}  {finished}  on {h.get('worker') or '?'}  {took}{code}  "
            f"{h.get('error') or 'ok'}"
        )
    return "\n".join(out)


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def header(value: str) -> str:
    """A header value without line breaks or control characters (no header injection)."""
    return _CONTROL.sub(" ", value).strip()[:900]

"""Signed webhooks for runner: a first-party plugin on the public hooks (docs/webhooks.md).

When a job succeeds, or fails for good, the worker POSTs its result as JSON to the URL the
submitter gave (``--webhook URL``, carried in the message options) and to the URL its own
config names for the job type (``[jobs.NAME] webhook = URL``), signed as Standard Webhooks
specifies (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; the older
``Runner-Signature`` too, for one release).  The job hook only writes a spool file; the outbox's own
threads deliver it, retrying with backoff while the receiver is down, bounded by ``max_age`` and
``max_entries``.

Without a ``[jobs.webhook]`` table this plugin starts nothing; a job that asks for a webhook
is then logged as not delivered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from runner import ConfigError, hookimpl
from runner_webhook.config import (
    WebhookSettings,
    host_allowed,
    job_webhooks,
    webhook_settings,
)
from runner_webhook.outbox import OUTBOXES, Outbox
from runner_webhook.signing import HEADER, receiver_secret, signature, verify, verify_request

__all__ = ["HEADER", "outbox_for", "payload", "receiver_secret", "signature", "verify", "verify_request"]
log = logging.getLogger(__name__)
SUCCEEDED, FAILED = "job.succeeded", "job.failed"


@dataclass(frozen=True)
class _Binding:
    cfg: WebhookSettings
    per_job: dict[str, str]
    outbox: Outbox


_bindings: WeakKeyDictionary[Any, _Binding] = WeakKeyDictionary()


def outbox_for(worker: Any) -> Outbox | None:
    """The outbox a worker hands its webhooks to (``None`` when webhooks are off)."""
    binding = _bindings.get(worker)
    return binding.outbox if binding else None


def payload(event: str, message: Any, result: Any, reason: str | None) -> bytes:
    """The POST body: the result as the protocol has it, output files by name, size and hash."""
    if result is not None:
        record = result.to_json()
    else:  # the message could not be run at all
        record = {"protocol": 1, "id": message.id, "job": message.job, "status": "failed",
                  "attempts": 0, "value": None, "outputs": [], "error": reason}
    record["outputs"] = [{k: o[k] for k in ("name", "size", "sha256")} for o in record["outputs"]]
    record["event"] = event
    record["dead_reason"] = reason
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


@hookimpl
def worker_started(worker: Any) -> None:
    try:
        cfg = webhook_settings(worker.settings.jobs)
        per_job = job_webhooks(worker.settings.jobs)
    except ConfigError as exc:
        log.error("webhook: %s; webhooks are off for worker %s", exc, worker.name)
        return
    if cfg is None:
        if per_job:
            log.error("webhook: [jobs.%s] names a webhook but there is no [jobs.webhook] "
                      "secret_file to sign with; webhooks are off", min(per_job))
        return
    try:
        outbox = OUTBOXES.acquire(cfg)
    except OSError as exc:
        log.error("webhook: cannot use the spool directory %s (%s); webhooks are off for worker %s",
                  cfg.spool_dir, exc, worker.name)
        return
    _bindings[worker] = _Binding(cfg, per_job, outbox)
    log.info("webhook: signed deliveries spooled in %s", cfg.spool_dir)


@hookimpl
def worker_stopping(worker: Any) -> None:
    binding = _bindings.get(worker)
    if binding is not None:  # jobs finishing in the grace period still post
        OUTBOXES.release(binding.outbox, linger=worker.settings.grace)


@hookimpl
def job_succeeded(job: Any, message: Any, result: Any, worker: Any) -> None:
    _deliver(worker, message, SUCCEEDED, result, None)


@hookimpl
def job_dead(message: Any, reason: str, result: Any, worker: Any) -> None:
    if message is not None:  # an undecodable message has no webhook to call
        _deliver(worker, message, FAILED, result, reason)


def _deliver(worker: Any, message: Any, event: str, result: Any, reason: str | None) -> None:
    binding = _bindings.get(worker)
    urls = [message.options.webhook] if message.options.webhook else []
    if binding is None:
        if urls:
            log.warning("job %s asked for a webhook to %s, but this worker has no "
                        "[jobs.webhook] secret_file; not sent", message.id, urls[0])
        return
    if urls and not host_allowed(urls[0], binding.cfg.allowed_hosts):
        log.warning("job %s: webhook to %s not sent: its host is not in [jobs.webhook] "
                    "allowed_hosts", message.id, urls[0])
        urls = []
    configured = binding.per_job.get(message.job)
    if configured and configured not in urls:
        urls.append(configured)
    if not urls:
        return
    body = payload(event, message, result, reason)
    for url in urls:
        binding.outbox.put(url, event, message.id, body)

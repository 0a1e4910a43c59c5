"""``[jobs.webhook]``: the signing secret, the spool and the delivery schedule.

Example::

    [jobs.webhook]
    secret_file = "/etc/runner/webhook.secret"   # required: webhooks are always signed
    allowed_hosts = ["hooks.example.com"]        # hosts a --webhook URL may name (default: any)
    spool_dir = "/var/lib/runner/webhook-spool"
    timeout = "10s"          # one POST
    wait = "2s"              # first wait after a failed POST, doubling, with jitter
    max_wait = "10m"         # longest wait between two POSTs of one delivery
    max_age = "3d"           # a delivery still not accepted after this long is dropped
    max_entries = 10000      # spool bound; the oldest delivery is dropped first
    concurrency = 4          # POSTs in flight at once

    [jobs.backup]
    webhook = "https://ops.example.com/runner"   # every backup result, whoever submitted it
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from runner import ConfigError
from runner.config import parse_duration

KEYS = frozenset(
    {"secret_file", "allowed_hosts", "spool_dir", "timeout", "wait", "max_wait", "max_age",
     "max_entries", "concurrency"}
)


@dataclass(frozen=True)
class WebhookSettings:
    secret: bytes
    allowed_hosts: tuple[str, ...] | None = None
    spool_dir: Path = Path(platformdirs.user_data_dir("runner")) / "webhook-spool"
    timeout: float = 10.0
    wait: float = 2.0
    max_wait: float = 600.0
    max_age: float = 3 * 86400.0
    max_entries: int = 10000
    concurrency: int = 4

    def __repr__(self) -> str:  # never print the secret
        return f"WebhookSettings(spool_dir={str(self.spool_dir)!r}, allowed_hosts={self.allowed_hosts!r})"


def webhook_settings(jobs: Mapping[str, Any]) -> WebhookSettings | None:
    """The checked ``[jobs.webhook]`` table; ``None`` when there is none (webhooks off).

    Raises:
        ConfigError: ``[jobs.webhook] FIELD: what is wrong``.
    """
    table = jobs.get("webhook")
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError("[jobs.webhook]: expected a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise _error(unknown[0], f"unknown setting (known: {', '.join(sorted(KEYS))})")
    path = table.get("secret_file")
    if not isinstance(path, str) or not path:
        raise _error("secret_file", "required: the file holding the secret webhooks are signed with")
    try:
        secret = Path(path).expanduser().read_bytes().strip()
    except OSError as exc:
        raise _error("secret_file", f"cannot read {path}: {exc.strerror}") from None
    if len(secret) < 16:
        raise _error("secret_file", f"{path} holds fewer than 16 bytes; use a long random secret")
    values: dict[str, Any] = {"secret": secret}
    for key in ("timeout", "wait", "max_wait", "max_age"):
        if key in table:
            try:
                values[key] = parse_duration(table[key], key)
            except ConfigError:
                raise _error(key, f"{table[key]!r} is not a duration like 10s, 10m or 3d") from None
    for key in ("max_entries", "concurrency"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _error(key, f"{value!r} is not a positive integer")
            values[key] = value
    if "spool_dir" in table:
        values["spool_dir"] = Path(str(table["spool_dir"])).expanduser()
    if "allowed_hosts" in table:
        hosts = table["allowed_hosts"]
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise _error("allowed_hosts", "expected a list of host names")
        values["allowed_hosts"] = tuple(h.lower() for h in hosts)
    return WebhookSettings(**values)


def job_webhooks(jobs: Mapping[str, Any]) -> dict[str, str]:
    """``[jobs.NAME] webhook = URL`` for every job type that has one.

    Raises:
        ConfigError: naming the job whose URL is not an http(s) URL.
    """
    out = {}
    for name, table in jobs.items():
        if isinstance(table, Mapping) and name != "webhook" and "webhook" in table:
            url = table["webhook"]
            if not is_url(url):
                raise ConfigError(f"[jobs.{name}] webhook: {url!r} is not an http(s) URL")
            out[str(name)] = url
    return out


def is_url(value: Any) -> bool:
    if not isinstance(value, str) or re.search(r"[\x00-\x20\x7f]", value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def host_allowed(url: str, hosts: tuple[str, ...] | None) -> bool:
    """``None`` allows every host; ``*.example.com`` matches its subdomains."""
    if hosts is None:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(
        host.endswith(h[1:]) and host != h[2:] if h.startswith("*.") else host == h for h in hosts
    )


def _error(field: str, message: str) -> ConfigError:
    return ConfigError(f"[jobs.webhook] {field}: {message}")

"""The worker's ``[jobs.http]`` table, checked once and reduced to a JSON-friendly dict.

That dict travels to the job as the hidden ``worker_config`` parameter (see
:mod:`runner_http`): it holds host names and credential *file paths*, never a secret value.
This module imports only the standard library and :mod:`runner`, so the job's child
interpreter can use :func:`host_allowed` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runner import ConfigError, PluginError
from runner.config import parse_duration, parse_size

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9_.:\[\]-]+$")
KEYS = frozenset(
    {"allowed_hosts", "credentials", "timeout", "retries", "backoff", "route", "request_timeout",
     "tries", "wait", "max_wait", "max_retry_after", "max_body"}
)
# Keys of [jobs.http] that the core (sandbox) or other plugins (webhook, notify) read.
SHARED_KEYS = frozenset({"sandbox", "webhook", "notify"})
CREDENTIAL_KEYS = frozenset({"header", "value_file", "prefix", "hosts"})
DEFAULTS: dict[str, Any] = {
    "timeout": 300.0,  # the whole job, all in-place tries included
    "retries": 2,  # job attempts after the first (each one through the broker)
    "backoff": 5.0,  # broker wait before the second attempt, doubling
    "route": "default",
    "request_timeout": 30.0,  # one HTTP request
    "tries": 3,  # tries in place within one attempt
    "wait": 0.5,  # first in-place wait, doubling, with jitter
    "max_wait": 10.0,  # longest in-place wait; a longer Retry-After goes back to the broker
    "max_retry_after": 3600.0,  # a Retry-After above this is cut down to it
    "max_body": 64 * 1024,  # response bytes kept in the result
}


def read_config(table: Any) -> dict[str, Any]:
    """Check ``[jobs.http]`` and return the config dict (defaults filled in).

    Raises:
        PluginError: ``[jobs.http] FIELD: what is wrong``.
    """
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise PluginError("[jobs.http]: expected a table")
    unknown = sorted(set(table) - KEYS - SHARED_KEYS)
    if unknown:
        raise _error(unknown[0], f"unknown setting (known: {', '.join(sorted(KEYS))})")
    config = dict(DEFAULTS)
    for key in ("timeout", "backoff", "request_timeout", "wait", "max_wait", "max_retry_after"):
        if key in table:
            try:
                config[key] = parse_duration(table[key], key)
            except ConfigError:
                raise _error(key, f"{table[key]!r} is not a duration like 90s, 10m or 2h") from None
    for key, low in (("retries", 0), ("tries", 1)):
        value = table.get(key, config[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _error(key, f"{value!r} is not an integer >= {low}")
        config[key] = value
    if "max_body" in table:
        try:
            config["max_body"] = parse_size(table["max_body"], "max_body")
        except ConfigError:
            raise _error("max_body", f"{table['max_body']!r} is not a size like 64k or 1MiB") from None
    route = table.get("route", config["route"])
    if not isinstance(route, str) or not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", route):
        raise _error("route", f"{route!r} must be one lower-case word")
    config["route"] = route
    allowed = table.get("allowed_hosts")
    config["allowed_hosts"] = None if allowed is None else _hosts("allowed_hosts", allowed)
    config["credentials"] = _credentials(table.get("credentials", {}))
    return config


def _credentials(table: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise _error("credentials", "expected a table of [jobs.http.credentials.NAME] tables")
    out = {}
    for name, cred in table.items():
        where = f"credentials.{name}"
        if not CREDENTIAL_NAME.match(str(name)):
            raise _error(where, f"credential name must match {CREDENTIAL_NAME.pattern}")
        if not isinstance(cred, Mapping):
            raise _error(where, "expected a table")
        unknown = sorted(set(cred) - CREDENTIAL_KEYS)
        if unknown:
            hint = " (secrets go in a file named by value_file)" if unknown[0] == "value" else ""
            raise _error(f"{where}.{unknown[0]}", f"unknown key{hint}")
        value_file = cred.get("value_file")
        if not isinstance(value_file, str) or not value_file.startswith("/"):
            raise _error(f"{where}.value_file", "expected the absolute path of the file holding the secret")
        header = cred.get("header", "Authorization")
        if not isinstance(header, str) or not HEADER_NAME.match(header):
            raise _error(f"{where}.header", f"{header!r} is not a header name")
        prefix = cred.get("prefix", "")
        if not isinstance(prefix, str) or any(c in prefix for c in "\r\n\0"):
            raise _error(f"{where}.prefix", "expected one line of text, like \"Bearer \"")
        if "hosts" not in cred:
            raise _error(f"{where}.hosts", "required: the hosts this credential may be sent to")
        out[str(name)] = {
            "header": header, "value_file": value_file, "prefix": prefix,
            "hosts": _hosts(f"{where}.hosts", cred["hosts"]),
        }
    return out


def _hosts(where: str, hosts: Any) -> list[str]:
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise _error(where, "expected a list of host names, like [\"api.example.com\", \"*.example.org\"]")
    for host in hosts:
        if not HOST_PATTERN.match(host.lower()):
            raise _error(where, f"{host!r} is not a host name or *.domain pattern")
    return [h.lower().strip("[]") for h in hosts]


def host_allowed(host: str, patterns: list[str] | None) -> bool:
    """``None`` allows every host; ``*.example.com`` matches its subdomains, not itself."""
    if patterns is None:
        return True
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _error(field: str, message: str) -> PluginError:
    return PluginError(f"[jobs.http] {field}: {message}")

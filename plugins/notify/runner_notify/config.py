"""The ``[notify.email]`` settings and the per-job ``[jobs.NAME.notify]`` overrides.

Both are read from the :class:`runner.config.Settings` a worker was started with; nothing here
reads a configuration file itself.  Every problem is a :class:`ConfigError` naming the setting.
docs/notify.md documents each setting.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import platformdirs

from runner import ConfigError
from runner.config import Settings, parse_duration

SECURITY_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
WHEN = ("dead", "every_failure")
HOST = socket.gethostname()


@dataclass(frozen=True)
class EmailSettings:
    """``[notify.email]``, checked and with defaults filled in."""

    smtp_host: str
    to: tuple[str, ...]
    smtp_port: int = 587
    security: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    sender: str = f"runner@{HOST}"
    on: str = "dead"
    timeout: float = 30.0
    spool_dir: Path = Path(platformdirs.user_data_dir("runner")) / "notify-spool"
    window: float = 600.0
    digest: bool = True
    max_per_hour: int = 100
    retry_wait: float = 1.0
    retry_max_wait: float = 300.0
    subject_prefix: str = "[runner]"
    dashboard_url: str | None = None
    secret_patterns: tuple[str, ...] = ()
    stderr_lines: int = 50

    def password(self) -> str | None:
        """Read at each connection, so a rotated password needs no restart."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"[notify.email] password_file: cannot read {self.password_file}: {exc.strerror}") from exc

    def endpoint(self) -> str:
        auth = f", as {self.username}" if self.username else ""
        return f"{self.smtp_host}:{self.smtp_port} ({self.security}{auth})"


@dataclass(frozen=True)
class JobRule:
    """``[jobs.NAME.notify]``: who hears about one job type's failures, and when."""

    enabled: bool = True
    on: str | None = None
    to: tuple[str, ...] | None = None
    secret_params: tuple[str, ...] = ()


def email_settings(settings: Settings) -> EmailSettings | None:
    """The checked ``[notify.email]`` table, or ``None`` when e-mail is not configured."""
    table = settings.notify.get("email")
    if table is None:
        return None
    where = "[notify.email]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    raw = dict(table)
    known = {f for f in EmailSettings.__dataclass_fields__ if f != "sender"} | {"from", "enabled"}
    _no_unknown(raw, known, where)
    if not _bool(raw.pop("enabled", True), f"{where} enabled"):
        return None
    values: dict[str, Any] = {}
    host = raw.pop("smtp_host", None)
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"{where} smtp_host is required (the SMTP server's name)")
    values["smtp_host"] = host.strip()
    security = raw.pop("security", "starttls")
    if security not in SECURITY_PORTS:
        raise ConfigError(f"{where} security: {security!r} is not one of starttls, ssl, none")
    values["security"] = security
    values["smtp_port"] = _int(raw.pop("smtp_port", SECURITY_PORTS[security]), f"{where} smtp_port", 1, 65535)
    if "to" not in raw:
        raise ConfigError(f"{where} to is required (a list of addresses)")
    values["to"] = addresses(raw.pop("to"), f"{where} to")
    if "from" in raw:
        values["sender"] = addresses(raw.pop("from"), f"{where} from", single=True)[0]
    values["on"] = _when(raw.pop("on", "dead"), f"{where} on")
    username = raw.pop("username", None)
    password_file = raw.pop("password_file", None)
    if (username is None) != (password_file is None):
        raise ConfigError(f"{where} username and password_file go together: set both or neither")
    if username is not None:
        values["username"] = _text(username, f"{where} username")
        values["password_file"] = _readable(password_file, f"{where} password_file")
    if "ca_file" in raw:
        values["ca_file"] = _readable(raw.pop("ca_file"), f"{where} ca_file")
    if "spool_dir" in raw:
        values["spool_dir"] = Path(_text(raw.pop("spool_dir"), f"{where} spool_dir")).expanduser()
    for key in ("timeout", "window", "retry_wait", "retry_max_wait"):
        if key in raw:
            values[key] = parse_duration(raw.pop(key), f"{where} {key}")
            if values[key] <= 0:
                raise ConfigError(f"{where} {key} must be more than zero")
    if "digest" in raw:
        values["digest"] = _bool(raw.pop("digest"), f"{where} digest")
    if "max_per_hour" in raw:
        values["max_per_hour"] = _int(raw.pop("max_per_hour"), f"{where} max_per_hour", 1, 10**6)
    if "stderr_lines" in raw:
        values["stderr_lines"] = _int(raw.pop("stderr_lines"), f"{where} stderr_lines", 0, 10**4)
    if "subject_prefix" in raw:
        values["subject_prefix"] = _text(raw.pop("subject_prefix"), f"{where} subject_prefix", empty=True)
    if "dashboard_url" in raw:
        url = _text(raw.pop("dashboard_url"), f"{where} dashboard_url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} dashboard_url: {url!r} is not an http(s) URL")
        values["dashboard_url"] = url
    if "secret_patterns" in raw:
        values["secret_patterns"] = _patterns(raw.pop("secret_patterns"), f"{where} secret_patterns")
    return EmailSettings(**values)


def job_rules(settings: Settings) -> dict[str, JobRule]:
    """Every ``[jobs.NAME.notify]`` table, checked."""
    rules: dict[str, JobRule] = {}
    for name, table in settings.jobs.items():
        if not isinstance(table, Mapping) or "notify" not in table:
            continue
        where = f"[jobs.{name}.notify]"
        raw = table["notify"]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        _no_unknown(raw, {"enabled", "on", "to", "secret_params"}, where)
        rules[str(name)] = JobRule(
            enabled=_bool(raw.get("enabled", True), f"{where} enabled"),
            on=_when(raw["on"], f"{where} on") if "on" in raw else None,
            to=addresses(raw["to"], f"{where} to") if "to" in raw else None,
            secret_params=_names(raw.get("secret_params", []), f"{where} secret_params"),
        )
    return rules


def addresses(value: Any, where: str, single: bool = False) -> tuple[str, ...]:
    """``"a@b"`` or ``["Ops <ops@b>", "c@d"]`` -> checked addresses (no header injection)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or (single and len(items) != 1):
        raise ConfigError(f"{where}: expected {'an address' if single else 'a list of addresses'}")
    for item in items:
        ok = isinstance(item, str) and not any(c in item for c in "\r\n\0")
        if not ok or not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", parseaddr(item)[1]):
            raise ConfigError(f"{where}: {item!r} is not an e-mail address")
    return tuple(items)


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _when(value: Any, where: str) -> str:
    if value not in WHEN:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(WHEN)}")
    return str(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, not {value!r}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected a whole number from {low} to {high}, not {value!r}")
    return value


def _text(value: Any, where: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()) or any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{where}: expected a one-line text, not {value!r}")
    return value


def _readable(value: Any, where: str) -> Path:
    path = Path(_text(value, where)).expanduser()
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return path


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of parameter names")
    return tuple(value)


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    for pattern in _names(value, where):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {exc}") from None
    return tuple(value)

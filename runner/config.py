"""Settings, read once at start-up and passed down.

Precedence, highest first: command-line flags > ``RUNNER_*`` environment variables >
``runner.toml`` (or ``[tool.runner]`` in ``pyproject.toml``) in the current directory, or the
file named by ``RUNNER_CONFIG`` > built-in defaults.  This is the only module that reads the
environment or configuration files.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from runner.errors import ConfigError

ENV_PREFIX = "RUNNER_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.I)


def default_broker_url() -> str:
    """The embedded broker in the user's data directory."""
    path = Path(platformdirs.user_data_dir("runner")) / "broker.sqlite3"
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class Settings:
    """Every setting runner reads. docs/configuration.md documents each one."""

    broker_url: str = field(default_factory=default_broker_url)
    queue: str = "default"
    bindings: tuple[str, ...] = ()
    concurrency: int = 2
    concurrency_min: int = 0  # with concurrency "MIN..MAX": the autoscaler's floor (0: fixed)
    scale_idle: float = 30.0
    inline_limit: int = 16 * 1024 * 1024
    shared_storage: str = ""
    grace: float = 30.0
    max_redeliveries: int = 5
    wait_timeout: float | None = None
    revoke_expiry: float = 30 * 86400.0
    handover_after: float = 1200.0  # RabbitMQ: hand a running job's delivery over (0: never)
    workdir: str = ""
    load_plugins: tuple[str, ...] | None = None
    plugins: tuple[str, ...] = ()
    trace_plugins: bool = False
    allow_unsigned: bool = False  # a worker may run unsigned jobs from a broker off this host
    routes: Mapping[str, str] = field(default_factory=dict)
    jobs: Mapping[str, Any] = field(default_factory=dict)
    notify: Mapping[str, Any] = field(default_factory=dict)
    sandbox: Mapping[str, Any] = field(default_factory=dict)
    signing: Mapping[str, Any] = field(default_factory=dict)
    schedule: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)  # [results] url, keep (results.md)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def effective_bindings(self) -> tuple[str, ...]:
        return self.bindings or (f"{self.queue}.#",)

    def base_dir(self, key: str) -> Path:
        """Where relative paths of setting ``key`` start: its config file's directory, or cwd."""
        source = self.sources.get(key, "")
        if source and source not in ("default", "flag") and not source.startswith(("env ", "file ")):
            return Path(source).parent
        return Path.cwd()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}


_SETTING_NAMES = [f.name for f in fields(Settings) if f.name != "sources"]
_TABLES = {"schedule", "routes", "jobs", "notify", "sandbox", "signing", "results"}
# Table keys that an environment variable may set too (RUNNER_RESULTS_URL: workers started by
# a supervisor or a test get their store without a config file).
_TABLE_ENV = {("results", "url"), ("results", "keep"), ("results", "lease")}


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults, config file, environment and flags (``None`` flags are ignored)."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    file_path, table = _find_file(environ, cwd)
    for key, raw in table.items():
        if key not in _SETTING_NAMES:
            raise ConfigError(f"{file_path}: unknown setting {key!r}")
        values[key] = _convert(key, raw, str(file_path))
        sources[key] = str(file_path)

    for key in _SETTING_NAMES:
        env_name = ENV_PREFIX + key.upper()
        if key in _TABLES:
            continue
        if env_name in environ:
            values[key] = _convert(key, environ[env_name], env_name)
            sources[key] = f"env {env_name}"
        elif env_name + "_FILE" in environ:
            # A secret kept out of the environment: systemd's LoadCredential= (%d/NAME), a
            # container secret, or any file only the service user may read.
            values[key] = _convert(key, _read_secret(environ[env_name + "_FILE"], env_name + "_FILE"),
                                   env_name + "_FILE")
            sources[key] = f"file {env_name}_FILE"

    for table_name, key in sorted(_TABLE_ENV):
        env_name = f"{ENV_PREFIX}{table_name.upper()}_{key.upper()}"
        if env_name in environ:
            values[table_name] = {**values.get(table_name, {}), key: environ[env_name]}
            sources[table_name] = f"env {env_name}"

    for key, raw in (flags or {}).items():
        if raw is None or raw == ():
            continue
        if key not in _SETTING_NAMES:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _convert(key, raw, f"--{key.replace('_', '-')}")
        sources[key] = "flag"

    if isinstance(values.get("concurrency"), tuple):  # "2..8": autoscale between the two
        values["concurrency_min"], values["concurrency"] = values["concurrency"]
        sources["concurrency_min"] = sources["concurrency"]
    for key in _SETTING_NAMES:
        sources.setdefault(key, "default")
    settings = Settings(**values)
    _check(settings)
    return replace(settings, sources=sources)


def _read_secret(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc


def _find_file(environ: Mapping[str, str], cwd: Path) -> tuple[Path | None, dict[str, Any]]:
    explicit = environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"RUNNER_CONFIG names {path}, which is not a file")
        if path.name == "pyproject.toml":
            return path, _read_toml(path).get("tool", {}).get("runner", {})
        return path, _read_toml(path)
    own = cwd / "runner.toml"
    if own.is_file():
        return own, _read_toml(own)
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {}).get("runner")
        if isinstance(tool, dict):
            return pyproject, tool
    return None, {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info masked, for logs and ``runner config``.

    Every URL in a comma-separated list is masked; text that is not a URL is returned as it is.
    """
    return ",".join(_redact_one(part) for part in str(url).split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redact(value: Any, key: str = "") -> Any:
    """A settings value fit to print: URL passwords and values of secret-named keys masked."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and not key.endswith(("_file", "_patterns", "_params")):
            return "***"
        return redact_url(value) if "://" in value else value
    return value


def parse_duration(value: Any, where: str = "duration") -> float:
    """``90``, ``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{where}: {value!r} is not a duration like 90s, 10m or 2h")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


def parse_size(value: Any, where: str = "size") -> int:
    """``1048576``, ``"512k"``, ``"16MiB"``, ``"1g"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{where}: {value!r} is not a size like 512k, 16MiB or 1g")
    unit = (match.group(2) or "b").lower()[0]
    return int(match.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def _convert(key: str, raw: Any, where: str) -> Any:
    try:
        if key == "concurrency" and isinstance(raw, str) and ".." in raw:
            low, high = (int(part) for part in raw.split("..", 1))
            if not 1 <= low <= high:
                raise ValueError
            return (low, high)
        if key in ("concurrency", "concurrency_min", "max_redeliveries"):
            value = int(raw)
            if value < (1 if key == "concurrency" else 0):
                raise ValueError
            return value
        if key in ("grace", "wait_timeout", "revoke_expiry", "handover_after", "scale_idle"):
            return parse_duration(raw, where)
        if key == "inline_limit":
            return parse_size(raw, where)
        if key in ("trace_plugins", "allow_unsigned"):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
        if key in ("bindings", "load_plugins", "plugins"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(i.strip() for i in items if i.strip())
        if key in _TABLES:
            if not isinstance(raw, Mapping):
                raise ValueError
            return dict(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: invalid value {raw!r} for {key}") from None


def _check(settings: Settings) -> None:
    if settings.concurrency_min > settings.concurrency:
        raise ConfigError("concurrency_min may not exceed concurrency")
    # Inline files grow by a third in base64 and must fit in one message with the rest.
    if settings.inline_limit > 48 * 1024 * 1024:
        raise ConfigError("inline_limit may be at most 48MiB (messages are capped at 64MiB)")
    if not re.match(r"^[A-Za-z0-9_.:-]{1,200}$", settings.queue):
        raise ConfigError(f"queue name {settings.queue!r} is not valid")
    unknown = set(settings.results) - {"url", "keep", "lease"}
    if unknown:
        raise ConfigError(f"[results]: unknown key {sorted(unknown)[0]!r} (known: url, keep, lease)")
    for key in ("keep", "lease"):
        if key in settings.results:
            parse_duration(settings.results[key], f"[results] {key}")
    for route in settings.routes.values():
        if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", str(route)):
            raise ConfigError(f"[routes]: {route!r} is not a valid route")

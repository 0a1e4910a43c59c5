"""Keep secrets out of e-mail: parameters redacted by name, their values scrubbed from text.

A parameter is secret when its name looks like one (``password``, ``api_token``, ``awsSecretKey``
…, plus the operator's ``secret_patterns``), when the job type declares it secret (a click option
with ``hide_input=True``, or a ``secret_params`` attribute on the job type), or when
``[jobs.NAME.notify] secret_params`` names it.  The values of redacted parameters are then
scrubbed from the error, traceback and stderr too: a job that prints its password does not mail it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[redacted]"
# Matched anywhere in the lower-cased name.
_SUBSTRINGS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "api_key",
               "credential", "private_key", "privatekey", "authorization")
# Matched against the name's words (split at _, -, . and camelCase).
_WORDS = {"pass", "pwd", "key", "auth", "cookie", "session", "signature", "sig", "otp", "pin",
          "bearer", "dsn"}
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
MIN_SCRUB = 4  # shorter values would blank out ordinary words


class Redactor:
    """Decides which names are secret and scrubs their values out of text."""

    def __init__(self, patterns: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        self._patterns = [re.compile(p, re.I) for p in patterns]
        self._names = {n.lower() for n in names}
        self._values: set[str] = set()

    def is_secret(self, name: str) -> bool:
        lowered = name.lower()
        if lowered in self._names or any(s in lowered for s in _SUBSTRINGS):
            return True
        words = {w.lower() for w in _WORD_SPLIT.split(name) if w}
        return bool(words & _WORDS) or any(p.search(name) for p in self._patterns)

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A copy with secret values masked, at any depth; remembers them for :meth:`text`."""
        self._collect(params)
        return {k: self._masked(str(k), v) for k, v in params.items()}

    def _collect(self, value: Any, secret: bool = False) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                self._collect(v, secret or self.is_secret(str(k)))
        elif isinstance(value, list):
            for v in value:
                self._collect(v, secret)
        elif secret and value is not None and not isinstance(value, bool):
            text = str(value)
            if len(text) >= MIN_SCRUB:
                self._values.add(text)

    def _masked(self, name: str, value: Any) -> Any:
        if self.is_secret(name):
            return MASK
        if isinstance(value, Mapping):
            return {k: self._masked(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._masked(name, v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, text: str | None) -> str:
        """``text`` with remembered secret values and URL passwords masked."""
        if not text:
            return ""
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def declared_secrets(job: Any) -> tuple[str, ...]:
    """Parameter names a job type marks secret.

    runner's ``JobType`` has no field for it yet; a click option declared with
    ``hide_input=True`` (click's own "do not echo this") counts, and so does a ``secret_params``
    attribute should a job type carry one.
    """
    if job is None:
        return ()
    hidden = [p.name for p in getattr(job, "params", ()) if getattr(p, "hide_input", False) and p.name]
    return (*hidden, *getattr(job, "secret_params", ()))

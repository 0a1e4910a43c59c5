"""Who may do what on the monitor: ``admin`` (read and retry) or ``read`` (read only).

A token is presented as ``Authorization: Bearer <token>``, as the password of HTTP basic auth
(any user name), or once as ``/?token=<token>`` in a browser, which then keeps it in an
HttpOnly, SameSite=Strict cookie (EventSource cannot send headers).  With no token configured
everyone is admin: the monitor then listens on loopback only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from typing import Any

COOKIE = "runner_monitor_token"
ADMIN, READ = "admin", "read"
CSRF_HEADER = "x-runner-monitor"  # required on POSTs a browser could forge (see can_post)


class Auth:
    def __init__(self, admin_tokens: Iterable[str] = (), read_tokens: Iterable[str] = ()):
        self.admin = [t for t in admin_tokens if t]
        self.read = [t for t in read_tokens if t]

    @property
    def open(self) -> bool:
        """No token configured: everyone is admin."""
        return not (self.admin or self.read)

    def role_of(self, token: str | None) -> str | None:
        if self.open:
            return ADMIN
        if not token:
            return None
        given = token.encode()
        # Compare against every token, so timing does not tell which list matched.
        admin = any([hmac.compare_digest(given, t.encode()) for t in self.admin])
        read = any([hmac.compare_digest(given, t.encode()) for t in self.read])
        return ADMIN if admin else READ if read else None

    def credentials(self, headers: Any, cookies: Any) -> tuple[str | None, str]:
        """The token a request carries, and how (``bearer``, ``basic``, ``cookie``, ``none``)."""
        header = headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "bearer"
        if scheme.lower() == "basic" and value.strip():
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, "basic"
            return decoded.partition(":")[2], "basic"
        if cookies.get(COOKIE):
            return cookies[COOKIE], "cookie"
        return None, "none"


def can_post(how: str, headers: Any) -> bool:
    """A browser sends cookies and basic credentials to any form's target, so those POSTs need
    a header only this page's script sets (a cross-site page would need CORS, never granted).
    A bearer token is never sent by a browser on its own."""
    return how == "bearer" or headers.get(CSRF_HEADER) == "1"

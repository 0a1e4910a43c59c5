"""Telling systemd how a service is doing: the ``sd_notify(3)`` protocol, for ``Type=notify``.

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket; ``@`` starts an abstract name) and,
with ``WatchdogSec=``, ``WATCHDOG_USEC`` to the service.  These are systemd's protocol rather
than runner settings, so they are read here and not in :mod:`runner.config`.  Outside systemd
every call is a no-op.  The protocol is a datagram of ``KEY=VALUE`` lines; the standard library
speaks it, so no dependency (``systemd-python`` needs libsystemd headers to build) is needed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """``READY=1``, ``STOPPING=1``, ``STATUS=…`` and watchdog pings to the service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        owner = environ.get("WATCHDOG_PID", "")
        mine = not owner or owner == str(os.getpid())
        self.watchdog = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._stop = threading.Event()

    @property
    def active(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send one notification; False (logged at debug) when there is nobody to tell."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self._stop.set()
        self.send("STOPPING=1", f"STATUS={status}")

    def keep_alive(self, healthy: Callable[[], bool]) -> threading.Thread | None:
        """Ping the watchdog at half its interval for as long as ``healthy()`` holds.

        A process that stops being healthy (its consumer gone, wedged) stops pinging, and
        systemd restarts it once ``WatchdogSec`` has passed.
        """
        if self.watchdog is None or not self.address:
            return None
        interval = self.watchdog / 2

        def ping() -> None:
            while not self._stop.wait(interval):
                if healthy():
                    self.send("WATCHDOG=1")

        thread = threading.Thread(target=ping, name="watchdog", daemon=True)
        thread.start()
        return thread

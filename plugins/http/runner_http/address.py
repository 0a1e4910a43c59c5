"""Where the ``http`` job may connect: public addresses, or hosts the operator named.

A submitter chooses the URL, so without this the job is a server-side request forgery tool:
it would fetch a loopback admin page, a cloud metadata service (169.254.169.254) or anything on
the worker's private network and hand back the body.  The host name is resolved once, every
address it resolves to is checked, and the connection goes to the address that was checked
(a second lookup could answer differently: DNS rebinding).  Loopback, link-local, private,
shared, multicast, reserved and unspecified addresses are refused unless ``allowed_hosts``
names the host exactly (a ``*.`` pattern never opens them).  Redirects are never followed
(:mod:`runner_http.job`), so there is no second hop to check.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.request
from typing import Any

from runner import Reject


def checked_address(host: str, port: int, allowed_hosts: list[str] | None) -> str:
    """The address to connect to for ``host``; raises :class:`Reject` for a non-public one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Reject(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    named = host.lower().rstrip(".").strip("[]") in (allowed_hosts or ())
    if not named:
        for address in addresses:
            if not is_public(address):
                raise Reject(
                    f"host {host} resolves to {address}, a loopback, private or link-local "
                    "address; name it in [jobs.http] allowed_hosts to allow it"
                )
    return addresses[0]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, *, address: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, *, address: str, tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=tls, **kwargs)
        self._address = address
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # The certificate is checked against the host name, as without pinning.
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def pinned_handlers(address: str) -> list[urllib.request.BaseHandler]:
    """urllib handlers that connect to ``address`` whatever the URL's host resolves to now."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(lambda host, **kw: _PinnedHTTP(host, address=address, **kw), req)

    tls = ssl.create_default_context()  # certificates and host names verified

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(
                lambda host, **kw: _PinnedHTTPS(host, address=address, tls=tls, timeout=kw.get("timeout")),
                req,
            )

    return [urllib.request.ProxyHandler({}), HTTP(), HTTPS()]

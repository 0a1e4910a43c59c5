"""Talking to the SMTP server: connect (TLS verified, never a silent plaintext fallback), log in,
send; and which failures are worth another try.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.message import EmailMessage

from runner import RunnerError
from runner_notify.config import HOST, EmailSettings

HELO = HOST if re.fullmatch(r"[A-Za-z0-9.-]+", HOST) else "localhost"


class Unreachable(RunnerError):
    """The server cannot take mail now (down, hanging, refusing the login); try again later."""


class Refused(RunnerError):
    """The server refuses this one message for good (a 5xx answer to it)."""


def open_smtp(
    cfg: EmailSettings, hold: Callable[[smtplib.SMTP | None], None] = lambda conn: None
) -> smtplib.SMTP:
    """A connected, secured and logged-in session; raises :class:`Unreachable`.

    ``hold`` is given the session before it connects (and ``None`` after a failure), so a
    stopping sender can cut a connection that hangs.
    """
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    conn: smtplib.SMTP
    if cfg.security == "ssl":
        conn = smtplib.SMTP_SSL(local_hostname=HELO, timeout=cfg.timeout, context=context)
    else:
        conn = smtplib.SMTP(local_hostname=HELO, timeout=cfg.timeout)
    # Connecting outside the constructor lets ``hold`` see the session before the greeting,
    # but then smtplib does not know the name TLS must verify: set it as the constructor would.
    conn._host = cfg.smtp_host  # type: ignore[attr-defined]
    hold(conn)
    try:
        code, greeting = conn.connect(cfg.smtp_host, cfg.smtp_port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, greeting)
        conn.ehlo()
        if cfg.security == "starttls":
            conn.starttls(context=context)
            conn.ehlo()
        if cfg.username:
            conn.login(cfg.username, cfg.password() or "")
    except Exception as exc:
        close(conn)
        hold(None)
        raise Unreachable(f"{cfg.smtp_host}:{cfg.smtp_port}: {describe(exc)}") from exc
    return conn


def send(conn: smtplib.SMTP, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
    """Send one message; returns the recipients refused when others were accepted.

    Raises :class:`Refused` when the server refuses the message itself for good, and
    :class:`Unreachable` for everything that may work later.
    """
    try:
        return conn.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        error: type[RunnerError] = Refused if codes and min(codes) >= 500 else Unreachable
        raise error(f"every recipient refused: {describe(exc)}") from exc
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        error = Refused if exc.smtp_code >= 500 else Unreachable
        raise error(describe(exc)) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise Unreachable(describe(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - the message itself cannot be sent (malformed)
        raise Refused(f"cannot send this message: {describe(exc)}") from exc


def close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except Exception:  # noqa: BLE001 - the session is over either way
        conn.close()


def cut(conn: smtplib.SMTP) -> None:
    """Interrupt a session blocked on a silent server (from another thread)."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def describe(exc: BaseException) -> str:
    """One line for the log."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer within the timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); set ca_file for a private CA"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, RunnerError) else text


def _text(raw: bytes | str) -> str:
    return (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).replace("\n", " ")

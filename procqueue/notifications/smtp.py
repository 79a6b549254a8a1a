"""SMTP: one multipart (text + HTML) message per send, through aiosmtplib.

Security is `plain` (no TLS: a local relay), `starttls` (upgrade on 587, the
default) or `tls` (implicit TLS on 465). A connection per message: transactional
mail is rare enough, and nothing has to be closed when the worker stops.

Failures: a refused connection, a timeout, a dropped connection or any 4xx
reply (421 "try again later", 451, 452) is transient; a 5xx reply (550 no such
mailbox, 535 bad credentials) is permanent.

The server is an SmtpConfig (`NotificationSettings.smtp`).
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from procqueue.errors import PermanentError, SinkUnavailable, TransientError
from procqueue.notifications.settings import SmtpConfig

#: The outside service email goes through: its outages open one circuit (queue/circuit.py).
SINK = "smtp"

_ADDRESS = re.compile(
    r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+$"
)


def valid_address(address: str | None) -> bool:
    """A plain addr-spec we can hand to an SMTP server (user@domain.tld)."""
    if not address or not _ADDRESS.match(address):
        return False
    try:
        Address(addr_spec=address)
    except (ValueError, IndexError):
        return False
    return True


def masked(address: str) -> str:
    """An address fit for a log line: s***@example.com."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def build_message(
    sender: str, recipient: str, subject: str, text: str, html: str, message_id: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


async def send_email(config: SmtpConfig, message: EmailMessage) -> None:
    """Hand the message to the SMTP server; raise TransientError / PermanentError."""
    recipient = str(message["To"])
    try:
        await aiosmtplib.send(
            message,
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            timeout=config.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as refused:
        raise _classify(refused.recipients[0], recipient) from None
    except aiosmtplib.SMTPResponseException as error:
        raise _classify(error, recipient) from None
    except (aiosmtplib.SMTPException, OSError) as error:
        raise SinkUnavailable(
            SINK,
            f"SMTP server {config.host}:{config.port} unreachable ({type(error).__name__}: "
            f"{error}); will retry",
        ) from None


def _classify(error: aiosmtplib.SMTPResponseException, recipient: str) -> Exception:
    reply = f"{error.code} {error.message}".replace(recipient, masked(recipient))
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return PermanentError(
            f"SMTP server refused the credentials ({reply}): check PROCQUEUE_SMTP_USERNAME "
            "and PROCQUEUE_SMTP_PASSWORD"
        )
    if error.code == 421:  # the server is shutting down or overloaded, not this message
        return SinkUnavailable(SINK, f"SMTP server unavailable ({reply}); will retry")
    if 400 <= error.code < 500:
        return TransientError(f"SMTP server deferred the message ({reply}); will retry")
    return PermanentError(f"SMTP server rejected the message to {masked(recipient)}: {reply}")

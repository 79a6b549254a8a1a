"""A real SMTP server on loopback (aiosmtpd, in its own thread) that records
every accepted message and can be scripted to answer the next DATA (or RCPT)
commands with given replies, such as "421 try later" or "550 no such user".
The tests and the demo use it; `listeners` are told of each accepted message."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session
except ImportError as missing:  # the core install has no aiosmtpd
    raise ImportError(
        "the loopback SMTP server needs aiosmtpd: pip install 'procqueue[local]'"
    ) from missing

from procqueue.local import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpRecorder:
    """The aiosmtpd handler: records, or answers with the scripted replies."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    replies: dict[str, deque[str]] = field(default_factory=dict)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called (in the server's thread) with each accepted message, after it is recorded.
    listeners: list[Callable[[Received], None]] = field(default_factory=list)

    def answer_next(self, command: str, *replies: str) -> None:
        """The next DATA or RCPT commands get these replies, in order."""
        with self.lock:
            self.replies.setdefault(command, deque()).extend(replies)

    def _scripted(self, command: str) -> str | None:
        with self.lock:
            queue = self.replies.get(command)
            return queue.popleft() if queue else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        scripted = self._scripted("RCPT")
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.attempts += 1
        scripted = self._scripted("DATA")
        if scripted:
            return scripted
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        received = Received(str(envelope.mail_from), list(envelope.rcpt_tos), message)
        with self.lock:
            self.received.append(received)
        for listener in self.listeners:
            listener(received)
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [item.message for item in self.received if address in item.rcpt_tos]


@contextlib.contextmanager
def smtp_server() -> Iterator[SmtpRecorder]:
    """The recorder of a running loopback SMTP server (its host and port)."""
    recorder = SmtpRecorder(port=free_port())
    controller = Controller(recorder, hostname=recorder.host, port=recorder.port)
    controller.start()
    try:
        yield recorder
    finally:
        controller.stop()

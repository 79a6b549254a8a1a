"""The demo's sinks: the loopback SMTP, FCM and Cloudinary stand-ins started together,
the settings that point a worker at them, a line per delivery as it arrives, and a
JSON page of everything they received (`outbox_url`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from procqueue.loopback.cloudinary import Call, CloudinaryServer, cloudinary_server
from procqueue.loopback.fcm import FcmState, Send, fcm_server, service_account
from procqueue.loopback.http import Reply, send_json
from procqueue.loopback.smtp import Received, SmtpRecorder, smtp_server

PROJECT_ID = "procqueue-demo"
CLIENT_EMAIL = f"push-sender@{PROJECT_ID}.iam.gserviceaccount.com"
SENDER = "Pazaryeri demo <bildirim@pazaryeri.example>"
#: The cloud of the sample rows' image URLs (examples/seed.sql).
CLOUD_NAME = "demo"

EMAIL, PUSH, DELETION = "email", "push", "Cloudinary deletion"
KINDS = (EMAIL, PUSH, DELETION)


def email_entry(received: Received) -> dict[str, Any]:
    body = received.message.get_body(("plain",))
    return {
        "from": received.mail_from,
        "to": received.rcpt_tos,
        "subject": received.message["Subject"],
        "text": body.get_content().strip() if body is not None else "",
    }


def push_entry(send: Send) -> dict[str, Any]:
    notification = send.message.get("notification", {})
    return {
        "token": send.device_token,
        "status": send.status,
        "title": notification.get("title"),
        "body": notification.get("body"),
        "data": send.message.get("data", {}),
    }


def deletion_entry(call: Call) -> dict[str, Any]:
    return {
        "resource_type": call.resource_type,
        "type": call.delivery_type,
        "public_ids": list(call.public_ids),
        "status": call.status,
    }


@dataclass
class LoopbackSinks:
    smtp: SmtpRecorder
    fcm: FcmState
    cloud: CloudinaryServer
    account: dict[str, Any]
    #: Where each delivery is told, as one line (the demo prints it). Called from the
    #: stand-ins' threads, one call at a time.
    report: Callable[[str], None] = lambda line: None
    outbox_url: str = ""
    arrived: set[str] = field(default_factory=set)
    _watchers: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _report_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.smtp.listeners.append(self._on_email)
        self.fcm.listeners.append(self._on_push)
        self.cloud.listeners.append(self._on_call)

    def settings(self) -> dict[str, Any]:
        """Settings that send every email, push and Cloudinary call here (they win over
        the environment: the demo never reaches a real inbox, phone or account)."""
        return {
            "smtp_host": self.smtp.host,
            "smtp_port": self.smtp.port,
            "smtp_security": "plain",
            "smtp_sender": SENDER,
            "smtp_username": None,
            "smtp_password": None,
            "fcm_project_id": None,
            "fcm_service_account_file": None,
            "fcm_service_account_json": json.dumps(self.account),
            "fcm_token_uri": f"{self.fcm.url}/token",
            "fcm_base_url": self.fcm.url,
            "cloudinary_url": None,
            "cloudinary_cloud_name": self.cloud.cloud_name,
            "cloudinary_api_key": self.cloud.api_key,
            "cloudinary_api_secret": self.cloud.api_secret,
            "cloudinary_upload_prefix": self.cloud.url,
        }

    def received(self) -> dict[str, list[dict[str, Any]]]:
        """Everything the stand-ins accepted, oldest first (the outbox page)."""
        with self.smtp.lock:
            emails = [email_entry(item) for item in self.smtp.received]
        with self.fcm.lock:
            pushes = [push_entry(send) for send in self.fcm.sends]
        deletions = [
            deletion_entry(call) for call in self.cloud.calls_made() if call.method == "DELETE"
        ]
        return {"emails": emails, "pushes": pushes, "cloudinary_deletions": deletions}

    async def wait_for(self, kinds: Collection[str], timeout: float) -> bool:
        """Whether one delivery of each of `kinds` arrived within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        with self._lock:
            self._watchers.append(wake)
        try:
            async with asyncio.timeout(timeout):
                while not self._has(kinds):
                    await changed.wait()
                    changed.clear()
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._watchers.remove(wake)

    def _has(self, kinds: Collection[str]) -> bool:
        with self._lock:
            return set(kinds) <= self.arrived

    def _arrive(self, kind: str, line: str) -> None:
        with self._lock:
            self.arrived.add(kind)
            watchers = list(self._watchers)
        # print() writes the line and its newline apart: two servers' lines would mix.
        with self._report_lock:
            self.report(line)
        for wake in watchers:
            wake()

    def _on_email(self, received: Received) -> None:
        entry = email_entry(received)
        self._arrive(EMAIL, f"  email    to {', '.join(entry['to'])}: {entry['subject']}")

    def _on_push(self, send: Send) -> None:
        if send.status == 200:
            entry = push_entry(send)
            self._arrive(PUSH, f"  push     to {entry['token']}: {entry['title']}")

    def _on_call(self, call: Call) -> None:
        if call.method == "DELETE" and call.status == 200:
            names = ", ".join(f"{call.resource_type}/{call.delivery_type}/{public_id}"
                              for public_id in call.public_ids)  # fmt: skip
            self._arrive(DELETION, f"  Cloudinary deleted {names}")


def _outbox_handler(sinks: LoopbackSinks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            send_json(self, Reply(200, sinks.received()), readable=True)

    return Handler


@contextlib.contextmanager
def outbox_server(sinks: LoopbackSinks) -> Iterator[str]:
    """Serve what the sinks received as JSON (GET /); yield its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _outbox_handler(sinks))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def loopback_sinks() -> Iterator[LoopbackSinks]:
    """The three stand-ins and their outbox page, running until the block ends."""
    account, public_pem = service_account(PROJECT_ID, CLIENT_EMAIL)
    with (
        smtp_server() as smtp,
        fcm_server(FcmState(PROJECT_ID, public_pem, CLIENT_EMAIL)) as fcm,
        cloudinary_server(
            cloud_name=CLOUD_NAME, api_key="demo-key", api_secret="demo-secret"
        ) as cloud,
    ):
        sinks = LoopbackSinks(smtp, fcm, cloud, account)
        with outbox_server(sinks) as url:
            sinks.outbox_url = url
            yield sinks

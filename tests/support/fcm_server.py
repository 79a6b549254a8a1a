"""The loopback FCM (token and send endpoints) the tests push to: the stand-in itself
lives in procqueue/loopback/fcm.py, which the demo runs too."""

from procqueue.loopback.fcm import (
    FCM_SCOPE,
    GOOGLE_TOKEN_AUDIENCE,
    INVALID_TOKEN,
    UNREGISTERED,
    FcmState,
    Send,
    fcm_error,
    fcm_server,
    service_account,
    unavailable,
)
from procqueue.loopback.http import Reply

__all__ = [
    "FCM_SCOPE",
    "GOOGLE_TOKEN_AUDIENCE",
    "INVALID_TOKEN",
    "UNREGISTERED",
    "FcmState",
    "Reply",
    "Send",
    "fcm_error",
    "fcm_server",
    "service_account",
    "unavailable",
]

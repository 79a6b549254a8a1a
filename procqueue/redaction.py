"""Redaction: what is left of a message, a traceback or a URL once credentials are
removed, and clipping that never leaves a piece of one behind. A leaf: settings,
logs and failure records all use it."""

from __future__ import annotations

import re

# user:password@ in URLs, found in linear time (see `_redact_url_passwords`): each
# run of characters without "@" or whitespace is matched once, whole; in one that
# ends in "@", the first scheme://user: (a scheme is tried only where its run of
# scheme characters starts). The password is everything from there to that "@".
_RUN = re.compile(r"[^@\s]++@?")
_URL_USER = re.compile(
    r"(?<![a-z0-9+.\-])[0-9+.\-]*+[a-z][a-z0-9+.\-]*+://[^:/@\s]++:", re.IGNORECASE
)
# password=..., api_key: ... and the like (possessive: no backtracking).
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<keep>\b(?:password|passwd|api_secret|api_key|secret|token|apikey)\s*+[=:]\s*+['\"]?+)"
    r"[^\s'\"&,;]++",
    re.IGNORECASE,
)
_BREAK = re.compile(r"[@\s]")
_LAST_TOKEN = re.compile(r"[@\s][^@\s]*+\Z")



def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove credentials from a message, a traceback or a log line, in time
    linear in its length."""
    text = _redact_url_passwords(text)
    text = _SECRET_ASSIGNMENT.sub(r"\g<keep>***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _redact_url_passwords(text: str) -> str:
    pieces: list[str] = []
    done = 0
    for run in _RUN.finditer(text):
        at = run.end() - 1
        if text[at] != "@":
            continue
        user = _URL_USER.search(text, run.start(), at)
        if user is None or user.end() == at:
            continue
        pieces += [text[done : user.end()], "***"]
        done = at
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def clip(text: str, limit: int, secrets: tuple[str, ...] = ()) -> str:
    """`text` if it has at most `limit` characters, else its head and its tail
    around a marker saying how much was cut. Both cuts are moved so that no part
    of a credential is left where `redact` could no longer recognise it: a head
    ends before the userinfo of a URL it cuts, a tail starts after the word it
    cuts into, and neither keeps a piece of one of `secrets`. Cheap: what is cut is
    never scanned, so clipping before redacting bounds the cost of both."""
    if len(text) <= limit:
        return text
    head = _safe_head(text, limit * 3 // 4, secrets)
    tail = _safe_tail(text, len(text) - limit // 4, secrets)
    cut = len(text) - len(head) - len(tail)
    return f"{head} … [{cut} characters cut] … {tail}"


def _safe_head(text: str, end: int, secrets: tuple[str, ...]) -> str:
    head = text[:end]
    if not text[end].isspace():  # ends inside a word: a URL's userinfo may be cut
        last = _LAST_TOKEN.search(head)
        scheme = head.find("://", last.start() + 1 if last else 0)
        if scheme >= 0:
            head = head[: scheme + 3]
    return _strip_secret_edges(head, secrets, at_end=True)


def _safe_tail(text: str, start: int, secrets: tuple[str, ...]) -> str:
    tail = text[start:]
    if not _BREAK.match(text, start - 1):  # starts inside a word: drop that word
        first = _BREAK.search(tail)
        tail = tail[first.end() :] if first else ""
    return _strip_secret_edges(tail, secrets, at_end=False)


def _strip_secret_edges(text: str, secrets: tuple[str, ...], *, at_end: bool) -> str:
    """Drop the piece of a secret that a cut left at the end (or start) of `text`.
    One cut leaves at most one such piece: the longest one found covers the others."""
    piece = 0
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(text)), piece, -1):
            if text.endswith(secret[:size]) if at_end else text.startswith(secret[-size:]):
                piece = size
                break
    if not piece:
        return text
    return text[:-piece] if at_end else text[piece:]

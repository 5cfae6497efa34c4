"""Serving hardening: security headers, a generic 500, a request-body deadline, and a header-read deadline.

Why uvicorn with these two small pieces rather than gunicorn: the body and header timeouts that matter are the
ones of whatever parses HTTP. Under gunicorn's uvicorn workers that is still uvicorn's protocol, so gunicorn's
``timeout`` (a worker heartbeat) and its ``limit_request_*`` (its own parser's) would not cut a slow client; and
several gunicorn workers would each hold their own verifier pool, render pool and in-memory rate limiter,
multiplying the limits. So one uvicorn process, with:

- ``HeaderDeadline``: a connection that has not finished sending a request's headers within ``header_timeout_s``
  of its first byte (or of the connection opening) is closed (slowloris);
- ``SecurityMiddleware`` (ASGI): a request body that has not fully arrived ``body_timeout_s`` after the headers
  is answered 408 with ``Connection: close``; every response gets the security headers; an unhandled exception is
  logged here and answered with a generic JSON 500 (no path, no traceback, no exception text);
- ``PathScrubber`` (ASGI): no server filesystem path leaves in a page or a JSON answer: the data folder, the
  temporary folder, the interpreter's and the kit's install folders and the home folder are replaced, with
  whatever path follows them, by ``[server path]`` (a net under the code that should not put them there);
- uvicorn's own limits: ``limit_concurrency`` (503 past it), ``backlog``, ``timeout_keep_alive`` and
  ``h11_max_incomplete_event_size`` (the most header bytes buffered).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from distill_kit.report.html import STYLE

LOG = logging.getLogger("distill_kit.leaderboard")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = ("default-src 'none'; img-src 'self'; style-src 'sha256-" + STYLE_HASH + "'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-resource-policy", b"same-origin")]
_OURS = {name for name, _ in SECURITY_HEADERS}


class BodyTimeout(BaseException):
    """The request body did not arrive within the limit. A BaseException, like a cancellation: code that turns
    ``Exception`` into an answer (a malformed form is a 400) must not swallow it."""


def _with_headers(message: Message) -> Message:
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
    return {**message, "headers": headers + SECURITY_HEADERS}


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """Security headers on every response, a body deadline, and the catch-all 500 (see the module doc)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], body_timeout_s: float):
        self.app, self.body_timeout_s = app, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = time.monotonic() + self.body_timeout_s
        headers = dict(scope.get("headers") or [])
        body_done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise BodyTimeout() from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def secured_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _with_headers(message)
                if not body_done:  # answered before the body's end (413, 408, 400): never read the rest
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        try:
            await self.app(scope, timed_receive, secured_send)
        except BodyTimeout:
            if started:
                raise
            await _json(secured_send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s")
        except Exception:
            LOG.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _json(secured_send, 500, "internal server error")


def header_deadline_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on reading each request's headers (see ``HeaderDeadline``)."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": header_timeout_s})


class HeaderDeadline(H11Protocol):
    """Closes a connection whose request headers are not complete ``header_timeout_s`` after the connection opened
    (first request) or after the next request's first byte (keep-alive). Idle keep-alive connections are uvicorn's
    ``timeout_keep_alive``'s."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._waiting_for_headers():
            self._arm()
        super().data_received(data)
        if self._header_timer is not None and not self._waiting_for_headers():
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            LOG.warning("closed a connection from %s: request headers not complete within %g s",
                        self.client[0] if self.client else "?", self.header_timeout_s)
            self.transport.close()


SCRUBBED_TYPES = (b"text/html", b"application/json", b"text/plain")
SHOWN = "[server path]"


def server_path_pattern(*extra: Path) -> re.Pattern[bytes]:
    """Any path under one of the server's folders (``extra``, temp, interpreter, the kit's, home), as bytes."""
    roots = {str(p) for p in (*extra, Path(tempfile.gettempdir()), Path(sys.prefix), Path(sys.base_prefix),
                              Path(__file__).resolve().parents[2], Path.home())}
    roots |= {str(Path(r).resolve()) for r in roots}
    roots = {r.rstrip("/") for r in roots if len(r.rstrip("/")) > 1}  # never "/" itself
    alternatives = b"|".join(re.escape(r.encode()) for r in sorted(roots, key=len, reverse=True))
    return re.compile(rb"(?<![\w./-])(?:" + alternatives + rb")(?![\w.-])(?:/[^\s\"'<>,()]*)?")


class PathScrubber:
    """Replaces server paths in HTML, JSON and text answers (see the module doc); other answers pass as they are."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], pattern: re.Pattern[bytes]):
        self.app, self.pattern = app, pattern

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def scrubbing_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(SCRUBBED_TYPES):
                    start = message
                    return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = self.pattern.sub(SHOWN.encode(), b"".join(parts))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, scrubbing_send)

"""The hub's answers to plain HTTP ``GET``s when its dashboard is on, with no I/O.

Three paths: ``/`` a self-contained page (`page.html`: inline script and style, a canvas
chart, nothing fetched from anywhere but the hub), ``/status.json`` the status object
(what ``winerp status --json`` prints) and ``/metrics`` in Prometheus text. The hub hands
every request head that is not a websocket upgrade to `Dashboard.answer` and writes back
the bytes it returns, then closes the connection; a websocket upgrade is never its
business (`answer` returns None and the hub admits or refuses it as always).

Rules: with a token, each path needs it (``Authorization: Bearer <token>``, or
``?token=`` on the page, whose own requests then carry the header). A browser request from
another origin (an ``Origin`` header that is neither the hub's own nor an allowed origin)
gets 403, as a websocket handshake does.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any

from ..wire import handshake
from .metrics import prometheus_text

try:
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover
    from hmac import compare_digest  # type: ignore[no-redef]

__all__ = ["Dashboard", "PATHS"]

#: The paths the dashboard answers.
PATHS = ("/", "/status.json", "/metrics")

_PHRASES = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
# The page runs its own inline script and style and talks to the hub only.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _response(status: int, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n"
        f"{extra}\r\n"
    )
    return head.encode() + body


def _text(status: int, message: str, extra: str = "") -> bytes:
    return _response(status, (message + "\n").encode(), "text/plain; charset=utf-8", extra)


def _is_upgrade(headers: dict[str, str]) -> bool:
    return "upgrade" in headers or "sec-websocket-key" in headers or "sec-websocket-version" in headers


class Dashboard:
    """Answers the dashboard's HTTP requests for one hub.

    Args:
        status: Returns the hub's status object; called on the hub's loop thread, without
            its lock held.
        token: The hub's shared secret, or None.
        allowed_origins: Browser origins let in besides the hub's own.
        tls: The hub serves TLS (its own origin is then ``https://``).
    """

    def __init__(
        self, status: Callable[[], dict[str, Any]], *, token: str | None, allowed_origins: Collection[str], tls: bool
    ) -> None:
        self._status = status
        self._token = token.strip().encode("utf-8") if token is not None else None
        self._allowed_origins = frozenset(allowed_origins)
        self._scheme = "https" if tls else "http"
        self._page = resources.files(__package__).joinpath("page.html").read_bytes()

    def answer(self, head: bytes) -> bytes | None:
        """The whole HTTP response to the request ``head``, or None if it is not the dashboard's.

        None for a websocket upgrade, a method other than ``GET`` or ``HEAD``, or a head that
        does not parse: the hub's handshake then answers it as it always does.
        """
        parsed = handshake.parse_request(head)
        if isinstance(parsed, handshake.Refusal):
            return None
        method, target, headers = parsed
        if method not in ("GET", "HEAD") or _is_upgrade(headers):
            return None
        response = self._route(target, headers)
        if method == "HEAD":
            response = response[: response.index(b"\r\n\r\n") + 4]
        return response

    def _route(self, target: str, headers: dict[str, str]) -> bytes:
        url = urllib.parse.urlsplit(target)
        if url.path not in PATHS:
            return _text(404, f"no such page; this hub serves {', '.join(PATHS)}")
        origin = headers.get("origin")
        if origin is not None and origin not in self._allowed_origins and origin != self._own_origin(headers):
            return _text(403, f"origin {origin[:100]!r} is not allowed")
        if not self._authorized(url, headers):
            return _text(401, "wrong or missing token", 'WWW-Authenticate: Bearer realm="winerp"\r\n')
        if url.path == "/metrics":
            body = prometheus_text(self._status()).encode()
            return _response(200, body, "text/plain; version=0.0.4; charset=utf-8")
        if url.path == "/status.json":
            return _response(200, json.dumps(self._status()).encode(), "application/json")
        return _response(200, self._page, "text/html; charset=utf-8", f"Content-Security-Policy: {_PAGE_POLICY}\r\n")

    def _own_origin(self, headers: dict[str, str]) -> str:
        return f"{self._scheme}://{headers.get('host', '')}"

    def _authorized(self, url: urllib.parse.SplitResult, headers: dict[str, str]) -> bool:
        if self._token is None:
            return True
        offered = b""
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            # Header bytes were decoded as latin-1: encoding back gives the client's bytes.
            offered = credentials.strip().encode("latin-1")
        elif url.path == "/":
            # The page may carry the token in its address; its script then sends the header.
            offered = urllib.parse.parse_qs(url.query).get("token", [""])[0].encode("utf-8", "replace")
        return compare_digest(offered, self._token)

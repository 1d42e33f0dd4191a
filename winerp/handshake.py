"""The hub's admission check of an opening websocket handshake, with no I/O.

Rules of this module: no I/O, no threads, no clock. The hub reads the raw HTTP request
itself and asks `admit` whether to let it in, before any websocket exists: a refused
request is answered with plain HTTP (never ``101``), so a browser page, a port scanner or a
client with a wrong token never reaches the router.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Collection

# CPython's own SHA-1 and constant-time comparison, when present: hashlib and hmac load
# OpenSSL, about 4 MB of the hub's memory, for one hash per connection.
try:
    from _sha1 import sha1  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a Python built without its own SHA-1
    from hashlib import sha1
try:
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover
    from hmac import compare_digest  # type: ignore[no-redef]

from .frames import SUBPROTOCOL

__all__ = [
    "Admission",
    "Refusal",
    "admit",
    "switching_protocols",
    "parse_request",
    "could_be_http",
    "MAX_REQUEST_BYTES",
    "TOKEN_HEADER",
]

#: Largest HTTP request head the hub reads before refusing it.
MAX_REQUEST_BYTES = 16 * 1024
#: Header that carries the shared token.
TOKEN_HEADER = "x-winerp-token"


@dataclasses.dataclass(frozen=True)
class Admission:
    """The request may be upgraded.

    Attributes:
        native: True for the native dialect (the client asked for `SUBPROTOCOL`); False for
            the winerp 1.x JSON dialect (no subprotocol asked).
        extensions: True if the client offered websocket extensions (e.g. compression).
            None is ever negotiated: in particular no permessage-deflate, whose messages
            must be inflated in full before any size limit sees them.
        key: The client's ``Sec-WebSocket-Key``, for the answer.
    """

    native: bool
    extensions: bool
    key: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The request is refused with a plain HTTP answer."""

    status: int
    reason: str

    def response(self) -> bytes:
        """The full HTTP response to write before closing the connection."""
        phrase = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 426: "Upgrade Required"}
        body = (self.reason + "\n").encode()
        head = (
            f"HTTP/1.1 {self.status} {phrase.get(self.status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n"
        )
        if self.status == 426:
            head += "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        return head.encode() + b"\r\n" + body


def parse_request(head: bytes) -> tuple[str, str, dict[str, str]] | Refusal:
    """Split an HTTP request head into method, target and lower-cased headers."""
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return Refusal(400, "malformed HTTP request")
    if not version.startswith("HTTP/1."):
        return Refusal(400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return Refusal(400, "malformed HTTP header")
        key = name.strip().lower()
        value = value.strip()
        # Repeated headers are joined, as HTTP allows for list-valued ones.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, headers


def could_be_http(start: bytes) -> bool:
    """Tell whether ``start``, the first bytes read from a connection, can begin an HTTP request.

    The method must come first, in capital letters; a TLS ClientHello (0x16), an SSH banner
    or binary garbage fails at once, so the hub need not wait for a blank line that never
    comes.
    """
    method = start[:16].split(b" ", 1)[0]
    return not method or (method.isalpha() and method.isupper())


def _tokens(value: str) -> list[str]:
    return [item.strip().lower() for item in value.split(",") if item.strip()]


def admit(head: bytes, *, token: str | None, allowed_origins: Collection[str] | None) -> Admission | Refusal:
    """Decide whether an HTTP request head may become a winerp connection.

    Args:
        head: The request head, up to and including the blank line.
        token: The shared secret clients must present, or ``None`` for none.
        allowed_origins: ``Origin`` values let in; any other request carrying an ``Origin``
            header (a web browser) is refused with 403.
    """
    parsed = parse_request(head)
    if isinstance(parsed, Refusal):
        return parsed
    method, _target, headers = parsed
    if method != "GET":
        return Refusal(400, "a winerp hub only accepts websocket upgrades")
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
        headers.get("connection", "")
    ):
        return Refusal(426, "a winerp hub only accepts websocket upgrades")
    if not headers.get("sec-websocket-key") or headers.get("sec-websocket-version") != "13":
        return Refusal(400, "missing or unsupported Sec-WebSocket-Key / Sec-WebSocket-Version")
    origin = headers.get("origin")
    if origin is not None and origin not in (allowed_origins or ()):
        return Refusal(403, f"origin {origin[:100]!r} is not allowed")
    if token is not None:
        # The header arrives as the client's UTF-8 bytes (decoded as latin-1 above, which
        # gives them back unchanged) with its outer whitespace stripped, as HTTP strips it.
        offered = headers.get(TOKEN_HEADER, "").encode("latin-1")
        if not compare_digest(offered, token.strip().encode("utf-8")):
            return Refusal(401, "wrong or missing token")
    protocols = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if protocols and SUBPROTOCOL not in protocols:
        return Refusal(400, f"unsupported subprotocol(s) {protocols!r}; this hub speaks {SUBPROTOCOL!r}")
    return Admission(
        native=bool(protocols), extensions="sec-websocket-extensions" in headers, key=headers["sec-websocket-key"]
    )


_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def switching_protocols(admission: Admission) -> bytes:
    """The ``101`` answer that opens the websocket of an admitted request (no extensions)."""
    accept = base64.b64encode(sha1(admission.key.encode() + _ACCEPT_GUID).digest()).decode()
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
    )
    if admission.native:
        head += f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
    return head.encode() + b"\r\n"

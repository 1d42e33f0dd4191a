"""The hub's admission check of an opening websocket handshake, with no I/O.

Rules of this module: no I/O, no threads, no clock. The hub reads the raw HTTP request
itself and asks `admit` whether to let it in, before any websocket exists: a refused
request is answered with plain HTTP (never ``101``), so a browser page, a port scanner or a
client with a wrong token never reaches the router.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Collection
from typing import Any, Final

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "Admission",
    "Refusal",
    "admit",
    "switching_protocols",
    "parse_request",
    "could_be_http",
    "MAX_REQUEST_BYTES",
    "TOKEN_HEADER",
]


def _hashes_without_openssl() -> tuple[Callable[[bytes], Any], Callable[[bytes, bytes], bool]]:
    """SHA-1 and a constant-time comparison that do not load OpenSSL.

    `hashlib` and `hmac` load OpenSSL (libcrypto): measured, a started hub's idle resident
    memory grows from about 18.4 MB to 22.2 MB with them, a fifth of it, for one SHA-1 per
    handshake and one token comparison. CPython's built-in ``_sha1`` and
    ``_operator._compare_digest`` (what `hmac.compare_digest` is) do the same work; the
    public modules stand in on a Python built without them.
    """
    try:
        from _operator import _compare_digest
        from _sha1 import sha1  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - a Python built without its own SHA-1
        from hashlib import sha1
        from hmac import compare_digest as _compare_digest  # type: ignore[no-redef]
    return sha1, _compare_digest


sha1, compare_digest = _hashes_without_openssl()

#: Version of the native protocol, named in its websocket subprotocol.
PROTOCOL_VERSION: Final = 1
#: Websocket subprotocol of the native dialect; a connection that asks for none speaks 1.x JSON.
SUBPROTOCOL: Final = f"winerp.v{PROTOCOL_VERSION}"
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


# A header name is an HTTP token (RFC 9110, section 5.6.2): no spaces, no separators.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Headers that may appear once only: two of them make the request ambiguous.
_SINGLE_HEADERS = frozenset({"host", "sec-websocket-key", "sec-websocket-version", TOKEN_HEADER})


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TOKEN_CHARS for char in text)


def _valid_version(version: str) -> bool:
    return len(version) == 8 and version.startswith("HTTP/") and version[5::2].isdigit() and version[6] == "."


def parse_request(head: bytes) -> tuple[str, str, dict[str, str]] | Refusal:
    """Split an HTTP request head into method, target and lower-cased headers.

    Refused (400): a request line that is not ``METHOD SP target SP HTTP/x.y``, a header line
    with no colon, with a name that is not a token (e.g. a space before the colon, which
    RFC 9112 section 5.1 says must be refused), a folded line, a control character in a
    value, or a second ``Host``, ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version`` or token.
    """
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return Refusal(400, "malformed HTTP request")
    if not _is_token(method) or not target or not _valid_version(version):
        return Refusal(400, "malformed HTTP request line")
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _is_token(name):
            return Refusal(400, "malformed HTTP header line")
        key = name.lower()
        value = value.strip()
        if "\0" in value or "\n" in value or "\r" in value:
            return Refusal(400, "a control character in an HTTP header value")
        if key in headers:
            if key in _SINGLE_HEADERS:
                return Refusal(400, f"the {name} header may appear only once")
            # Repeated headers are joined, as HTTP allows for list-valued ones.
            value = f"{headers[key]}, {value}"
        headers[key] = value
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


def _valid_key(key: str) -> bool:
    """Whether ``key`` is the base64 form of 16 bytes, as RFC 6455 section 4.1 requires."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _upgrade_refusal(method: str, version: bytes, headers: dict[str, str]) -> Refusal | None:
    """The refusal of a request that is not a valid websocket upgrade (RFC 6455 section 4.2.1), if any."""
    if method != "GET":
        return Refusal(400, "a winerp hub only accepts websocket upgrades")
    if version != b"HTTP/1.1":
        return Refusal(400, "a websocket upgrade needs HTTP/1.1")
    if "host" not in headers:
        return Refusal(400, "no Host header")
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
        headers.get("connection", "")
    ):
        return Refusal(426, "a winerp hub only accepts websocket upgrades")
    if headers.get("sec-websocket-version") != "13":
        # Section 4.4: say which version this hub speaks (the 426 answer carries it).
        return Refusal(426, "unsupported or missing Sec-WebSocket-Version (this hub speaks 13)")
    if not _valid_key(headers.get("sec-websocket-key", "")):
        return Refusal(400, "missing or malformed Sec-WebSocket-Key (base64 of 16 bytes)")
    return None


def admit(head: bytes, *, token: str | None, allowed_origins: Collection[str] | None) -> Admission | Refusal:
    """Decide whether an HTTP request head may become a winerp connection.

    Args:
        head: The request head, up to and including the blank line.
        token: The shared secret clients must present, or ``None`` for none.
        allowed_origins: ``Origin`` values let in; any other request carrying an ``Origin``
            header (a web browser) is refused with 403.
    """
    if len(head) > MAX_REQUEST_BYTES:
        return Refusal(400, "request head too large")
    parsed = parse_request(head)
    if isinstance(parsed, Refusal):
        return parsed
    method, _target, headers = parsed
    version = head[: head.find(b"\r\n")].rsplit(b" ", 1)[-1]
    refusal = _upgrade_refusal(method, version, headers)
    if refusal is not None:
        return refusal
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

"""The opening handshake (RFC 6455 section 4.2.1): what the hub must refuse, and the clients it must admit.

`admit` is checked directly on request heads, and the hub through real sockets for the
rules that live in its reading of the HTTP head (the size limit).
"""

from __future__ import annotations

import socket
import threading

import pytest
import websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

import winerp
from winerp.protocol.frames import SUBPROTOCOL
from winerp.wire.handshake import MAX_REQUEST_BYTES, Admission, Refusal, admit

try:
    from security_tools import http_exchange, status_line
except ImportError:  # tests/ imported as a package
    from tests.security_tools import http_exchange, status_line

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # base64 of 16 bytes, RFC 6455's own example


def _head(*lines: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("latin-1")


BASE = ("Host: 127.0.0.1:13254", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}")
VERSION = "Sec-WebSocket-Version: 13"


def _without(name: str) -> tuple[str, ...]:
    return tuple(line for line in (*BASE, VERSION) if not line.lower().startswith(name.lower()))


REFUSED = {
    "HTTP/1.0": (_head(*BASE, VERSION, request_line="GET / HTTP/1.0"), 400),
    "HTTP/2.0": (_head(*BASE, VERSION, request_line="GET / HTTP/2.0"), 400),
    "version with letters": (_head(*BASE, VERSION, request_line="GET / HTTP/1.1x"), 400),
    "version cut short": (_head(*BASE, VERSION, request_line="GET / HTTP/1"), 400),
    "lower-case protocol name": (_head(*BASE, VERSION, request_line="GET / http/1.1"), 400),
    "two-digit major version": (_head(*BASE, VERSION, request_line="GET / HTTP/11.1"), 400),
    "a space too many in the request line": (_head(*BASE, VERSION, request_line="GET  / HTTP/1.1"), 400),
    "lower-case method": (_head(*BASE, VERSION, request_line="get / HTTP/1.1"), 400),
    "no Host": (_head(*_without("Host")), 400),
    "two Host headers": (_head(*BASE, VERSION, "Host: evil.example"), 400),
    "a space before a colon": (_head("Host : 127.0.0.1", *_without("Host")), 400),
    "a tab before a colon": (_head("Sec-WebSocket-Key\t: " + KEY, *_without("Sec-WebSocket-Key")), 400),
    "a folded header line": (_head(*BASE, VERSION, "X-Long: a", " continued"), 400),
    "a NUL in a value": (_head(*BASE, VERSION, "X-Thing: a\0b"), 400),
    "a key that is not base64": (
        _head(*_without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: not base64 at all!!!!!!"),
        400,
    ),
    "a key of 15 bytes": (_head(*_without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"), 400),
    "a key of 17 bytes": (_head(*_without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="), 400),
    "a key with a bad character": (
        _head(*_without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!"),
        400,
    ),
    "an empty key": (_head(*_without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: "), 400),
    "no key": (_head(*_without("Sec-WebSocket-Key")), 400),
    "two keys": (_head(*BASE, VERSION, f"Sec-WebSocket-Key: {KEY}"), 400),
    "two versions": (_head(*BASE, VERSION, VERSION), 400),
    "version 8": (_head(*BASE, "Sec-WebSocket-Version: 8"), 426),
    "versions 13 and 8 in one header": (_head(*BASE, "Sec-WebSocket-Version: 13, 8"), 426),
    "no version": (_head(*BASE), 426),
    "not an upgrade": (_head("Host: x"), 426),
    "a head over the limit": (_head(*BASE, VERSION, "X-Filler: " + "a" * MAX_REQUEST_BYTES), 400),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_refused(what: str) -> None:
    head, status = REFUSED[what]
    verdict = admit(head, token=None, allowed_origins=None)
    assert isinstance(verdict, Refusal), verdict
    assert verdict.status == status, verdict
    if status == 426:
        # Section 4.4: the answer names the version this hub speaks.
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in verdict.response()


# Request heads as the clients people use send them (keys and agents are examples).
ADMITTED = {
    "Chrome": _head(
        "Host: 127.0.0.1:13254",
        "Connection: Upgrade",
        "Pragma: no-cache",
        "Cache-Control: no-cache",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0",
        "Upgrade: websocket",
        "Origin: http://127.0.0.1:8000",
        "Sec-WebSocket-Version: 13",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-US",
        "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
        request_line="GET /?room=1 HTTP/1.1",
    ),
    "Firefox": _head(
        "Host: 127.0.0.1:13254",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "Accept: */*",
        "Accept-Language: en-US,en;q=0.5",
        "Accept-Encoding: gzip, deflate, br",
        "Sec-WebSocket-Version: 13",
        "Origin: http://127.0.0.1:8000",
        "Sec-WebSocket-Extensions: permessage-deflate",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Connection: keep-alive, Upgrade",
        "Sec-Fetch-Dest: empty",
        "Sec-Fetch-Mode: websocket",
        "Sec-Fetch-Site: same-origin",
        "Pragma: no-cache",
        "Cache-Control: no-cache",
        "Upgrade: websocket",
    ),
    "aiohttp": _head(
        "Host: 127.0.0.1:13254",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: 8F+ASzL3h1Fj1yCwmNJ6Mg==",
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
        "Accept: */*",
        "Accept-Encoding: gzip, deflate",
        "User-Agent: Python/3.11 aiohttp/3.9.5",
    ),
    "websockets 13.1 (what winerp 1.5.0 connects with)": _head(
        "Host: 127.0.0.1:13254",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: Oe0X2oDU5S/p2y3ulK+x5A==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        "User-Agent: Python/3.11 websockets/13.1",
    ),
    "lower-case names, odd spacing": _head(
        "host:127.0.0.1",
        "upgrade:   WebSocket  ",
        "connection:\tupgrade",
        f"sec-websocket-key:{KEY}",
        "sec-websocket-version: 13",
    ),
}


@pytest.mark.parametrize("what", list(ADMITTED))
def test_admitted(what: str) -> None:
    verdict = admit(ADMITTED[what], token=None, allowed_origins={"http://127.0.0.1:8000"})
    assert isinstance(verdict, Admission), verdict


@pytest.mark.parametrize("native", [True, False], ids=["native", "winerp-1.x"])
def test_wsproto_client_handshake_is_admitted(native: bool) -> None:
    request = Request(host="127.0.0.1:13254", target="/", subprotocols=[SUBPROTOCOL] if native else [])
    head = WSConnection(ConnectionType.CLIENT).send(request)
    verdict = admit(head, token=None, allowed_origins=None)
    assert isinstance(verdict, Admission) and verdict.native == native


def _captured_head(**options: object) -> bytes:
    """The request head websocket-client sends with ``options`` (read by a bare socket)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    heads: list[bytes] = []

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            heads.append(head)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5, **options)
    except (websocket.WebSocketException, OSError):
        pass  # the bare socket closes without answering
    thread.join(5)
    listener.close()
    return heads[0]


@pytest.mark.parametrize(
    "options",
    [
        {"subprotocols": [SUBPROTOCOL], "header": {"x-winerp-token": "t"}, "suppress_origin": True},  # our client
        {"suppress_origin": True},  # the winerp 1.x JSON dialect: no subprotocol
    ],
    ids=["winerp-client", "legacy-dialect"],
)
def test_websocket_client_handshake_is_admitted(options: dict[str, object]) -> None:
    head = _captured_head(**options)
    verdict = admit(head, token="t" if "header" in options else None, allowed_origins=None)
    assert isinstance(verdict, Admission), (verdict, head)


# --- the hub's reading of the head ---------------------------------------------------------


def _upgrade(extra: str = "") -> bytes:
    return _head(*BASE, VERSION, *([extra] if extra else []))


def test_head_over_the_limit_in_one_write_is_refused() -> None:
    """A 100 KB head that arrives whole in one read used to skip the limit and get 101."""
    with winerp.Hub(port=0) as hub:
        answer = http_exchange(hub.port, _upgrade("X-Filler: " + "a" * 100_000))
        assert status_line(answer) == "HTTP/1.1 400 Bad Request", answer[:100]
        just_under = _upgrade("X-Filler: " + "a" * (MAX_REQUEST_BYTES - len(_upgrade("X-Filler: ")) - 1))
        assert len(just_under) < MAX_REQUEST_BYTES
        sock = socket.create_connection(("127.0.0.1", hub.port), timeout=5)
        with sock:
            sock.sendall(just_under)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")


def test_unsupported_version_gets_426_naming_version_13() -> None:
    with winerp.Hub(port=0) as hub:
        answer = http_exchange(hub.port, _head(*BASE, "Sec-WebSocket-Version: 8"))
        assert status_line(answer) == "HTTP/1.1 426 Upgrade Required"
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer

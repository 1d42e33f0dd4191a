"""Helpers of the security, hostile-input and fuzz tests: raw sockets and a liveness check.

Everything here talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from typing import Any

import websocket

from winerp.protocol.frames import SUBPROTOCOL
from winerp.sync import Client

_pairs = itertools.count(1)


def assert_serves(port: int, **options: Any) -> float:
    """A fresh pair of clients gets a request answered; return the round trip in seconds."""
    number = next(_pairs)
    server_name, caller_name = f"check-server-{number}", f"check-caller-{number}"
    with Client(server_name, port=port, reconnect=False, **options) as server:
        server.route("echo")(lambda source, x: (source, x))
        with Client(caller_name, port=port, reconnect=False, **options) as caller:
            started = time.perf_counter()
            answer = caller.request("echo", server_name, timeout=10, x=[1, b"2", "3"])
            elapsed = time.perf_counter() - started
            assert answer == [caller_name, [1, b"2", "3"]]
    return elapsed


def raw_ws(port: int, *, native: bool = True, timeout: float = 5, **options: Any) -> websocket.WebSocket:
    """A websocket to the hub speaking nothing yet (no Origin header unless given one)."""
    options.setdefault("suppress_origin", "origin" not in options)
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}/",
        subprotocols=[SUBPROTOCOL] if native else None,
        timeout=timeout,
        skip_utf8_validation=True,
        **options,
    )


def read_until_closed(ws: websocket.WebSocket, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the hub closes the connection; return its close code and reason.

    ``(None, "")`` when the connection ended without a close frame (reset or EOF).
    """
    deadline = time.monotonic() + timeout
    ws.settimeout(timeout)
    try:
        while time.monotonic() < deadline:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) >= 2:
                    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")
                return None, ""
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return None, ""
    except websocket.WebSocketTimeoutException:
        raise AssertionError(f"the hub did not close the connection within {timeout} s") from None
    raise AssertionError(f"the hub did not close the connection within {timeout} s")


def http_exchange(port: int, data: bytes, *, timeout: float = 5.0, shut_write: bool = False) -> bytes:
    """Send ``data`` on a fresh TCP connection; return everything read until the hub closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the hub may refuse before reading everything
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"the hub kept the connection open for {timeout} s") from None
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the hub kept the connection open for {timeout} s")
    return received


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode("latin-1")


def upgrade_request(port: int, **extra: str) -> bytes:
    """A valid websocket upgrade request head; ``extra`` adds or replaces headers (None drops)."""
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": SUBPROTOCOL,
    }
    for key, value in extra.items():
        key = key.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    return f"GET / HTTP/1.1\r\n{lines}\r\n".encode()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One raw client-to-server websocket frame, possibly broken on purpose."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if size < 4096 else _mask_fast(payload, key)
    return head + key + body


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")

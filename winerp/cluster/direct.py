"""The hub loop's own connection to NATS for the messages hubs address to each other.

The bridge (`winerp.cluster.bridge`) runs nats-py on a thread of its own. Every message that
crosses that way costs two hand-offs between threads on each hub (hub loop → NATS loop on the
way out, NATS loop → hub loop on the way in), and each wakes a sleeping thread: on a small
machine that is most of what a cross-hub call costs over a same-hub one.

So the hot path skips it: each hub opens one more, plain TCP connection to the NATS server that
nats-py is connected to, subscribes there to its own subject and the cluster's subject, and
hands the socket to its own loop, which polls it beside the clients' sockets. Publishing is
then an append to a buffer that leaves in one write at the end of the loop's turn, and a
message that arrives is routed in the turn that reads it. nats-py keeps everything else: the
key-value store, the health of the connection (its pings), reconnection.

The protocol spoken here is the small part of NATS's client protocol this needs (``CONNECT``,
``SUB``, ``PUB``, ``MSG``, ``PING``/``PONG``). Where it cannot serve (TLS, credentials other
than those in the URL), the hub keeps the bridge's path (`open_direct` raises `Unsupported`).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from urllib.parse import ParseResult

__all__ = ["Direct", "Unsupported", "open_direct"]

logger = logging.getLogger("winerp.hub.cluster")

_PONG = b"PONG\r\n"
_READ_SIZE = 262_144
#: Bytes waiting to be written beyond which the connection counts as stuck (NATS itself drops a
#: client that reads this slowly long before): at most once, never unbounded memory.
_MAX_BUFFERED = 64 * 1024 * 1024


class Unsupported(Exception):
    """This NATS server or URL needs what the direct connection does not speak (e.g. TLS)."""


def open_direct(url: ParseResult, subjects: list[str], name: str, timeout: float) -> tuple[socket.socket, bytes, int]:
    """Connect to ``url``, subscribe to ``subjects`` (sids 1, 2, ...), and return once NATS confirms.

    Blocks (up to ``timeout`` per step): call it where blocking is fine, never on the hub's loop.

    Returns:
        The socket (now non-blocking), bytes that arrived after the confirmation, and the
        server's largest payload.

    Raises:
        Unsupported: TLS, or authentication the URL does not carry.
        OSError: the server cannot be reached, or refused the connection.
    """
    if url.scheme not in ("nats", "") or not url.hostname:
        raise Unsupported(f"scheme {url.scheme!r}")
    sock = socket.create_connection((url.hostname, url.port or 4222), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _LineReader(sock)
        line = reader.line()
        if not line.startswith(b"INFO "):
            raise OSError(f"NATS said {line[:80]!r} instead of INFO")
        info = json.loads(line[5:])
        commands = [b"CONNECT " + json.dumps(_connect_options(url, info, name)).encode() + b"\r\n"]
        commands += [b"SUB %s %d\r\n" % (subject.encode(), sid) for sid, subject in enumerate(subjects, 1)]
        sock.sendall(b"".join(commands) + b"PING\r\n")
        while True:
            line = reader.line()
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise OSError(f"NATS refused the connection: {line.decode(errors='replace')}")
            if line == b"PING":
                sock.sendall(_PONG)
        sock.setblocking(False)
        return sock, reader.rest, int(info.get("max_payload", 1_048_576))
    except BaseException:
        sock.close()
        raise


def _connect_options(url: ParseResult, info: dict[str, object], name: str) -> dict[str, object]:
    """The CONNECT options for the server that sent ``info``, with the URL's credentials."""
    if info.get("tls_required"):
        raise Unsupported("the server requires TLS")
    connect: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "lang": "python",
        "version": "winerp",
        "protocol": 1,
        "name": name,
        "echo": False,  # this hub never needs its own messages back
    }
    if url.username and url.password is not None:
        connect.update(user=url.username, **{"pass": url.password})
    elif url.username:
        connect["auth_token"] = url.username
    elif info.get("auth_required"):
        raise Unsupported("the server requires credentials the URL does not carry")
    return connect


class _LineReader:
    """Protocol lines of a blocking socket, for the opening exchange only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.rest:
            if len(self.rest) > 65_536:
                raise OSError("NATS sent an overlong protocol line")
            data = self.sock.recv(65_536)
            if not data:
                raise OSError("NATS closed the connection")
            self.rest += data
        line, self.rest = self.rest.split(b"\r\n", 1)
        return line


class ConnectionLost(Exception):
    """The direct connection failed; the message says why."""


class Direct:
    """A connection from `open_direct`, owned by the hub's loop thread (only it may call this).

    Args:
        sock: The connected, non-blocking socket.
        rest: Bytes already read from it.
        max_payload: The server's limit on one message.
        on_message: Called with the payload of each message that arrives.
        watch_writes: Tells the hub's poller to report the socket writable (True) or not.
    """

    def __init__(
        self,
        sock: socket.socket,
        rest: bytes,
        max_payload: int,
        on_message: Callable[[bytes], None],
        watch_writes: Callable[[bool], None],
    ) -> None:
        self.sock = sock
        self.max_payload = max_payload
        self._on_message = on_message
        self._watch_writes = watch_writes
        self._rest = rest
        self._out: list[bytes] = []
        self._blocked = b""  # written in part: the rest waits for the socket to be writable

    def publish(self, subject: str, data: bytes) -> None:
        """Queue ``data`` for ``subject``; it leaves at the next `flush`."""
        if len(data) > self.max_payload:
            # NATS would end the connection over it: dropped (at most once), said loudly.
            logger.warning(
                "dropped a %d-byte message to %s: NATS takes %d at most", len(data), subject, self.max_payload
            )
            return
        self._out.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))

    @property
    def pending(self) -> bool:
        """True when something waits to be written."""
        return bool(self._out)

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it now; never blocks.

        Raises:
            ConnectionLost: the connection failed.
        """
        data = self._blocked + b"".join(self._out)
        self._out.clear()
        if not data:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise ConnectionLost(f"writing to NATS failed: {exc}") from exc
        was_blocked = bool(self._blocked)
        self._blocked = data[sent:]
        if len(self._blocked) > _MAX_BUFFERED:
            raise ConnectionLost("NATS does not read what this hub sends")
        if bool(self._blocked) != was_blocked:
            self._watch_writes(bool(self._blocked))

    def service(self) -> None:
        """Read what arrived and route it, answer NATS's pings, write what waits.

        Raises:
            ConnectionLost: the connection failed or NATS ended it.
        """
        for _ in range(4):  # a bounded share of the turn; the poller reports the rest again
            try:
                data = self.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise ConnectionLost(f"reading from NATS failed: {exc}") from exc
            if not data:
                raise ConnectionLost("NATS closed the connection")
            self._parse(data)
            if len(data) < _READ_SIZE:
                break
        if self._out or self._blocked:
            self.flush()

    def _parse(self, data: bytes) -> None:
        buffer = self._rest + data if self._rest else data
        end = len(buffer)
        position = 0
        while position < end:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            if buffer.startswith(b"MSG ", position):
                # MSG <subject> <sid> [reply-to] <size>
                try:
                    size = int(buffer[buffer.rfind(b" ", position, line_end) + 1 : line_end])
                except ValueError:
                    raise ConnectionLost("NATS sent a malformed message") from None
                start = line_end + 2
                if start + size + 2 > end:
                    break  # the rest of it is still on the way
                position = start + size + 2
                try:
                    self._on_message(buffer[start : start + size])
                except Exception:  # one bad message must not cost the others
                    logger.exception("handling a cluster message failed")
                continue
            if buffer.startswith(b"PING", position):
                self._out.append(_PONG)
            elif buffer.startswith(b"-ERR", position):
                raise ConnectionLost(f"NATS said {buffer[position:line_end].decode(errors='replace')}")
            # PONG, +OK, INFO (a change of the server's cluster): nothing to do.
            position = line_end + 2
        self._rest = buffer[position:]
        if len(self._rest) > self.max_payload + 65_536:
            raise ConnectionLost("NATS sent a malformed message")

    def close(self) -> None:
        """Close the socket (what waits to be written is lost: at most once)."""
        self._out.clear()
        self._blocked = b""
        try:
            self.sock.close()
        except OSError:
            pass

"""Opening a connection to the hub: TCP, TLS and the websocket handshake, by a deadline;
and the pause between attempts (`Backoff`).

websocket-client only opens the connection; from then on `winerp.client.connection` reads
and writes the raw socket itself.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading

import websocket

from .. import errors
from ..protocol.frames import SUBPROTOCOL
from ..wire.handshake import TOKEN_HEADER
from .calls import Deadline

__all__ = ["MIN_STEP", "Backoff", "address", "open_websocket", "shut"]

# Shortest time a step of an opening is given: a last attempt made at a start deadline
# still gets to hear a refusal.
MIN_STEP = 0.05


class Backoff:
    """Exponential backoff with full jitter, for reconnect attempts.

    Args:
        initial: First delay, in seconds.
        maximum: Cap on the delay, in seconds.
        factor: Growth per failed attempt.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 3.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self.attempts = 0


def address(host: str, port: int) -> str:
    """``host:port`` for messages, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, waking any thread blocked on it; never raises.

    The plain socket's method even for a TLS socket: `ssl.SSLSocket.shutdown` also drops
    its TLS state, under the feet of a thread still in the handshake.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """Shuts a connecting socket down when the attempt's deadline passes.

    A socket timeout bounds each read, not the whole opening: a server that answers one
    byte at a time would keep an attempt going for ever. Shutting the socket down from
    this timer's thread wakes the blocked read at once, whatever stage it is in.
    """

    def __init__(self, deadline: Deadline, name: str, sock: socket.socket) -> None:
        self._lock = threading.Lock()
        self._sock = sock
        self._over = False
        self.fired = False
        self._timer = threading.Timer(deadline.remaining(float("inf")), self._fire)
        self._timer.name = name
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Watch ``sock`` from now on (the TLS socket that took over the plain one)."""
        with self._lock:
            self._sock = sock
            if self.fired:
                shut(sock)

    def _fire(self) -> None:
        with self._lock:
            if not self._over:
                self.fired = True
                shut(self._sock)

    def stop(self) -> bool:
        """Stand down; True if the deadline had passed (the socket was shut down)."""
        with self._lock:
            self._over = True
        self._timer.cancel()
        self._timer.join()  # ends at once once cancelled: no thread outlives the attempt
        return self.fired


def open_websocket(
    name: str, host: str, port: int, ssl_context: ssl.SSLContext | None, token: str | None, deadline: Deadline
) -> websocket.WebSocket:
    """Open a websocket to the hub for client ``name``, all over by ``deadline`` (which must be set).

    Raises:
        HubUnreachable: refused, unreachable, or the handshake failed.
        UnauthorizedError: the hub refused the token.
        RequestTimeout: not done by ``deadline``.
        ProtocolError: the server does not speak winerp.
    """
    where = address(host, port)
    remaining = max(MIN_STEP, deadline.remaining(float("inf")))
    try:
        sock = socket.create_connection((host, port), timeout=remaining)
    except socket.timeout:
        raise errors.RequestTimeout(f"no answer from {where} within {remaining:.1f} s") from None
    except OSError as exc:
        raise errors.HubUnreachable(f"cannot connect to {where}: {exc}") from None
    watchdog = _Watchdog(deadline, f"winerp-deadline-{name}", sock)
    try:
        ws = _upgrade(sock, host, port, ssl_context, token, deadline, watchdog)
    finally:
        late = watchdog.stop()
    if late:  # the deadline passed just as the handshake ended
        ws.shutdown()  # type: ignore[no-untyped-call]
        raise errors.RequestTimeout(f"no answer from {where} within {remaining:.1f} s")
    if ws.getsubprotocol() != SUBPROTOCOL:
        ws.close()
        raise errors.ProtocolError(f"the server at {where} does not speak {SUBPROTOCOL}")
    # A blocking socket: with a timeout, Python polls before every send and recv (two
    # system calls more per message). Reads come after select(), and a stuck write is
    # ended by the heartbeat, which shuts the socket down when the hub goes silent.
    ws.settimeout(None)
    return ws


def _upgrade(
    sock: socket.socket,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    token: str | None,
    deadline: Deadline,
    watchdog: _Watchdog,
) -> websocket.WebSocket:
    """TLS (if asked) and the websocket handshake on the connected ``sock``; closes it on failure."""
    scheme = "wss" if ssl_context is not None else "ws"
    header = {TOKEN_HEADER: token} if token else {}
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            watchdog.watch(sock)
            sock.do_handshake()
        return websocket.create_connection(
            f"{scheme}://{address(host, port)}/",
            timeout=max(MIN_STEP, deadline.remaining(float("inf"))),
            socket=sock,
            subprotocols=[SUBPROTOCOL],
            header=header,
            enable_multithread=True,
            skip_utf8_validation=True,
            suppress_origin=True,
        )
    except (OSError, ValueError, websocket.WebSocketException) as exc:
        sock.close()
        raise _opening_error(exc, watchdog.fired, address(host, port)) from None


def _opening_error(exc: BaseException, late: bool, where: str) -> errors.WinerpError:
    """The error a failed opening handshake gives `start`."""
    if late or isinstance(exc, (socket.timeout, websocket.WebSocketTimeoutException)):
        return errors.RequestTimeout(f"no answer from {where} in time (opening handshake)")
    if isinstance(exc, websocket.WebSocketBadStatusException):
        if exc.status_code == 401:
            return errors.UnauthorizedError("the hub refused the token")
        return errors.HubUnreachable(f"the hub refused the handshake: {exc}")
    return errors.HubUnreachable(f"cannot connect to {where}: {exc}")

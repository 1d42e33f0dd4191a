"""The client's side of the protocol, sans-IO: frames out, frames in, the heartbeat.

Rules of this module: no I/O, no threads, no clock. Bytes and time come in as arguments;
frames and bytes go out as return values.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from msgspec import Raw

from .. import errors
from .frames import (
    FRAME_ENCODER,
    HUB,
    AddRoutes,
    ErrorCode,
    Failure,
    Frame,
    Hello,
    Inform,
    Information,
    Ping,
    Pong,
    Request,
    Response,
    Welcome,
    decode_message,
    encode_frame,
    encode_value,
)

__all__ = ["ClientProtocol", "ClientState", "error_from_failure"]

_encode_frame = FRAME_ENCODER.encode
# What a client reads most, and passes on as it is.
_ROUTINE_FROM_HUB = frozenset({Request, Response, Information})


_ERROR_CLASSES: dict[int, type[errors.WinerpError]] = {
    ErrorCode.DESTINATION_NOT_FOUND: errors.DestinationNotFound,
    ErrorCode.ROUTE_NOT_FOUND: errors.RouteNotFound,
    ErrorCode.PEER_DISCONNECTED: errors.PeerDisconnected,
    ErrorCode.PAYLOAD_TOO_LARGE: errors.PayloadTooLarge,
    ErrorCode.NOT_READY: errors.ClientNotReadyError,
}


def error_from_failure(failure: Failure) -> errors.WinerpError:
    """Turn a `Failure` frame into the exception its caller should see."""
    code, message = failure.code, failure.message
    if code == ErrorCode.REMOTE_ERROR:
        return errors.ClientRuntimeError(
            message,
            remote_type=failure.remote_type,
            remote_message=failure.message,
            remote_traceback=failure.traceback,
        )
    return _ERROR_CLASSES.get(code, errors.WinerpError)(message)


class ClientState(enum.Enum):
    """Where a client connection stands."""

    CONNECTING = "connecting"
    REGISTERING = "registering"
    HELD = "held"
    READY = "ready"
    CLOSED = "closed"


class ClientProtocol:
    """One client connection's protocol state: frames out, events in, heartbeat.

    One instance lives for one connection; a reconnect makes a new one. No lock (this
    module does no I/O and knows no threads): the methods split in three groups, and the
    contract of each says which threads may call it.

    - Encoders (`request`, `ping`, `inform`, `respond`, `fail`, `route_not_found`, `pong`,
      `add_routes`): any thread, any number at once. They change no state: they read
      ``name`` (fixed) and ``max_message_size`` (one attribute, replaced whole by a
      Welcome, so an encoder sees the old limit or the new one; the hub enforces its own
      either way), and draw request ids with one ``next()`` on ``ids``, an
      `itertools.count` (one C call, which no other thread interleaves with).
    - The incoming side (`hello`, then `receive`): one caller at a time (the core's reader
      seat). It alone changes ``state``, ``heartbeat`` and ``max_message_size``.
    - The heartbeat (`heard`, `heartbeat_due`): one caller at a time (the connection's own
      thread), possibly while `receive` runs. The one thing they share with it is the time
      the hub last spoke, a float attribute that each replaces whole: read before or after
      a `receive`, it is right either way.

    Args:
        name: The client's name on the hub.
        max_message_size: Largest encoded frame this side sends; a smaller limit announced
            by the hub replaces it, a larger one does not.
        now: The current monotonic time.
        ids: Where request ids come from; a fresh counter from 1 by default. A client that
            reconnects passes one counter to every connection, so that no id is used twice
            in its life (an id of a call the previous connection ended then never names a
            call of the next one).
    """

    def __init__(self, name: str, max_message_size: int, now: float, ids: Iterator[int] | None = None) -> None:
        self.name = name
        self.state = ClientState.CONNECTING
        self.max_message_size = max_message_size
        self.heartbeat = 1.0
        self._ids = ids if ids is not None else itertools.count(1)
        self._last_received = now
        self._last_ping = now

    # outgoing

    def hello(self, routes: Iterable[str]) -> bytes:
        """Return the registration frame; the connection is then registering."""
        self.state = ClientState.REGISTERING
        return encode_frame(Hello(self.name, sorted(routes), batches=True))

    def add_routes(self, routes: Iterable[str]) -> bytes:
        """Return the frame that registers ``routes`` after `hello`."""
        return encode_frame(AddRoutes(sorted(routes)))

    def request(self, destination: str, route: str, args: dict[str, Any]) -> tuple[int, bytes]:
        """Return a new request id and the frame calling ``route`` on ``destination``.

        Raises:
            TypeError: an argument cannot be encoded.
            PayloadTooLarge: the frame exceeds the size limit.
        """
        request_id = next(self._ids)
        frame = _encode_frame(Request(request_id, destination, route, Raw(encode_value(args))))
        if len(frame) > self.max_message_size:
            self._check_size(frame)
        return request_id, frame

    def ping(self, destination: str) -> tuple[int, bytes]:
        """Return a new request id and the frame that pings ``destination`` (`HUB` for the hub)."""
        request_id = next(self._ids)
        return request_id, encode_frame(Ping(request_id, destination))

    def inform(self, data: Any, destinations: list[str]) -> bytes:
        """Return the frame delivering ``data`` to ``destinations`` (everyone else when empty).

        Raises:
            TypeError: the data cannot be encoded.
            PayloadTooLarge: the frame exceeds the size limit.
        """
        frame = encode_frame(Inform(destinations, Raw(encode_value(data))))
        self._check_size(frame)
        return frame

    def respond(self, request: Request, value: Any) -> bytes:
        """Return the frame answering ``request`` with ``value``.

        A value that cannot be encoded, or is too large, becomes a `Failure` that says so,
        so the caller always gets an answer.
        """
        try:
            frame = _encode_frame(Response(request.id, request.peer, Raw(encode_value(value))))
            if len(frame) > self.max_message_size:
                self._check_size(frame)
        except errors.PayloadTooLarge as exc:
            return self._failure(request, ErrorCode.PAYLOAD_TOO_LARGE, str(exc))
        except TypeError as exc:
            return self.fail(request, exc, "")
        return frame

    def fail(self, request: Request, exc: BaseException, traceback: str) -> bytes:
        """Return the frame telling the caller of ``request`` that its handler raised ``exc``."""
        message = str(exc)
        return encode_frame(
            Failure(
                request.id,
                request.peer,
                ErrorCode.REMOTE_ERROR,
                message,
                remote_type=type(exc).__name__,
                traceback=traceback,
            )
        )

    def route_not_found(self, request: Request) -> bytes:
        """Return the frame telling the caller that this client has no such route."""
        return self._failure(request, ErrorCode.ROUTE_NOT_FOUND, f"client {self.name!r} has no route {request.route!r}")

    def pong(self, ping: Ping) -> bytes:
        """Return the answer to a ping from another client."""
        return encode_frame(Pong(ping.id, ping.peer))

    def _failure(self, request: Request, code: ErrorCode, message: str) -> bytes:
        return encode_frame(Failure(request.id, request.peer, code, message))

    def _check_size(self, frame: bytes) -> None:
        if len(frame) > self.max_message_size:
            raise errors.PayloadTooLarge(
                f"message of {len(frame)} bytes exceeds the limit of {self.max_message_size} bytes"
            )

    # incoming

    def receive(self, data: bytes, now: float) -> list[Frame]:
        """Interpret one message from the hub and return its frames (several for a batch).

        `Welcome` updates the state (ready or held) and the limits the hub announced.

        Raises:
            ProtocolError: the message is not a valid frame or batch from a hub.
        """
        self._last_received = now
        frames = decode_message(data)
        for frame in frames:
            if type(frame) not in _ROUTINE_FROM_HUB:
                self._check(frame)
        return frames

    def _check(self, frame: Frame) -> None:
        if isinstance(frame, Welcome):
            self.state = ClientState.HELD if frame.on_hold else ClientState.READY
            self.heartbeat = frame.heartbeat
            # The client's own limit stands unless the hub's is stricter.
            self.max_message_size = min(self.max_message_size, frame.max_message_size)
        elif isinstance(frame, (Hello, AddRoutes, Inform)):
            raise errors.ProtocolError(f"a hub does not send {type(frame).__name__}")

    def heard(self, now: float) -> None:
        """Note that the hub sent something not read yet (so it is alive)."""
        self._last_received = now

    def heartbeat_due(self, now: float) -> bytes | None:
        """Return a heartbeat frame when one is due, else ``None``.

        Raises:
            ConnectionLost: the hub has been silent for more than five heartbeats.
        """
        silence = now - self._last_received
        if silence > 5 * self.heartbeat:
            raise errors.ConnectionLost(f"the hub has been silent for {silence:.1f} s")
        if now - self._last_ping >= self.heartbeat:
            self._last_ping = now
            return encode_frame(Ping(0, HUB))
        return None

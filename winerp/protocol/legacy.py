"""The winerp 1.x wire dialect, translated to and from native frames.

Rules of this module: no I/O, no threads, no clock. `LegacyCodec` turns the JSON text
messages of one winerp 1.x connection into native frames and native frames back into such
messages; the hub holds one per connection that asked for no websocket subprotocol, and the
router never learns which dialect a connection speaks.

A 1.x message is one JSON object with the fields ``id type route data traceback uuid
destination pseudo_object`` (``error`` too, unused). What winerp 1.5.0 sends and expects,
and what each becomes here:

========================  ==============================================  ===================
type                      1.x client to hub                               hub to 1.x client
========================  ==============================================  ===================
0 success                 never sent                                      `Welcome`: ``data="Authorized."``
1 verification            `Hello` (``routes_known=False``)                never sent
2 request                 `Request`; ``id`` is the caller,                a `Request`, with the 1.x swap:
                          ``destination`` the callee                      ``id`` is the callee, ``destination``
                                                                          the caller
3 response                `Response` to a request this codec forwarded    a `Response`
4 error                   `Failure` to a request this codec forwarded     a `Failure`; also ``"Already
                                                                          authorized."`` for `Welcome` on hold
5 ping                    `Ping` (``destination`` None: the hub)          `Pong` / a failed ping:
                                                                          ``data={"success": bool}``
6 information             `Inform`; ``route`` lists the destinations,     `Information`; ``id`` is the source
                          empty for everyone
7 function_call           see below                                       see below (the liveness probe)
========================  ==============================================  ===================

A 1.x client cannot answer a ping, so a `Ping` forwarded to one (another client's ``ping``)
goes out as a ``function_call`` for an object nobody registered: winerp 1.5.0 answers that,
from its message loop, with an ``error`` carrying the same uuid, which comes back here as the
`Pong` (so the ping also proves the client still reads). A 1.x client that answered a request
for a route it does not have has stopped reading for good (see `LegacyCodec._mark_deaf`):
requests and pings for it then fail at once with `ErrorCode.PEER_DISCONNECTED`.

1.x "winerpObject" pseudo objects (``pseudo_object`` responses and the ``function_call``
messages that call their methods) have no native equivalent: a caller that gets one
receives a clear error instead.

The 1.x client compares uuids only to match its own requests, so this codec keeps a map
from the uuids of a 1.x caller to native request ids (and from the uuids it makes up for
requests to a 1.x client back to the native caller). Values are JSON on this side and
msgpack (`frames.encode_value`) on the native side; a native value that JSON or a 1.x client
cannot carry (bytes, an integer beyond 64 bits, a non-string key, ...) raises
`Undeliverable` from `LegacyCodec.encode`, naming the offending part, so the router can
answer the native sender instead of letting it time out.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Final, Literal

import msgspec
from msgspec import Raw

from .. import errors
from .codec import Message, Undeliverable
from .frames import (
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
    Presence,
    Request,
    Response,
    Welcome,
    decode_value,
    encode_value,
)

__all__ = [
    "ERROR",
    "FUNCTION_CALL",
    "INFORMATION",
    "LEGACY_MAX_MESSAGE_SIZE",
    "PING",
    "REQUEST",
    "RESPONSE",
    "SUCCESS",
    "VERIFICATION",
    "LegacyCodec",
]

# 1.x message types (winerp.lib.payload.Payloads).
SUCCESS: Final = 0
VERIFICATION: Final = 1
REQUEST: Final = 2
RESPONSE: Final = 3
ERROR: Final = 4
PING: Final = 5
INFORMATION: Final = 6
FUNCTION_CALL: Final = 7

#: The largest message a winerp 1.5.0 client accepts (its ``max_data_size`` of 2 MiB); a
#: larger one would make its websocket library close the connection.
LEGACY_MAX_MESSAGE_SIZE: Final = 2 * 1024 * 1024

#: Nesting a 1.x client can parse (its orjson stops at 1024 levels, the message included).
_MAX_DEPTH: Final = 500
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1

# Texts a 1.x client knows from the 1.x server; callers may compare against them.
_AUTHORIZED: Final = "Authorized."
_ALREADY_AUTHORIZED: Final = "Already authorized."
_ROUTE_NOT_FOUND: Final = "Route not found"
_FAILURE_TEXTS: Final[dict[int, str]] = {
    ErrorCode.DESTINATION_NOT_FOUND: "Destination not found.",
    ErrorCode.ROUTE_NOT_FOUND: _ROUTE_NOT_FOUND,
    ErrorCode.NOT_READY: "Not authorized.",
}

#: The hub route a 1.x ``function_call`` is sent to: none exists, so the hub answers it.
_FUNCTION_CALL_ROUTE: Final = "winerp.legacy.function_call"
_PSEUDO_OBJECTS_UNSUPPORTED: Final = (
    "winerpObject pseudo objects (object transfer) are not supported by this hub; return plain values"
)
# What a 1.x client's function_call handler looks up; no 1.x object ever has this uuid.
_PROBE_DATA: Final = {"__uuid__": "winerp.ping", "__func__": "ping", "__args__": [], "__kwargs__": {}}

# The last line of a formatted traceback: "pkg.mod.ErrorClass: message" or "ErrorClass".
_EXCEPTION_LINE: Final = re.compile(r"([A-Za-z_][\w.]*)(?::\s|$)")


class _LegacyMessage(msgspec.Struct):
    """One 1.x message as received; every field but ``type`` is optional."""

    type: int
    id: Any = None
    destination: Any = None
    route: Any = None
    uuid: Any = None
    data: Any = None
    error: Any = None
    traceback: Any = None
    pseudo_object: Any = None


_decoder: Final = msgspec.json.Decoder(_LegacyMessage)
_encoder: Final = msgspec.json.Encoder()


@dataclasses.dataclass
class _Call:
    """A request or ping a 1.x client made, in flight under a native id."""

    kind: Literal["request", "ping", "function_call"]
    uuid: Any
    route: Any
    peer: str


@dataclasses.dataclass
class _Served:
    """A request or ping forwarded to the 1.x client, in flight under a made-up uuid."""

    kind: Literal["request", "ping"]
    id: int
    peer: str
    route: str


class LegacyCodec:
    """Translates one winerp 1.x connection (JSON text messages) to native frames and back.

    One instance per connection; it keeps the request-id maps of that connection. Not
    thread-safe: the hub calls it under its router lock.

    Args:
        max_message_size: The largest message the 1.x client accepts; a larger answer
            becomes an error for its caller instead of a dropped connection.
    """

    def __init__(self, max_message_size: int = LEGACY_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        #: The name the client verified with ("" until then).
        self.name = ""
        #: True once the client stopped reading messages (see `_mark_deaf`).
        self.deaf = False
        self._hello_uuid: Any = None
        self._ids = itertools.count(1)
        self._uuids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._served: dict[str, _Served] = {}

    # --- wire -> native ------------------------------------------------------------------

    def decode(self, message: Message) -> list[Frame]:
        """Return the native frames one 1.x message carries (none for those that need none).

        Raises:
            ProtocolError: the message is not a 1.x message.
        """
        try:
            msg = _decoder.decode(message)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise errors.ProtocolError(f"not a winerp 1.x message: {exc}") from None
        kind = msg.type
        if kind == REQUEST:
            return self._decode_request(msg)
        if kind in (RESPONSE, ERROR):
            return self._decode_answer(msg)
        if kind == INFORMATION:
            return [Inform(_destinations(msg.route), self._value(msg.data))]
        if kind == PING:
            return [self._decode_ping(msg)]
        if kind == VERIFICATION:
            return self._decode_verification(msg)
        if kind == FUNCTION_CALL:
            request_id = next(self._ids)
            self._calls[request_id] = _Call("function_call", msg.uuid, None, _str(msg.destination))
            return [Request(request_id, HUB, _FUNCTION_CALL_ROUTE, Raw(encode_value({})))]
        # success, and types later 1.x versions may add: the 1.x server ignored them too.
        return []

    def _decode_verification(self, msg: _LegacyMessage) -> list[Frame]:
        if self.name:
            return []  # a 1.x client verifies once per connection; ignore a repeat
        if not isinstance(msg.id, str) or not msg.id:
            raise errors.ProtocolError("winerp 1.x verification without a client name (id)")
        self.name = msg.id
        self._hello_uuid = msg.uuid
        return [Hello(msg.id, [], routes_known=False)]

    def _decode_request(self, msg: _LegacyMessage) -> list[Frame]:
        if not isinstance(msg.destination, str) or not isinstance(msg.route, str):
            raise errors.ProtocolError("winerp 1.x request without a destination or route")
        args = {} if msg.data is None else msg.data
        if not isinstance(args, dict):
            raise errors.ProtocolError("winerp 1.x request whose data is not an object")
        request_id = next(self._ids)
        self._calls[request_id] = _Call("request", msg.uuid, msg.route, msg.destination)
        return [Request(request_id, msg.destination, msg.route, self._value(args))]

    def _decode_ping(self, msg: _LegacyMessage) -> Ping:
        destination = msg.destination
        if destination is not None and not isinstance(destination, str):
            raise errors.ProtocolError("winerp 1.x ping whose destination is not a name")
        request_id = next(self._ids)
        peer = destination or HUB
        self._calls[request_id] = _Call("ping", msg.uuid, None, peer)
        return Ping(request_id, peer)

    def _decode_answer(self, msg: _LegacyMessage) -> list[Frame]:
        served = self._served.pop(msg.uuid, None) if isinstance(msg.uuid, str) else None
        if served is None:
            # Not an answer to anything this codec forwarded (1.x "Route not found" errors
            # are addressed to the answerer itself, for one): nothing to route.
            return []
        if served.kind == "ping":
            return [Pong(served.id, served.peer)]
        if msg.type == RESPONSE and not msg.pseudo_object:
            return [Response(served.id, served.peer, self._value(msg.data))]
        if msg.type == RESPONSE:
            return [
                Failure(
                    served.id,
                    served.peer,
                    ErrorCode.REMOTE_ERROR,
                    f"{self.name!r} answered {served.route!r} with a winerpObject: {_PSEUDO_OBJECTS_UNSUPPORTED}",
                    remote_type="winerpObject",
                )
            ]
        text = _text(msg.data)
        traceback = _text(msg.traceback)
        if text == _ROUTE_NOT_FOUND and traceback == _ROUTE_NOT_FOUND:
            self._mark_deaf()
            return [
                Failure(
                    served.id,
                    served.peer,
                    ErrorCode.ROUTE_NOT_FOUND,
                    f"client {self.name!r} has no route {served.route!r}",
                )
            ]
        return [
            Failure(
                served.id,
                served.peer,
                ErrorCode.REMOTE_ERROR,
                text,
                remote_type=_exception_type(traceback),
                traceback="" if traceback == text else traceback,
            )
        ]

    def _mark_deaf(self) -> None:
        """Note that the client stopped reading.

        Every winerp 1.x client, after answering a request for a route it does not have,
        leaves its message loop (a ``return`` where a ``continue`` was meant): it keeps its
        connection but never reads again. What is sent to it from then on would wait
        forever, so callers get an error at once instead.
        """
        self.deaf = True

    def _value(self, value: Any) -> Raw:
        try:
            return Raw(encode_value(value))
        except TypeError as exc:  # pragma: no cover - JSON values always encode
            raise errors.ProtocolError(f"winerp 1.x value cannot be encoded: {exc}") from None

    # --- native -> wire ------------------------------------------------------------------

    def encode(self, frame: Frame) -> list[Message]:
        """Return the 1.x messages that carry ``frame`` (none for frames 1.x has no use for).

        Raises:
            Undeliverable: the frame carries a value JSON or a 1.x client cannot carry, is
                too large for a 1.x client, or the client stopped reading.
        """
        if isinstance(frame, Response):
            return self._encode_response(frame)
        if isinstance(frame, Request):
            return self._encode_request(frame)
        if isinstance(frame, Failure):
            return self._encode_failure(frame)
        if isinstance(frame, Information):
            self._check_listening(frame)
            data = self._json_value(frame.data, "the information", ErrorCode.BAD_REQUEST)
            return [
                self._message(
                    INFORMATION,
                    id=frame.source,
                    route=[self.name],
                    data=data,
                    destination=self.name,
                )
            ]
        if isinstance(frame, Pong):
            call = self._calls.pop(frame.id, None)
            if call is None:
                return []
            return [
                self._message(PING, id=self.name, data={"success": True}, uuid=call.uuid, destination=call.peer or None)
            ]
        if isinstance(frame, Ping):
            return self._encode_ping(frame)
        if isinstance(frame, Welcome):
            if frame.on_hold:
                self._hello_uuid = None  # the promotion, later, is a bare success message
                return [self._message(ERROR, id=frame.name, data=_ALREADY_AUTHORIZED, traceback=_ALREADY_AUTHORIZED)]
            uuid, self._hello_uuid = self._hello_uuid, None
            if uuid is None:
                # A promotion: the 1.x server sent a bare success message.
                return [self._message(SUCCESS, data=_AUTHORIZED)]
            return [self._message(SUCCESS, id=frame.name, data=_AUTHORIZED, uuid=uuid)]
        if isinstance(frame, (Presence, Hello, AddRoutes, Inform)):
            return []  # no 1.x equivalent (Presence), or never sent to a client
        raise TypeError(f"not a frame: {frame!r}")  # pragma: no cover

    def _encode_request(self, frame: Request) -> list[Message]:
        self._check_listening(frame)
        args = self._json_value(frame.args, "the arguments", ErrorCode.BAD_REQUEST)
        if not isinstance(args, dict):
            raise Undeliverable(ErrorCode.BAD_REQUEST, "request arguments must be a dict")
        uuid = f"winerp-{next(self._uuids)}"
        message = self._message(REQUEST, id=self.name, destination=frame.peer, route=frame.route, data=args, uuid=uuid)
        self._check_size(message, ErrorCode.PAYLOAD_TOO_LARGE, "the request")
        self._served[uuid] = _Served("request", frame.id, frame.peer, frame.route)
        return [message]

    def _encode_ping(self, frame: Ping) -> list[Message]:
        # A 1.x client cannot answer a ping; the probe makes its message loop answer.
        self._check_listening(frame)
        uuid = f"winerp-{next(self._uuids)}"
        self._served[uuid] = _Served("ping", frame.id, frame.peer, "")
        return [self._message(FUNCTION_CALL, id=frame.peer or None, destination=self.name, data=_PROBE_DATA, uuid=uuid)]

    def _encode_response(self, frame: Response) -> list[Message]:
        call = self._calls.get(frame.id)
        if call is None:
            return []
        what = f"the answer of {frame.peer!r}"
        data = self._json_value(frame.result, what, ErrorCode.REMOTE_ERROR)
        message = self._message(
            RESPONSE, id=frame.peer, destination=self.name, route=call.route, data=data, uuid=call.uuid
        )
        # Raising keeps the call: the router then sends us the Failure that explains it.
        self._check_size(message, ErrorCode.PAYLOAD_TOO_LARGE, what)
        del self._calls[frame.id]
        return [message]

    def _encode_failure(self, frame: Failure) -> list[Message]:
        call = self._calls.pop(frame.id, None)
        if call is None:
            return []  # e.g. the hub's notice that an inform missed a destination
        if call.kind == "ping":
            return [
                self._message(
                    PING, id=self.name, data={"success": False}, uuid=call.uuid, destination=call.peer or None
                )
            ]
        if call.kind == "function_call":
            text = _PSEUDO_OBJECTS_UNSUPPORTED
        else:
            text = _FAILURE_TEXTS.get(frame.code) or frame.message
        return [
            self._message(
                ERROR,
                id=frame.peer or None,
                destination=self.name,
                route=call.route,
                data=text,
                traceback=frame.traceback or text,
                uuid=call.uuid,
            )
        ]

    def _check_listening(self, frame: Frame) -> None:
        if self.deaf:
            raise Undeliverable(
                ErrorCode.PEER_DISCONNECTED,
                f"the winerp 1.x client {self.name!r} stopped reading messages after a request for a "
                "route it does not have (a winerp 1.x bug); restart it",
            )

    def _json_value(self, raw: Raw, what: str, code: ErrorCode) -> Any:
        try:
            value = decode_value(raw)
        except errors.ProtocolError as exc:
            raise Undeliverable(ErrorCode.BAD_REQUEST, str(exc)) from None
        problem = _json_problem(value)
        if problem is not None:
            raise Undeliverable(
                code, f"{what} cannot be sent to winerp 1.x client {self.name!r}: {problem} (1.x speaks JSON)"
            )
        return value

    def _check_size(self, message: str, code: ErrorCode, what: str) -> None:
        size = len(message.encode())
        if size > self.max_message_size:
            raise Undeliverable(
                code,
                f"{what} is {size} bytes as JSON; the winerp 1.x client {self.name!r} "
                f"accepts at most {self.max_message_size}",
            )

    def _message(
        self,
        kind: int,
        *,
        id: Any = None,
        route: Any = None,
        data: Any = None,
        traceback: Any = None,
        uuid: Any = None,
        destination: Any = None,
    ) -> str:
        # The fields, in the order, the 1.x server sent (MessagePayload.to_dict).
        return _encoder.encode(
            {
                "id": id,
                "type": kind,
                "route": route,
                "data": data,
                "traceback": traceback,
                "uuid": uuid,
                "destination": destination,
                "pseudo_object": None,
            }
        ).decode()


def _destinations(route: Any) -> list[str]:
    """The names a 1.x inform goes to; empty (everyone else) for ``[]``, ``None``, ``[None]``."""
    if isinstance(route, str):
        return [route]
    if isinstance(route, list):
        # ``inform(data, None)`` sends ``[None]``: no name, so everyone, as in winerp 2.
        return [name for name in route if isinstance(name, str)]
    return []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _exception_type(traceback: str) -> str:
    """The exception class name on the last line of a formatted traceback, or ""."""
    lines = traceback.strip().splitlines()
    if not lines:
        return ""
    match = _EXCEPTION_LINE.match(lines[-1])
    return match.group(1).rsplit(".", 1)[-1] if match else ""


def _json_problem(value: Any) -> str | None:
    """Describe the first part of ``value`` a 1.x client cannot receive, or return None.

    A 1.x client parses with orjson: it takes JSON objects with string keys, arrays,
    strings, booleans, null, floats and integers of 64 bits at most (a larger integer
    would silently become a float there). NaN and infinities go as ``null``, as 1.x
    itself sent them.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if item is None or isinstance(item, (bool, str, float)):
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _UINT_MAX:
                return f"the integer at {_path(path)} does not fit in 64 bits"
            continue
        if len(path) >= _MAX_DEPTH:
            return f"the value is nested more than {_MAX_DEPTH} levels deep"
        if isinstance(item, (list, tuple)):
            stack.extend((element, (*path, index)) for index, element in enumerate(item))
        elif isinstance(item, dict):
            for key, element in item.items():
                if not isinstance(key, str):
                    return f"the key {key!r} at {_path(path)} is not a string"
                stack.append((element, (*path, key)))
        else:
            return f"{type(item).__name__} at {_path(path)} has no JSON form"
    return None


def _path(path: tuple[Any, ...]) -> str:
    return "the top level" if not path else "".join(f"[{step!r}]" for step in path)

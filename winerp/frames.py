"""Wire frames of the native dialect, and the codecs for frames and user values.

Rules of this module: no I/O, no threads, no clock. It owns the shape of every message
that crosses a native winerp connection and the two encodings involved:

* **frames** are msgspec ``Struct`` s in a tagged union, encoded as compact msgpack arrays
  ``[tag, field, ...]``. New fields go last, with defaults, so an older peer still decodes.
* **user values** (request arguments, return values, inform data) are msgpack too, but
  encoded on their own and carried inside a frame as ``msgspec.Raw``: the hub routes on
  the frame's header and forwards the payload bytes without ever decoding them.

Integers beyond 64 bits, which msgpack cannot carry, travel as an extension type.
"""

from __future__ import annotations

import enum
from typing import Any, Final, Union

import msgspec
from msgspec import Raw, Struct

__all__ = [
    "SUBPROTOCOL",
    "PROTOCOL_VERSION",
    "HUB",
    "ErrorCode",
    "Hello",
    "Welcome",
    "AddRoutes",
    "Request",
    "Response",
    "Failure",
    "Inform",
    "Information",
    "Ping",
    "Pong",
    "Presence",
    "Frame",
    "encode_frame",
    "decode_frame",
    "encode_value",
    "decode_value",
    "EMPTY_ARGS",
    "FRAME_ENCODER",
    "FRAME_DECODER",
]

PROTOCOL_VERSION: Final = 1
#: Websocket subprotocol of the native dialect; a connection that asks for none speaks 1.x JSON.
SUBPROTOCOL: Final = f"winerp.v{PROTOCOL_VERSION}"
#: The peer name that addresses the hub itself (its built-in routes and ping).
HUB: Final = ""


class ErrorCode(enum.IntEnum):
    """Why a request failed, as carried by `Failure`."""

    DESTINATION_NOT_FOUND = 1
    ROUTE_NOT_FOUND = 2
    REMOTE_ERROR = 3
    PEER_DISCONNECTED = 4
    PAYLOAD_TOO_LARGE = 5
    NOT_READY = 6
    BAD_REQUEST = 7
    TOO_MANY_PENDING = 8


class _Frame(Struct, array_like=True, tag=True):
    """Common base: array-encoded, tagged with a small integer."""


class Hello(_Frame, tag=1):
    """Client → hub, first frame: register ``name`` with its ``routes``."""

    name: str
    routes: list[str]
    version: int = PROTOCOL_VERSION
    #: False for clients that do not declare their routes (winerp 1.x): the hub then forwards
    #: every route to them and lets them answer.
    routes_known: bool = True


class Welcome(_Frame, tag=2):
    """Hub → client: the name is registered. Sent again, with ``on_hold=False``, on promotion."""

    name: str
    on_hold: bool
    heartbeat: float
    max_message_size: int
    peers: list[str] = []


class AddRoutes(_Frame, tag=3):
    """Client → hub: routes registered after `Hello`."""

    routes: list[str]


class Request(_Frame, tag=4):
    """Call ``route`` with ``args`` (an encoded ``dict``).

    ``peer`` is the destination on the way to the hub and the caller on the way out of it;
    ``id`` is the caller's own request number, unique among its requests in flight.
    """

    id: int
    peer: str
    route: str
    args: Raw


class Response(_Frame, tag=5):
    """The answer to `Request` ``id``; ``peer`` as in `Request`, seen from the answering side."""

    id: int
    peer: str
    result: Raw


class Failure(_Frame, tag=6):
    """The request ``id`` failed; ``code`` says why."""

    id: int
    peer: str
    code: int
    message: str
    remote_type: str = ""
    traceback: str = ""


class Inform(_Frame, tag=7):
    """Client → hub: deliver ``data`` to ``peers``, or to every other client when empty."""

    peers: list[str]
    data: Raw


class Information(_Frame, tag=8):
    """Hub → client: ``data`` sent by ``source`` with `Inform`."""

    source: str
    data: Raw


class Ping(_Frame, tag=9):
    """Round trip to ``peer`` (`HUB` for the hub itself); also the heartbeat."""

    id: int
    peer: str


class Pong(_Frame, tag=10):
    """The answer to `Ping` ``id``."""

    id: int
    peer: str


class Presence(_Frame, tag=11):
    """Hub → client: ``name`` became ready (``joined``) or left."""

    name: str
    joined: bool


Frame = Union[Hello, Welcome, AddRoutes, Request, Response, Failure, Inform, Information, Ping, Pong, Presence]

_frame_encoder: Final = msgspec.msgpack.Encoder()
_frame_decoder: Final = msgspec.msgpack.Decoder(Frame)
#: The bare msgspec codec of frames, for per-message paths that call it without a wrapper;
#: the decoder raises msgspec's own errors (`decode_frame` turns them into ProtocolError).
FRAME_ENCODER: Final = _frame_encoder
FRAME_DECODER: Final = _frame_decoder


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame to msgpack bytes."""
    return _frame_encoder.encode(frame)


def decode_frame(data: bytes) -> Frame:
    """Decode msgpack bytes into a frame.

    Raises:
        ProtocolError: the bytes are not a valid frame.
    """
    try:
        return _frame_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        from .errors import ProtocolError

        raise ProtocolError(f"undecodable frame: {exc}") from None


# --- user values ---------------------------------------------------------------------------

_BIG_INT_EXT: Final = 1
_value_encoder: Final = msgspec.msgpack.Encoder()


def _decode_ext(code: int, data: memoryview) -> Any:
    if code == _BIG_INT_EXT:
        return int(bytes(data).decode("ascii"))
    raise ValueError(f"unknown msgpack extension type {code}")


_value_decoder: Final = msgspec.msgpack.Decoder(ext_hook=_decode_ext)

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


def _widen(obj: Any) -> Any:
    """Return ``obj`` with every integer msgpack cannot hold replaced by an extension."""
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if _INT64_MIN <= obj <= _UINT64_MAX:
            return obj
        return msgspec.msgpack.Ext(_BIG_INT_EXT, str(obj).encode("ascii"))
    if isinstance(obj, (list, tuple)):
        return [_widen(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _widen(value) for key, value in obj.items()}
    return obj


def encode_value(value: Any) -> bytes:
    """Encode a user value (arguments, a return value, inform data) to msgpack.

    Raises:
        TypeError: the value, or something inside it, cannot be encoded.
    """
    try:
        return _value_encoder.encode(value)
    except OverflowError:
        # Rare: only values holding an int beyond 64 bits pay for the second walk.
        return _value_encoder.encode(_widen(value))
    except RecursionError:
        raise TypeError("value is nested too deeply to encode") from None


def decode_value(data: bytes | Raw) -> Any:
    """Decode a user value encoded by `encode_value`.

    Raises:
        ProtocolError: the bytes are not a valid value.
    """
    try:
        return _value_decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        from .errors import ProtocolError

        raise ProtocolError(f"undecodable value: {exc}") from None


#: The encoded empty ``dict``: the arguments of a request that passes none.
EMPTY_ARGS: Final = Raw(encode_value({}))

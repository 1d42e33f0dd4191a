"""Wire frames of the native dialect, and the codecs for frames and user values.

Rules of this module: no I/O, no threads, no clock. It owns the shape of every message
that crosses a native winerp connection and the two encodings involved:

* **frames** are msgspec ``Struct`` s in a tagged union, encoded as compact msgpack arrays
  ``[tag, field, ...]``. New fields go last, with defaults, so an older peer still decodes.
* **messages**: a binary websocket message carries one frame, or a *batch*, a msgpack array
  of frames ``[[tag, ...], [tag, ...], ...]`` handled in order. A side sends batches only to
  a peer that said it reads them (``Hello.batches``, ``Welcome.batches``): many small frames
  then cost one websocket frame, one masking and one decoding between them.
* **user values** (request arguments, return values, inform data) are msgpack too, but
  encoded on their own and carried inside a frame as ``msgspec.Raw``: the hub routes on
  the frame's header and forwards the payload bytes without ever decoding them.

Values arrive as they were sent (API.md, "Values"): what msgpack has no type for (an
integer beyond 64 bits, a datetime, a date, a time, a timedelta, a UUID, a Decimal, a set, a
frozenset) travels as a msgpack extension type; anything else is refused before it is sent.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import re
import struct
import uuid
from typing import Any, Callable, Final, Union

import msgspec
from msgspec import Raw, Struct

from ..wire.handshake import PROTOCOL_VERSION, SUBPROTOCOL

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
    "decode_message",
    "batch_header",
    "BATCH_BYTES",
    "encode_value",
    "decode_value",
    "EMPTY_ARGS",
    "FRAME_ENCODER",
    "FRAME_DECODER",
    "MAX_NAME_LENGTH",
    "name_problem",
]

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
    #: The client reads batched messages (see the module docstring).
    batches: bool = False


class Welcome(_Frame, tag=2):
    """Hub → client: the name is registered. Sent again, with ``on_hold=False``, on promotion."""

    name: str
    on_hold: bool
    heartbeat: float
    max_message_size: int
    peers: list[str] = []
    #: The hub reads batched messages (see the module docstring).
    batches: bool = False


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


_U16: Final = struct.Struct(">H")

#: The most bytes of frames one batch carries: enough that a burst of small messages costs a
#: few writes, little enough that no batch comes near a limit a peer may set.
BATCH_BYTES: Final = 64 * 1024

_batch_decoder: Final = msgspec.msgpack.Decoder(list[Frame])


def batch_header(count: int) -> bytes:
    """What comes before ``count`` encoded frames (2 to 65535) to make them one batch."""
    return bytes((0x90 | count,)) if count < 16 else b"\xdc" + _U16.pack(count)


def decode_message(data: bytes) -> list[Frame]:
    """Decode one binary message into its frames: one frame, or each frame of a batch.

    A frame is an array of at most 15 items whose first is its tag, a small integer; a
    batch is an array whose first item is an array (a frame).

    Raises:
        ProtocolError: the bytes are neither a valid frame nor a valid batch.
    """
    try:
        if len(data) > 1 and (data[1] >= 0x80 or data[0] == 0xDC):
            frames: list[Frame] = _batch_decoder.decode(data)
            return frames
        return [_frame_decoder.decode(data)]
    except (msgspec.DecodeError, RecursionError) as exc:
        from ..errors import ProtocolError

        raise ProtocolError(f"undecodable message: {exc}") from None


def decode_frame(data: bytes) -> Frame:
    """Decode msgpack bytes into a frame.

    Raises:
        ProtocolError: the bytes are not a valid frame.
    """
    try:
        return _frame_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        from ..errors import ProtocolError

        raise ProtocolError(f"undecodable frame: {exc}") from None


# --- client names ------------------------------------------------------------------------

MAX_NAME_LENGTH: Final = 128
_NAME_PATTERN: Final = re.compile(rf"[^\x00-\x1f\x7f]{{1,{MAX_NAME_LENGTH}}}")


def name_problem(name: object) -> str | None:
    """Say why ``name`` cannot be a client name, or return None if it can."""
    if isinstance(name, str) and _NAME_PATTERN.fullmatch(name):
        return None
    return f"a client name is 1 to {MAX_NAME_LENGTH} characters with no control characters, not {name!r:.60}"


# --- user values ---------------------------------------------------------------------------
#
# What a value may be, and how it arrives, is API.md's "Values" table. msgspec encodes the
# plain part of it (None, bool, int, float, str, bytes, list, tuple, dict) natively and
# decodes it back unchanged. The other allowed types travel as msgpack extensions: msgspec
# itself would turn a datetime, a date, a time, a timedelta, a UUID or a Decimal into a
# string and a set into an array, and its enc_hook only sees types it does not know, so
# these are converted to `msgspec.msgpack.Ext` before msgspec sees them. msgspec would also
# encode what the table refuses (a dataclass, an Enum, a Struct, a bytearray, a float dict
# key ...): the same walk refuses it with a TypeError, before anything is sent.
#
# Extension payloads (all integers big-endian):
#   1 int beyond 64 bits  decimal ASCII digits
#   2 datetime            >HBBBBBIB year month day hour minute second microsecond fold,
#                         then >q the UTC offset in microseconds when aware
#   3 date                >HBB year month day
#   4 time                >BBBIB hour minute second microsecond fold, then >q as for datetime
#   5 timedelta           >iII days seconds microseconds
#   6 UUID                its 16 bytes
#   7 Decimal             str(value) in ASCII (exact: NaN, sNaN, infinities, -0, exponents)
#   8 set, 9 frozenset    an encoded array of the items (a tuple item arrives as a tuple)

_BIG_INT_EXT: Final = 1
_DATETIME_EXT: Final = 2
_DATE_EXT: Final = 3
_TIME_EXT: Final = 4
_TIMEDELTA_EXT: Final = 5
_UUID_EXT: Final = 6
_DECIMAL_EXT: Final = 7
_SET_EXT: Final = 8
_FROZENSET_EXT: Final = 9

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1
_MICROSECOND: Final = datetime.timedelta(microseconds=1)

_DATETIME: Final = struct.Struct(">HBBBBBIB")
_DATE: Final = struct.Struct(">HBB")
_TIME: Final = struct.Struct(">BBBIB")
_OFFSET: Final = struct.Struct(">q")
_TIMEDELTA: Final = struct.Struct(">iII")

#: Types msgspec encodes exactly as the receiver must see them.
_PLAIN_SCALARS: Final = frozenset({str, int, float, bool, type(None), bytes})
_PLAIN_KEYS: Final = frozenset({str, int})
_PLAIN_CONTAINERS: Final = frozenset({list, tuple, dict})
#: From this size on, a container's item types are first checked in bulk (in C).
_BULK: Final = 16

_ALLOWED: Final = (
    "None, bool, int, float, str, bytes, list, tuple, dict (str or int keys), datetime, date, time, "
    "timedelta, UUID, Decimal, set and frozenset"
)


def _is_plain(value: Any) -> bool:
    """Whether ``value`` holds only plain types (and only str or int keys).

    Such a value goes to msgspec as it is. It runs for every value sent, so it is flat and
    checks large containers' item types in bulk first.
    """
    kind = type(value)
    if kind is dict:
        if len(value) >= _BULK:
            if not _PLAIN_KEYS.issuperset(map(type, value)):
                return False
            if _PLAIN_SCALARS.issuperset(map(type, value.values())):
                return True
        for key, item in value.items():
            if type(key) not in _PLAIN_KEYS:
                return False
            kind = type(item)
            if kind not in _PLAIN_SCALARS and (kind not in _PLAIN_CONTAINERS or not _is_plain(item)):
                return False
        return True
    if kind is list or kind is tuple:
        if len(value) >= _BULK and _PLAIN_SCALARS.issuperset(map(type, value)):
            return True
        for item in value:
            kind = type(item)
            if kind not in _PLAIN_SCALARS and (kind not in _PLAIN_CONTAINERS or not _is_plain(item)):
                return False
        return True
    return kind in _PLAIN_SCALARS


class _Unsendable(Exception):
    """Internal: ``value`` (or a dict key, ``key=True``) cannot be sent; ``path`` leads to it."""

    def __init__(self, value: Any, key: bool = False) -> None:
        super().__init__()
        self.value = value
        self.key = key
        self.path: list[Any] = []

    def error(self) -> TypeError:
        kind = type(self.value)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        where = "the top level" if not self.path else "".join(f"[{step!r}]" for step in reversed(self.path))
        what = f"a dict key of type {name}" if self.key else f"a value of type {name}"
        hint = " (convert it with bytes())" if kind in (bytearray, memoryview) else ""
        return TypeError(f"cannot send {what} at {where}{hint}: winerp sends {_ALLOWED}")


class _WideKey:
    """A dict key beyond 64 bits: `msgspec.msgpack.Ext` is not hashable, so the encoder's
    enc_hook turns this placeholder into the extension."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def _enc_hook(obj: Any) -> Any:
    if type(obj) is _WideKey:
        return _wide_int(obj.value)
    raise _Unsendable(obj)  # pragma: no cover - the walk lets nothing else through


def _wide_int(value: int) -> Any:
    return msgspec.msgpack.Ext(_BIG_INT_EXT, str(value).encode("ascii"))


def _int(value: int) -> Any:
    return value if _INT64_MIN <= value <= _UINT64_MAX else _wide_int(value)


def _offset(tz: datetime.timedelta | None) -> bytes:
    return b"" if tz is None else _OFFSET.pack(tz // _MICROSECOND)


def _datetime(value: datetime.datetime) -> Any:
    fields = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    data = _DATETIME.pack(*fields, value.microsecond, value.fold) + _offset(value.utcoffset())
    return msgspec.msgpack.Ext(_DATETIME_EXT, data)


def _date(value: datetime.date) -> Any:
    return msgspec.msgpack.Ext(_DATE_EXT, _DATE.pack(value.year, value.month, value.day))


def _time(value: datetime.time) -> Any:
    data = _TIME.pack(value.hour, value.minute, value.second, value.microsecond, value.fold)
    return msgspec.msgpack.Ext(_TIME_EXT, data + _offset(value.utcoffset()))


def _timedelta(value: datetime.timedelta) -> Any:
    return msgspec.msgpack.Ext(_TIMEDELTA_EXT, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds))


def _uuid(value: uuid.UUID) -> Any:
    return msgspec.msgpack.Ext(_UUID_EXT, value.bytes)


def _decimal(value: decimal.Decimal) -> Any:
    return msgspec.msgpack.Ext(_DECIMAL_EXT, str(value).encode("ascii"))


def _set(value: Any) -> Any:
    code = _FROZENSET_EXT if isinstance(value, frozenset) else _SET_EXT
    # No index in the path of a refused member: a set has no order to point into.
    return msgspec.msgpack.Ext(code, _value_encoder.encode([_to_wire(item) for item in value]))


def _list(value: Any) -> list[Any]:
    out = []
    for index, item in enumerate(value):
        try:
            out.append(_to_wire(item))
        except _Unsendable as exc:
            exc.path.append(index)
            raise
    return out


def _key(key: Any) -> Any:
    kind = type(key)
    if kind is str:
        return key
    if kind is int or kind is bool:
        return key if _INT64_MIN <= key <= _UINT64_MAX else _WideKey(key)
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int):
        return _key(int.__index__(key))
    raise _Unsendable(key, key=True)


def _dict(value: Any) -> dict[Any, Any]:
    out = {}
    for key, item in dict.items(value):
        wire_key = _key(key)
        try:
            out[wire_key] = _to_wire(item)
        except _Unsendable as exc:
            exc.path.append(key)
            raise
    return out


#: How each allowed type goes on the wire; a subclass goes as its nearest base listed here.
_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    str: str.__str__,
    int: lambda value: _int(int.__index__(value)),
    float: float.__float__,
    bytes: lambda value: bytes(memoryview(value)),
    list: _list,
    tuple: _list,
    dict: _dict,
    datetime.datetime: _datetime,
    datetime.date: _date,
    datetime.time: _time,
    datetime.timedelta: _timedelta,
    uuid.UUID: _uuid,
    decimal.Decimal: _decimal,
    set: _set,
    frozenset: _set,
}


def _to_wire(value: Any) -> Any:
    """Return ``value`` with every allowed type msgspec would alter replaced by an extension.

    Raises:
        _Unsendable: something in ``value`` is not an allowed type.
    """
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return _int(value) if kind is int else value
    convert = _CONVERTERS.get(kind)
    if convert is None:
        base = next((base for base in kind.__mro__ if base in _CONVERTERS), None)
        if base is None:
            raise _Unsendable(value)
        convert = _CONVERTERS[base]
    return convert(value)


_value_encoder: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def _tz(data: bytes, fixed: int) -> datetime.timezone | None:
    if len(data) == fixed:
        return None
    (offset,) = _OFFSET.unpack(data[fixed:])
    return datetime.timezone(datetime.timedelta(microseconds=offset))


def _read_datetime(data: bytes) -> datetime.datetime:
    year, month, day, hour, minute, second, microsecond, fold = _DATETIME.unpack(data[: _DATETIME.size])
    tz = _tz(data, _DATETIME.size)
    return datetime.datetime(year, month, day, hour, minute, second, microsecond, tz, fold=fold)


def _read_time(data: bytes) -> datetime.time:
    hour, minute, second, microsecond, fold = _TIME.unpack(data[: _TIME.size])
    return datetime.time(hour, minute, second, microsecond, _tz(data, _TIME.size), fold=fold)


def _hashable(item: Any) -> Any:
    # In a set, a tuple is the only sequence there can be: arrays come back as tuples.
    return tuple(_hashable(element) for element in item) if type(item) is list else item


def _read_items(data: bytes) -> list[Any]:
    items = _value_decoder.decode(data)
    if type(items) is not list:
        raise ValueError("a set's items are not an array")
    return [_hashable(item) for item in items]


_READERS: Final[dict[int, Callable[[bytes], Any]]] = {
    _BIG_INT_EXT: lambda data: int(data.decode("ascii")),
    _DATETIME_EXT: _read_datetime,
    _DATE_EXT: lambda data: datetime.date(*_DATE.unpack(data)),
    _TIME_EXT: _read_time,
    _TIMEDELTA_EXT: lambda data: datetime.timedelta(*_TIMEDELTA.unpack(data)),
    _UUID_EXT: lambda data: uuid.UUID(bytes=data),
    _DECIMAL_EXT: lambda data: decimal.Decimal(data.decode("ascii")),
    _SET_EXT: lambda data: set(_read_items(data)),
    _FROZENSET_EXT: lambda data: frozenset(_read_items(data)),
}


def _decode_ext(code: int, data: memoryview) -> Any:
    reader = _READERS.get(code)
    if reader is None:
        raise ValueError(f"unknown msgpack extension type {code}")
    try:
        return reader(bytes(data))
    except (ValueError, TypeError, OverflowError, struct.error, decimal.InvalidOperation) as exc:
        # A peer's bytes: whatever is wrong with them is one kind of error for the caller.
        raise ValueError(f"malformed msgpack extension type {code}: {exc}") from None


_value_decoder: Final = msgspec.msgpack.Decoder(ext_hook=_decode_ext)


def encode_value(value: Any) -> bytes:
    """Encode a user value (arguments, a return value, inform data) to msgpack.

    Values arrive as API.md's "Values" table says: plain values as they are, tuples as
    lists, the other allowed types (datetime, date, time, timedelta, UUID, Decimal, set,
    frozenset) with their type, as msgpack extensions.

    Raises:
        TypeError: the value, or something inside it, is not an allowed type (or a dict key
            is neither a str nor an int); the message names the type and where it is.
    """
    try:
        if type(value) in _PLAIN_SCALARS or _is_plain(value):
            try:
                return _value_encoder.encode(value)
            except OverflowError:
                pass  # an int beyond 64 bits: rare, it pays for the walk below
        return _value_encoder.encode(_to_wire(value))
    except _Unsendable as exc:
        raise exc.error() from None
    except RecursionError:
        raise TypeError("value is nested too deeply to encode") from None


def decode_value(data: bytes | Raw) -> Any:
    """Decode a user value encoded by `encode_value`.

    Raises:
        ProtocolError: the bytes are not a valid value.
    """
    try:
        return _value_decoder.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        from ..errors import ProtocolError

        raise ProtocolError(f"undecodable value: {exc}") from None


#: The encoded empty ``dict``: the arguments of a request that passes none.
EMPTY_ARGS: Final = Raw(encode_value({}))

"""Sans-IO tests: frames, value codec, a ClientProtocol/Router pair wired in memory, admission.

No sockets and no threads here: bytes go in, frames and bytes come out. The client side
of each test is a `ClientProtocol`; the hub side is a `Router` whose output is fed back to
the client protocols by `Wire`.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import datetime
import decimal
import enum
import math
import uuid
import zoneinfo
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from winerp import errors
from winerp.protocol.client import ClientProtocol, ClientState, error_from_failure
from winerp.protocol.codec import NativeCodec
from winerp.protocol.frames import (
    EMPTY_ARGS,
    HUB,
    SUBPROTOCOL,
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
    batch_header,
    decode_frame,
    decode_message,
    decode_value,
    encode_frame,
    encode_value,
)
from winerp.protocol.router import Router, Session, SessionState
from winerp.wire.handshake import TOKEN_HEADER, Admission, Refusal, admit

PACKAGE = Path(__file__).resolve().parent.parent / "winerp"
LIMIT = 1024 * 1024


# --- frames ---------------------------------------------------------------------------------

FRAMES: list[Frame] = [
    Hello("a", ["r1", "r2"]),
    Hello("legacy", [], routes_known=False),
    Welcome("a", False, 1.0, LIMIT, ["b", "c"]),
    Welcome("a", True, 0.5, 10),
    AddRoutes(["late"]),
    Request(7, "b", "echo", msgspec.Raw(encode_value({"x": 1}))),
    Response(7, "a", msgspec.Raw(encode_value([1, "two"]))),
    Failure(7, "a", ErrorCode.REMOTE_ERROR, "boom", "ValueError", "Traceback ..."),
    Failure(8, "a", ErrorCode.DESTINATION_NOT_FOUND, "gone"),
    Inform([], msgspec.Raw(encode_value({"k": None}))),
    Inform(["b", "c"], msgspec.Raw(encode_value(0))),
    Information("a", msgspec.Raw(encode_value(b"\x00\xff"))),
    Ping(3, HUB),
    Pong(3, "b"),
    Presence("b", True),
    Presence("b", False),
]


def _fields(frame: Frame) -> dict[str, Any]:
    out = {}
    for field in frame.__struct_fields__:
        value = getattr(frame, field)
        out[field] = bytes(value) if isinstance(value, msgspec.Raw) else value
    return out


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_frame_round_trips(frame: Frame) -> None:
    decoded = decode_frame(encode_frame(frame))
    assert type(decoded) is type(frame)
    assert _fields(decoded) == _fields(frame)


def test_frame_tags_are_distinct() -> None:
    tags = {msgspec.msgpack.decode(encode_frame(frame))[0] for frame in FRAMES}
    assert len(tags) == len({type(frame) for frame in FRAMES})


def test_raw_payload_is_forwarded_byte_for_byte() -> None:
    payload = encode_value({"nested": [1, 2.5, "x", b"y", None]})
    frame = decode_frame(encode_frame(Request(1, "b", "r", msgspec.Raw(payload))))
    assert isinstance(frame, Request)
    assert bytes(frame.args) == payload


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"\xff\x00garbage", msgspec.msgpack.encode([99, "x"]), msgspec.msgpack.encode({"a": 1})],
    ids=["empty", "reserved-byte", "junk", "unknown-tag", "map"],
)
def test_decode_frame_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        decode_frame(garbage)


# --- user values ------------------------------------------------------------------------------

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    2**200,
    -(2**64),
    -(2**200) - 12345,
    0.0,
    -1.5,
    math.pi,
    float("inf"),
    "",
    "héllo ✓ 🚀",
    b"",
    b"\x00\x01\xff",
    [],
    [1, "a", None, 2.5, b"b"],
    {},
    {"a": 1, "b": [True, {"c": None}]},
    {"deep": [[[[{"x": [2**80, -(2**80)]}]]]]},
    [{"k": [b"bytes", {"n": 2**100}]}, (1, 2)],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_round_trips(value: Any) -> None:
    decoded = decode_value(encode_value(value))
    assert decoded == _tuples_to_lists(value)
    assert type(decoded) is type(_tuples_to_lists(value))


def test_nan_round_trips() -> None:
    assert math.isnan(decode_value(encode_value(float("nan"))))


def test_tuple_arrives_as_list() -> None:
    assert decode_value(encode_value((1, (2, 3), "x"))) == [1, [2, 3], "x"]
    assert decode_value(encode_value({"t": (2**70,)})) == {"t": [2**70]}


def test_value_types_survive_nesting() -> None:
    value = {"i": 2**65, "f": 1.0, "b": b"1", "s": "1", "t": True, "n": None}
    decoded = decode_value(encode_value([value]))[0]
    assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in value.items()}
    assert decoded == value


class _Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [object(), _Opaque(), [1, object()], {"a": {"b": _Opaque()}}, (lambda: 1), {"big": [2**70, object()]}],
    ids=["object", "instance", "in-list", "in-dict", "function", "beside-a-big-int"],
)
def test_unencodable_value_raises_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_value(value)


def test_too_deep_value_raises_type_error() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(TypeError):
        encode_value(value)


def test_decode_value_rejects_garbage() -> None:
    with pytest.raises(errors.ProtocolError):
        decode_value(b"\xc1")
    with pytest.raises(errors.ProtocolError):
        decode_value(msgspec.msgpack.encode(msgspec.msgpack.Ext(42, b"x")))


def test_empty_args_is_the_empty_dict() -> None:
    assert decode_value(EMPTY_ARGS) == {}


# --- values that keep their type (msgpack extensions) and values refused ----------------------

UTC_PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))
TYPED_VALUES: list[Any] = [
    datetime.datetime(2024, 5, 6, 7, 8, 9, 10),
    datetime.datetime(2024, 5, 6, tzinfo=UTC_PLUS_2),
    datetime.datetime(2024, 11, 3, 1, 30, fold=1),
    datetime.date(2024, 2, 29),
    datetime.time(7, 8, 9, 10),
    datetime.time(7, 8, tzinfo=datetime.timezone(datetime.timedelta(hours=-9, seconds=-30))),
    datetime.timedelta(days=-3, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("-0.000"),
    decimal.Decimal("1.20E+7"),
    decimal.Decimal("-Infinity"),
    {1, "a", (2, (3,)), frozenset({b"x"}), 2**70},
    frozenset({datetime.date(2000, 1, 1), decimal.Decimal("1.5")}),
]


@pytest.mark.parametrize("value", TYPED_VALUES, ids=repr)
def test_typed_values_keep_their_type(value: Any) -> None:
    decoded = decode_value(encode_value({"v": [value]}))["v"][0]
    assert type(decoded) is type(value)
    assert decoded == value
    if not isinstance(value, (set, frozenset)):  # a set's text follows its hash order, which may differ
        assert str(decoded) == str(value)  # also a Decimal's form and a datetime's offset


def test_decimal_nan_keeps_its_form() -> None:
    for text in ("NaN", "-NaN123", "sNaN"):
        decoded = decode_value(encode_value(decimal.Decimal(text)))
        assert type(decoded) is decimal.Decimal
        assert str(decoded) == text


def test_a_named_zone_becomes_its_fixed_offset() -> None:
    sent = datetime.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("America/New_York"))
    decoded = decode_value(encode_value(sent))
    assert decoded == sent
    assert decoded.tzinfo == datetime.timezone(datetime.timedelta(hours=-4))


def test_int_keys_keep_their_type() -> None:
    decoded = decode_value(encode_value({1: "a", "1": "b", -(2**80): [True]}))
    assert decoded == {1: "a", "1": "b", -(2**80): [True]}
    assert [type(key) for key in decoded] == [int, str, int]


class _Level(enum.IntEnum):
    HIGH = 3


class _Word(str):
    def __str__(self) -> str:
        return "something else"


def test_subclasses_go_as_their_base_type() -> None:
    sent = [_Level.HIGH, _Word("w"), {_Word("k"): _Level.HIGH}, collections.OrderedDict(a=1), _Pair(1, 2)]
    decoded = decode_value(encode_value(sent))
    assert decoded == [3, "w", {"k": 3}, {"a": 1}, [1, 2]]
    assert [type(item) for item in decoded] == [int, str, dict, dict, list]
    assert [type(key) for key in decoded[2]] == [str]


class _Pair(NamedTuple):
    a: int
    b: int


@pytest.mark.parametrize(
    "value", [{"a": [1, 2.5, "x", b"y", None, True, (1, 2)]}, {7: {"k": [2**64 - 1]}}, [], "s", b"b"]
)
def test_plain_values_are_plain_msgpack(value: Any) -> None:
    # The wire did not change for them: what msgspec alone makes of them.
    assert encode_value(value) == msgspec.msgpack.encode(value)


@dataclasses.dataclass
class _Point:
    x: int


class _StructPoint(msgspec.Struct):
    x: int


class _Flavour(enum.Enum):
    PLAIN = 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_Point(1), "test_frames_protocol._Point at the top level:"),
        (_StructPoint(1), "_StructPoint"),
        (_Flavour.PLAIN, "_Flavour"),
        (bytearray(b"x"), "a value of type bytearray at the top level (convert it with bytes())"),
        (memoryview(b"x"), "memoryview"),
        (msgspec.Raw(b"\xc0"), "msgspec.Raw"),
        (msgspec.msgpack.Ext(1, b"1"), "msgspec.msgpack.Ext"),
        (complex(1, 2), "complex"),
        ({"a": [1, {2.5: 0}]}, "a dict key of type float at ['a'][1]"),
        ({None: 0}, "a dict key of type NoneType"),
        ({frozenset(): 0}, "a dict key of type frozenset"),
        ({"s": {1, _Flavour.PLAIN}}, "_Flavour at ['s']:"),
        ([2**70, {"d": _Point(3)}], "_Point at [1]['d']"),
    ],
    ids=repr,
)
def test_refused_values_name_their_type_and_place(value: Any, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        encode_value(value)
    assert message in str(caught.value)
    assert "datetime" in str(caught.value)  # and says what can be sent


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (1, b"12x"),
        (2, b"\x07\xe8\x01"),
        (2, bytes(12) + b"\x00"),
        (2, b"\x07\xe8\x0d\x01" + bytes(8)),
        (3, b"\x07\xe8\x02\x1e"),
        (4, b"\x18" + bytes(7)),
        (5, b"\x7f\xff\xff\xff" + bytes(8)),
        (6, bytes(15)),
        (7, b"one"),
        (7, b"\xff"),
        (8, msgspec.msgpack.encode({"not": "an array"})),
        (8, msgspec.msgpack.encode([[{"a": 1}]])),
        (9, b"\xc1"),
        (10, b""),
    ],
)
def test_malformed_extensions_are_protocol_errors(code: int, payload: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        decode_value(msgspec.msgpack.encode([msgspec.msgpack.Ext(code, payload)]))


# --- a client/hub pair in memory --------------------------------------------------------------


class Wire:
    """A `Router` and any number of `ClientProtocol` s, connected by function calls.

    Every message the router emits is decoded by the destination's client protocol and
    kept, in order, in that client's inbox.
    """

    def __init__(self, **router_options: Any) -> None:
        router_options.setdefault("max_message_size", LIMIT)
        self.router = Router(**router_options)
        self.now = 100.0
        self.inbox: dict[int, list[Frame]] = {}

    def connect(self, name: str, routes: tuple[str, ...] = ()) -> tuple[ClientProtocol, Session]:
        client = ClientProtocol(name, LIMIT, self.now)
        session = self.router.open(NativeCodec(), client, self.now)
        self.inbox[id(client)] = []
        self.send(session, client.hello(routes))
        return client, session

    def send(self, session: Session, data: bytes | str) -> None:
        self.deliver(self.router.receive(session, data))

    def close(self, session: Session) -> None:
        self.deliver(self.router.close(session))

    def deliver(self, out: list[tuple[Session, bytes | str]]) -> None:
        for session, message in out:
            client = session.transport
            assert isinstance(message, bytes)
            self.inbox[id(client)].extend(client.receive(message, self.now))

    def take(self, client: ClientProtocol) -> list[Frame]:
        frames, self.inbox[id(client)] = self.inbox[id(client)], []
        return frames

    def take_one(self, client: ClientProtocol, kind: type[Any]) -> Any:
        frames = self.take(client)
        assert len(frames) == 1, frames
        assert isinstance(frames[0], kind), frames
        return frames[0]


def test_registration_welcomes_and_announces() -> None:
    wire = Wire(heartbeat=0.5)
    a, a_session = wire.connect("a", ("r1",))
    welcome = wire.take_one(a, Welcome)
    assert (welcome.name, welcome.on_hold, welcome.peers) == ("a", False, [])
    assert a.state is ClientState.READY
    assert a.heartbeat == 0.5
    assert a_session.state is SessionState.READY
    assert a_session.routes == {"r1"}

    b, _ = wire.connect("b")
    assert wire.take_one(b, Welcome).peers == ["a"]
    presence = wire.take_one(a, Presence)
    assert (presence.name, presence.joined) == ("b", True)
    assert wire.router.ready_names() == ["a", "b"]


def test_welcome_announces_the_hub_limit() -> None:
    wire = Wire(max_message_size=4096)
    a, _ = wire.connect("a")
    assert wire.take_one(a, Welcome).max_message_size == 4096
    assert a.max_message_size == 4096


def test_add_routes_after_hello() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b")
    wire.take(a), wire.take(b)
    wire.send(b_session, b.add_routes(["late"]))
    assert b_session.routes == {"late"}
    request_id, frame = a.request("b", "late", {})
    wire.send(a_session, frame)
    assert wire.take_one(b, Request).id == request_id


def test_request_and_response() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("echo",))
    wire.take(a), wire.take(b)

    request_id, frame = a.request("b", "echo", {"x": 2**70, "t": (1, 2)})
    wire.send(a_session, frame)
    assert wire.take(a) == []
    request = wire.take_one(b, Request)
    # The hub stamps the caller's registered name on what it forwards.
    assert (request.id, request.peer, request.route) == (request_id, "a", "echo")
    assert decode_value(request.args) == {"x": 2**70, "t": [1, 2]}
    assert a_session.awaiting == {request_id: b_session}

    wire.send(b_session, b.respond(request, {"ok": b"yes"}))
    response = wire.take_one(a, Response)
    assert (response.id, response.peer) == (request_id, "b")
    assert decode_value(response.result) == {"ok": b"yes"}
    assert a_session.awaiting == {}
    assert b_session.serving == set()


def test_request_ids_are_unique() -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    ids = [client.request("b", "r", {})[0] for _ in range(50)] + [client.ping("b")[0] for _ in range(50)]
    assert len(set(ids)) == 100
    assert 0 not in ids  # id 0 is the heartbeat's and the undeliverable inform's


def test_remote_error_carries_type_message_and_traceback() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("boom",))
    wire.take(a), wire.take(b)
    wire.send(a_session, a.request("b", "boom", {})[1])
    request = wire.take_one(b, Request)
    wire.send(b_session, b.fail(request, ValueError("bad value"), "Traceback: line 1"))
    failure = wire.take_one(a, Failure)
    error = error_from_failure(failure)
    assert isinstance(error, errors.ClientRuntimeError)
    assert (error.remote_type, error.remote_message, error.remote_traceback) == (
        "ValueError",
        "bad value",
        "Traceback: line 1",
    )


def test_unknown_route_is_answered_by_the_client() -> None:
    """The hub forwards a route it has not heard of: the client's AddRoutes may still be on its way."""
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("echo",))
    wire.take(a), wire.take(b)
    request_id, frame = a.request("b", "missing", {})
    wire.send(a_session, frame)
    forwarded = wire.take_one(b, Request)
    assert (forwarded.id, forwarded.peer, forwarded.route) == (request_id, "a", "missing")
    wire.send(b_session, b.route_not_found(forwarded))
    failure = wire.take_one(a, Failure)
    assert (failure.id, failure.peer, failure.code) == (request_id, "b", ErrorCode.ROUTE_NOT_FOUND)
    assert isinstance(error_from_failure(failure), errors.RouteNotFound)
    assert a_session.awaiting == {}


def test_route_not_found_at_the_client() -> None:
    client = ClientProtocol("b", LIMIT, 0.0)
    failure = decode_frame(client.route_not_found(Request(5, "a", "nope", EMPTY_ARGS)))
    assert isinstance(failure, Failure)
    assert (failure.id, failure.peer, failure.code) == (5, "a", ErrorCode.ROUTE_NOT_FOUND)


def test_destination_not_found() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    wire.take(a)
    request_id, frame = a.request("nobody", "echo", {})
    wire.send(a_session, frame)
    failure = wire.take_one(a, Failure)
    assert (failure.id, failure.peer, failure.code) == (request_id, "nobody", ErrorCode.DESTINATION_NOT_FOUND)
    assert isinstance(error_from_failure(failure), errors.DestinationNotFound)


def test_error_codes_map_to_error_classes() -> None:
    expected = {
        ErrorCode.DESTINATION_NOT_FOUND: errors.DestinationNotFound,
        ErrorCode.ROUTE_NOT_FOUND: errors.RouteNotFound,
        ErrorCode.REMOTE_ERROR: errors.ClientRuntimeError,
        ErrorCode.PEER_DISCONNECTED: errors.PeerDisconnected,
        ErrorCode.PAYLOAD_TOO_LARGE: errors.PayloadTooLarge,
        ErrorCode.NOT_READY: errors.ClientNotReadyError,
    }
    for code in ErrorCode:
        error = error_from_failure(Failure(1, "x", code, "why"))
        assert isinstance(error, expected.get(code, errors.WinerpError))
        assert "why" in str(error)


def test_hold_queue_and_promotion_in_arrival_order() -> None:
    wire = Wire()
    watcher, _ = wire.connect("watcher")
    first, first_session = wire.connect("name")
    second, second_session = wire.connect("name")
    third, third_session = wire.connect("name")
    assert wire.take_one(first, Welcome).on_hold is False
    assert wire.take_one(second, Welcome).on_hold is True
    assert wire.take_one(third, Welcome).on_hold is True
    assert second.state is ClientState.HELD
    assert second_session.state is SessionState.HELD
    assert wire.router.ready_names() == ["name", "watcher"]
    wire.take(watcher)

    # A held client cannot call anyone yet.
    request_id, frame = second.request("watcher", "r", {})
    wire.send(second_session, frame)
    failure = wire.take_one(second, Failure)
    assert (failure.id, failure.code) == (request_id, ErrorCode.NOT_READY)

    wire.close(first_session)
    promoted = wire.take_one(second, Welcome)
    assert promoted.on_hold is False
    assert second.state is ClientState.READY
    assert second_session.state is SessionState.READY
    assert wire.take(third) == []
    # The watcher sees the name leave and come back.
    assert [(p.name, p.joined) for p in wire.take(watcher)] == [("name", False), ("name", True)]

    wire.close(second_session)
    assert wire.take_one(third, Welcome).on_hold is False
    assert third_session.state is SessionState.READY


def test_a_held_client_that_leaves_leaves_the_queue() -> None:
    wire = Wire()
    first, first_session = wire.connect("name")
    second, second_session = wire.connect("name")
    third, _ = wire.connect("name")
    wire.take(first), wire.take(second), wire.take(third)
    wire.close(second_session)
    assert wire.take(first) == []  # leaving from hold announces nothing
    wire.close(first_session)
    assert wire.take_one(third, Welcome).on_hold is False
    assert wire.take(second) == []


def test_peer_disconnected_when_the_destination_closes() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("slow",))
    wire.take(a), wire.take(b)
    ids = [a.request("b", "slow", {"n": n}) for n in range(3)]
    for _, frame in ids:
        wire.send(a_session, frame)
    ping_id, ping = a.ping("b")
    wire.send(a_session, ping)
    wire.take(b)
    wire.close(b_session)
    frames = wire.take(a)
    failures = [f for f in frames if isinstance(f, Failure)]
    assert sorted(f.id for f in failures) == sorted([request_id for request_id, _ in ids] + [ping_id])
    assert {f.code for f in failures} == {ErrorCode.PEER_DISCONNECTED}
    assert all(isinstance(error_from_failure(f), errors.PeerDisconnected) for f in failures)
    assert [(p.name, p.joined) for p in frames if isinstance(p, Presence)] == [("b", False)]
    assert a_session.awaiting == {}


def test_a_caller_that_closes_is_forgotten_by_its_destination() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("slow",))
    wire.take(a), wire.take(b)
    wire.send(a_session, a.request("b", "slow", {})[1])
    request = wire.take_one(b, Request)
    wire.close(a_session)
    assert b_session.serving == set()
    wire.take(b)
    wire.send(b_session, b.respond(request, "late"))  # nobody to deliver it to: dropped
    assert wire.take(b) == []


def test_spoofed_and_late_answers_are_dropped() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b", ("echo",))
    mallory, mallory_session = wire.connect("mallory")
    wire.take(a), wire.take(b), wire.take(mallory)
    request_id, frame = a.request("b", "echo", {})
    wire.send(a_session, frame)
    request = wire.take_one(b, Request)

    # Another client answers a request that was not sent to it, in every answer form.
    for forged in (
        Response(request_id, "a", msgspec.Raw(encode_value("forged"))),
        Failure(request_id, "a", ErrorCode.REMOTE_ERROR, "forged"),
        Pong(request_id, "a"),
    ):
        wire.send(mallory_session, encode_frame(forged))
    assert wire.take(a) == []
    assert a_session.awaiting == {request_id: b_session}

    wire.send(b_session, b.respond(request, "genuine"))
    assert decode_value(wire.take_one(a, Response).result) == "genuine"
    # A second answer to the same request is late and dropped.
    wire.send(b_session, b.respond(request, "again"))
    assert wire.take(a) == []


def test_a_client_cannot_speak_for_another_name() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, _ = wire.connect("b", ("who",))
    wire.take(a), wire.take(b)
    # The peer field of a request names the destination; the hub replaces it with the sender.
    wire.send(a_session, encode_frame(Request(1, "b", "who", EMPTY_ARGS)))
    assert wire.take_one(b, Request).peer == "a"
    wire.send(a_session, encode_frame(Inform(["b"], msgspec.Raw(encode_value("hi")))))
    assert wire.take_one(b, Information).source == "a"


def test_duplicate_request_id_in_flight_is_refused() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, _ = wire.connect("b", ("r",))
    wire.take(a), wire.take(b)
    wire.send(a_session, encode_frame(Request(9, "b", "r", EMPTY_ARGS)))
    wire.send(a_session, encode_frame(Request(9, "b", "r", EMPTY_ARGS)))
    failure = wire.take_one(a, Failure)
    assert (failure.id, failure.code) == (9, ErrorCode.BAD_REQUEST)
    assert len(wire.take(b)) == 1


def test_too_many_pending_is_refused() -> None:
    wire = Wire(max_pending=2)
    a, a_session = wire.connect("a")
    b, _ = wire.connect("b", ("r",))
    wire.take(a), wire.take(b)
    for _ in range(3):
        wire.send(a_session, a.request("b", "r", {})[1])
    assert wire.take_one(a, Failure).code == ErrorCode.TOO_MANY_PENDING
    assert len(wire.take(b)) == 2


def test_inform_to_named_clients_and_to_everyone() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, _ = wire.connect("b")
    c, _ = wire.connect("c")
    wire.take(a), wire.take(b), wire.take(c)

    wire.send(a_session, a.inform({"to": "b"}, ["b", "b"]))
    information = wire.take_one(b, Information)
    assert (information.source, decode_value(information.data)) == ("a", {"to": "b"})
    assert wire.take(c) == [] and wire.take(a) == []

    wire.send(a_session, a.inform(0, []))
    for receiver in (b, c):
        assert decode_value(wire.take_one(receiver, Information).data) == 0
    assert wire.take(a) == []  # never to the sender itself

    wire.send(a_session, a.inform("x", ["c", "ghost"]))
    assert decode_value(wire.take_one(c, Information).data) == "x"
    failure = wire.take_one(a, Failure)
    assert (failure.id, failure.peer, failure.code) == (0, "ghost", ErrorCode.DESTINATION_NOT_FOUND)


def test_ping_the_hub_and_a_client() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, b_session = wire.connect("b")
    wire.take(a), wire.take(b)

    ping_id, frame = a.ping(HUB)
    wire.send(a_session, frame)
    assert (wire.take_one(a, Pong).id, wire.take(b)) == (ping_id, [])

    ping_id, frame = a.ping("b")
    wire.send(a_session, frame)
    ping = wire.take_one(b, Ping)
    assert (ping.id, ping.peer) == (ping_id, "a")
    wire.send(b_session, b.pong(ping))
    pong = wire.take_one(a, Pong)
    assert (pong.id, pong.peer) == (ping_id, "b")

    ping_id, frame = a.ping("ghost")
    wire.send(a_session, frame)
    assert wire.take_one(a, Failure).code == ErrorCode.DESTINATION_NOT_FOUND


def test_hub_builtin_routes() -> None:
    wire = Wire()
    a, a_session = wire.connect("a", ("shared",))
    b, _ = wire.connect("b", ("shared", "only_b"))
    c, _ = wire.connect("c")
    wire.take(a), wire.take(b), wire.take(c)

    def call(route: str, args: dict[str, Any]) -> Any:
        request_id, frame = a.request(HUB, route, args)
        wire.send(a_session, frame)
        answer = wire.take_one(a, (Response, Failure))
        assert answer.id == request_id
        return decode_value(answer.result) if isinstance(answer, Response) else answer

    assert call("peers", {}) == ["b", "c"]
    assert call("routes", {"route": "shared"}) == ["b"]
    assert call("routes", {"route": "only_b"}) == ["b"]
    status = call("status", {})
    assert [client["name"] for client in status["clients"]] == ["a", "b", "c"]
    assert status["clients"][1]["routes"] == ["only_b", "shared"]
    assert call("nope", {}).code == ErrorCode.ROUTE_NOT_FOUND


class _OtherHub:
    """An `Elsewhere` that knows one client, ``far``, of another hub, and hears announcements."""

    def __init__(self, wire: Wire) -> None:
        self.far = ClientProtocol("far", LIMIT, wire.now)
        self.session = Session(NativeCodec(), self.far, wire.now)
        self.session.name, self.session.state = "far", SessionState.READY
        wire.inbox[id(self.far)] = []
        self.announced: list[tuple[str, bool]] = []

    def lookup(self, name: str) -> Session | None:
        return self.session if name == "far" else None

    def announce(self, name: str, ready: bool) -> None:
        self.announced.append((name, ready))


def test_a_name_not_here_is_looked_up_elsewhere_and_answers_take_the_same_path() -> None:
    """The router's extension point for a cluster: `Router.elsewhere`."""
    wire = Wire()
    other = _OtherHub(wire)
    wire.router.elsewhere = other
    a, a_session = wire.connect("a")
    assert other.announced == [("a", True)]
    wire.take(a)
    request_id, frame = a.request("far", "echo", {"x": 1})
    wire.send(a_session, frame)
    request = wire.take_one(other.far, Request)
    assert (request.id, request.peer, request.route) == (request_id, "a", "echo")
    wire.send(other.session, other.far.respond(request, 2))
    response = wire.take_one(a, Response)
    assert (response.id, response.peer, decode_value(response.result)) == (request_id, "far", 2)
    _, frame = a.request("nowhere", "echo", {})
    wire.send(a_session, frame)
    assert wire.take_one(a, Failure).code == ErrorCode.DESTINATION_NOT_FOUND
    wire.close(a_session)
    assert other.announced == [("a", True), ("a", False)]


def test_counters_count_messages_and_bytes() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    _b, b_session = wire.connect("b")
    before_in, before_out = a_session.counters.messages_in, b_session.counters.messages_out
    routed = wire.router.counters.messages_routed
    frame = a.inform("hello", ["b"])
    wire.send(a_session, frame)
    assert a_session.counters.messages_in == before_in + 1
    assert b_session.counters.messages_out == before_out + 1
    assert a_session.counters.bytes_in >= len(frame)
    assert wire.router.counters.messages_routed == routed + 1
    assert wire.router.status()["messages_routed"] == routed + 1


# --- batches: several frames in one message ------------------------------------------------


def _batch(*frames: Frame) -> bytes:
    return batch_header(len(frames)) + b"".join(encode_frame(frame) for frame in frames)


@pytest.mark.parametrize("count", [2, 15, 16, 300])  # msgpack's short and 16-bit array headers
def test_a_batch_carries_its_frames_in_order(count: int) -> None:
    frames = [FRAMES[i % len(FRAMES)] for i in range(count)]
    assert decode_message(_batch(*frames)) == frames
    for frame in FRAMES:  # a message of one frame is not a batch
        assert decode_message(encode_frame(frame)) == [frame]


def test_hello_says_the_client_reads_batches_and_welcome_says_the_hub_does() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    assert a_session.batches
    assert wire.take_one(a, Welcome).batches
    hello = decode_frame(ClientProtocol("b", LIMIT, 0.0).hello([]))
    assert isinstance(hello, Hello) and hello.batches
    # A client from before batches sends a Hello without the field: it gets none.
    old = wire.router.open(NativeCodec(), None, 0.0)
    wire.router.receive(old, msgspec.msgpack.encode([1, "old", [], 1, True]))
    assert old.state is SessionState.READY and not old.batches


def test_the_router_routes_every_frame_of_a_batch_in_order() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    b, _ = wire.connect("b", ("r",))
    wire.take(a), wire.take(b)
    request_id, request = a.request("b", "r", {"n": 1})
    informs = [a.inform(i, ["b"]) for i in range(3)]
    before = a_session.counters.messages_in
    wire.send(a_session, batch_header(5) + b"".join([informs[0], request, informs[1], a.ping(HUB)[1], informs[2]]))
    assert a_session.counters.messages_in == before + 5  # what status shows: messages, however framed
    got = wire.take(b)
    assert [type(frame) for frame in got] == [Information, Request, Information, Information]
    assert [decode_value(frame.data) for frame in got if isinstance(frame, Information)] == [0, 1, 2]
    assert got[1].id == request_id
    assert isinstance(wire.take_one(a, Pong), Pong)


def test_a_client_reads_a_batch_as_its_frames_and_takes_the_welcome_in_it() -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    client.hello([])
    welcome = Welcome("a", False, 0.25, 1000, [], batches=True)
    information = Information("b", msgspec.Raw(encode_value(1)))
    assert client.receive(_batch(welcome, information), 0.0) == [welcome, information]
    assert (client.state, client.heartbeat, client.max_message_size) == (ClientState.READY, 0.25, 1000)


def test_bad_batches_are_protocol_errors() -> None:
    wire = Wire()
    _a, a_session = wire.connect("a")
    inform = encode_frame(Inform([], EMPTY_ARGS))
    bad = {
        "an item that is not a frame": batch_header(2) + inform + msgspec.msgpack.encode(5),
        "a batch in a batch": batch_header(2) + inform + _batch(Inform([], EMPTY_ARGS), Inform([], EMPTY_ARGS)),
        "a frame a hub sends": _batch(Inform([], EMPTY_ARGS), Welcome("a", False, 1.0, LIMIT)),
        "fewer frames than its header says": batch_header(3) + inform + inform,
        "an empty batch": batch_header(0),
    }
    for what, message in bad.items():
        with pytest.raises(errors.ProtocolError):
            wire.router.receive(a_session, message)
            pytest.fail(what)
    client = ClientProtocol("a", LIMIT, 0.0)
    with pytest.raises(errors.ProtocolError):
        client.receive(_batch(Information("b", EMPTY_ARGS), Hello("x", [])), 0.0)


def test_garbage_is_a_protocol_error() -> None:
    wire = Wire()
    _a, a_session = wire.connect("a")
    for garbage in (b"\xff\x00garbage", b"", "text is not native"):
        with pytest.raises(errors.ProtocolError):
            wire.router.receive(a_session, garbage)
    client = ClientProtocol("a", LIMIT, 0.0)
    with pytest.raises(errors.ProtocolError):
        client.receive(b"\xc1garbage", 0.0)


@pytest.mark.parametrize(
    "frame",
    [
        Request(1, "b", "r", EMPTY_ARGS),
        Ping(1, "b"),
        Inform([], EMPTY_ARGS),
        AddRoutes(["r"]),
        Response(1, "b", EMPTY_ARGS),
    ],
    ids=lambda f: type(f).__name__,
)
def test_anything_before_hello_is_a_protocol_error(frame: Frame) -> None:
    router = Router(max_message_size=LIMIT)
    session = router.open(NativeCodec(), None, 0.0)
    with pytest.raises(errors.ProtocolError):
        router.receive(session, encode_frame(frame))


def test_hello_twice_and_hub_frames_from_a_client_are_protocol_errors() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    with pytest.raises(errors.ProtocolError):
        wire.router.receive(a_session, a.hello([]))
    for frame in (Welcome("a", False, 1.0, LIMIT), Information("x", EMPTY_ARGS), Presence("x", True)):
        with pytest.raises(errors.ProtocolError):
            wire.router.receive(a_session, encode_frame(frame))


@pytest.mark.parametrize("name", ["", "x" * 129, "bad\x00name", "new\nline"], ids=repr)
def test_invalid_names_are_protocol_errors(name: str) -> None:
    router = Router(max_message_size=LIMIT)
    session = router.open(NativeCodec(), None, 0.0)
    with pytest.raises(errors.ProtocolError):
        router.receive(session, encode_frame(Hello(name, [])))


@pytest.mark.parametrize(
    "frame", [Hello("x", []), AddRoutes([]), Inform([], EMPTY_ARGS)], ids=lambda f: type(f).__name__
)
def test_client_protocol_rejects_frames_a_hub_never_sends(frame: Frame) -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    with pytest.raises(errors.ProtocolError):
        client.receive(encode_frame(frame), 0.0)


def test_unencodable_arguments_raise_type_error_and_send_nothing() -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    with pytest.raises(TypeError):
        client.request("b", "r", {"x": object()})
    with pytest.raises(TypeError):
        client.inform({"x": object()}, [])
    # The failed request did not use up an id that a sent request then reuses: ids only grow.
    first, _ = client.request("b", "r", {})
    second, _ = client.request("b", "r", {})
    assert second > first


def test_unencodable_return_value_becomes_a_remote_error() -> None:
    client = ClientProtocol("b", LIMIT, 0.0)
    failure = decode_frame(client.respond(Request(4, "a", "r", EMPTY_ARGS), object()))
    assert isinstance(failure, Failure)
    assert (failure.id, failure.peer, failure.code, failure.remote_type) == (
        4,
        "a",
        ErrorCode.REMOTE_ERROR,
        "TypeError",
    )


def test_payload_too_large_at_the_sender() -> None:
    client = ClientProtocol("a", 1000, 0.0)
    client.request("b", "r", {"data": b"x" * 500})
    with pytest.raises(errors.PayloadTooLarge):
        client.request("b", "r", {"data": b"x" * 2000})
    with pytest.raises(errors.PayloadTooLarge):
        client.inform(b"x" * 2000, [])
    failure = decode_frame(client.respond(Request(4, "a", "r", EMPTY_ARGS), b"x" * 2000))
    assert isinstance(failure, Failure)
    assert failure.code == ErrorCode.PAYLOAD_TOO_LARGE
    assert isinstance(error_from_failure(failure), errors.PayloadTooLarge)


def test_the_hub_limit_replaces_the_client_limit() -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    client.receive(encode_frame(Welcome("a", False, 1.0, 1000)), 0.0)
    with pytest.raises(errors.PayloadTooLarge):
        client.request("b", "r", {"data": b"x" * 2000})


def test_a_larger_hub_limit_does_not_lift_the_client_limit() -> None:
    client = ClientProtocol("a", 1000, 0.0)
    client.receive(encode_frame(Welcome("a", False, 1.0, LIMIT)), 0.0)
    assert client.max_message_size == 1000
    with pytest.raises(errors.PayloadTooLarge):
        client.request("b", "r", {"data": b"x" * 2000})


def test_heartbeat_is_due_every_interval_and_silence_is_connection_lost() -> None:
    client = ClientProtocol("a", LIMIT, 0.0)
    client.receive(encode_frame(Welcome("a", False, 1.0, LIMIT)), 0.0)
    assert client.heartbeat_due(0.5) is None
    beat = client.heartbeat_due(1.0)
    assert beat is not None
    ping = decode_frame(beat)
    assert isinstance(ping, Ping) and (ping.id, ping.peer) == (0, HUB)
    assert client.heartbeat_due(1.5) is None
    assert client.heartbeat_due(2.0) is not None
    client.receive(encode_frame(Pong(0, HUB)), 4.0)  # anything from the hub counts as a sign of life
    assert client.heartbeat_due(8.9) is not None
    with pytest.raises(errors.ConnectionLost):
        client.heartbeat_due(9.1)


def test_the_heartbeat_ping_is_answered_by_the_hub() -> None:
    wire = Wire()
    a, a_session = wire.connect("a")
    wire.take(a)
    beat = a.heartbeat_due(wire.now + 2 * a.heartbeat)
    assert beat is not None
    wire.send(a_session, beat)
    assert wire.take_one(a, Pong).id == 0


def test_closing_twice_is_harmless() -> None:
    wire = Wire()
    a, _ = wire.connect("a")
    _, b_session = wire.connect("b")
    wire.take(a)
    wire.close(b_session)
    assert len(wire.take(a)) == 1
    wire.close(b_session)
    assert wire.take(a) == []
    assert wire.router.ready_names() == ["a"]


# --- no I/O in the sans-IO modules ------------------------------------------------------------

FORBIDDEN = {"socket", "threading", "asyncio", "websocket", "select", "selectors", "ssl"}


SANS_IO = sorted(
    str(path.relative_to(PACKAGE)) for folder in ("wire", "protocol") for path in (PACKAGE / folder).glob("*.py")
)


def test_the_sans_io_layers_hold_their_modules() -> None:
    assert {"wire/websocket.py", "wire/handshake.py", "protocol/frames.py", "protocol/router.py"} <= set(SANS_IO)


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_import_no_io(module: str) -> None:
    """The wire and protocol layers import no I/O, and import nothing above them."""
    tree = ast.parse((PACKAGE / module).read_text(), filename=module)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            pass  # a sibling in the same layer
        elif isinstance(node, ast.ImportFrom) and node.level == 2:
            # Up one level: only the layers below (wire below protocol) and the errors module.
            assert (node.module or "").split(".")[0] in {"wire", "errors", "defaults", ""} or (
                node.module is None and all(alias.name == "errors" for alias in node.names)
            ), (module, node.module)
        elif isinstance(node, ast.ImportFrom):
            pytest.fail(f"{module} imports from {node.level} levels up")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            pytest.fail(f"{module} imports dynamically")
    assert not imported & FORBIDDEN, f"{module} imports {sorted(imported & FORBIDDEN)}"


# --- handshake.admit --------------------------------------------------------------------------


def _head(*extra: str, method: str = "GET", upgrade: str = "websocket", version: str = "13") -> bytes:
    lines = [
        f"{method} / HTTP/1.1",
        "Host: 127.0.0.1:13254",
        f"Upgrade: {upgrade}",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        f"Sec-WebSocket-Version: {version}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _admit(head: bytes, token: str | None = None, origins: tuple[str, ...] | None = None) -> Admission | Refusal:
    return admit(head, token=token, allowed_origins=origins)


def test_admit_native_and_legacy() -> None:
    assert _admit(_head(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")) == Admission(native=True, extensions=False)
    assert _admit(_head(f"Sec-WebSocket-Protocol: other, {SUBPROTOCOL}")) == Admission(native=True, extensions=False)
    # No subprotocol and no Origin: a winerp 1.x client.
    assert _admit(_head()) == Admission(native=False, extensions=False)
    compressed = _admit(_head("Sec-WebSocket-Extensions: permessage-deflate"))
    assert compressed == Admission(native=False, extensions=True)


def test_admit_is_case_insensitive_on_header_names_and_tokens() -> None:
    head = _head(upgrade="WebSocket").replace(b"Connection: Upgrade", b"connection: keep-alive, UPGRADE")
    assert isinstance(_admit(head), Admission)


def test_admit_refuses_browsers_unless_the_origin_is_allowed() -> None:
    refused = _admit(_head("Origin: https://evil.example"))
    assert isinstance(refused, Refusal) and refused.status == 403
    refused = _admit(_head("Origin: https://evil.example"), origins=("https://good.example",))
    assert isinstance(refused, Refusal) and refused.status == 403
    assert isinstance(_admit(_head("Origin: https://good.example"), origins=("https://good.example",)), Admission)


def test_admit_checks_the_token() -> None:
    for head in (_head(), _head(f"{TOKEN_HEADER}: wrong"), _head(f"{TOKEN_HEADER}: secre")):
        refused = _admit(head, token="secret")
        assert isinstance(refused, Refusal) and refused.status == 401
    assert isinstance(_admit(_head("X-Winerp-Token: secret"), token="secret"), Admission)
    # A hub without a token ignores one.
    assert isinstance(_admit(_head(f"{TOKEN_HEADER}: anything")), Admission)


def test_admit_checks_origin_before_token() -> None:
    refused = _admit(_head("Origin: https://evil.example", f"{TOKEN_HEADER}: secret"), token="secret")
    assert isinstance(refused, Refusal) and refused.status == 403


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (_head(method="POST"), 400),
        (_head(upgrade="h2c"), 426),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (_head(version="8"), 426),
        (_head().replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), 400),
        (_head("Sec-WebSocket-Protocol: chat"), 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nUpgrade: websocket\r\n\r\n", 400),
        (_head("no colon here"), 400),
        (b"\r\n\r\n", 400),
    ],
    ids=[
        "post",
        "not-websocket",
        "plain-http",
        "bad-version",
        "no-key",
        "foreign-subprotocol",
        "malformed",
        "http2",
        "bad-header",
        "empty",
    ],
)
def test_admit_refusals(head: bytes, status: int) -> None:
    refused = _admit(head)
    assert isinstance(refused, Refusal)
    assert refused.status == status
    response = refused.response()
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(f"HTTP/1.1 {status} ".encode())
    assert b" 101 " not in status_line
    head_part, _, body = response.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head_part
    assert body.decode().strip() == refused.reason


def test_refusal_426_names_the_upgrade() -> None:
    response = Refusal(426, "upgrade please").response()
    assert b"Upgrade: websocket\r\n" in response
    assert b"Sec-WebSocket-Version: 13\r\n" in response


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _tuples_to_lists(item) for key, item in value.items()}
    return value

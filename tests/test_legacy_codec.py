"""The winerp 1.x codec alone: 1.x JSON messages in and out, no sockets.

The messages written here are the ones winerp 1.5.0 sends and expects (see
``winerp/protocol/legacy.py``); tests/test_legacy_interop.py checks them against the real client.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from winerp import errors
from winerp.protocol.codec import Undeliverable
from winerp.protocol.frames import (
    HUB,
    ErrorCode,
    Failure,
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
from winerp.protocol.legacy import (
    ERROR,
    FUNCTION_CALL,
    INFORMATION,
    LEGACY_MAX_MESSAGE_SIZE,
    PING,
    REQUEST,
    RESPONSE,
    SUCCESS,
    VERIFICATION,
    LegacyCodec,
)

FIELDS = {"id", "type", "route", "data", "traceback", "uuid", "destination", "pseudo_object"}


def wire(**fields: Any) -> str:
    """A 1.x message as a 1.5.0 client sends it (MessagePayload.__dict__ through orjson)."""
    message = {
        "id": None,
        "type": None,
        "route": None,
        "traceback": None,
        "data": {},
        "uuid": None,
        "destination": None,
        "pseudo_object": None,
    }
    message.update(fields)
    return json.dumps(message)


def raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(encode_value(value))


def one(messages: list[bytes | str]) -> dict[str, Any]:
    """The single 1.x message ``messages`` holds, parsed; checks it is a text message."""
    assert len(messages) == 1
    (message,) = messages
    assert isinstance(message, str), "1.x clients get text messages"
    parsed = json.loads(message)
    assert set(parsed) == FIELDS
    return parsed  # type: ignore[no-any-return]


def registered(name: str = "legacy") -> LegacyCodec:
    codec = LegacyCodec()
    codec.decode(wire(type=VERIFICATION, id=name, uuid="v-1"))
    one(codec.encode(Welcome(name, False, 1.0, 1 << 20)))
    return codec


# --- authorization ---------------------------------------------------------------------------


def test_verification_becomes_hello_without_routes() -> None:
    codec = LegacyCodec()
    (hello,) = codec.decode(wire(type=VERIFICATION, id="bot", uuid="v-1"))
    assert hello == Hello("bot", [], routes_known=False)
    assert codec.name == "bot"


def test_welcome_is_authorized_with_the_verification_uuid() -> None:
    codec = LegacyCodec()
    codec.decode(wire(type=VERIFICATION, id="bot", uuid="v-1"))
    message = one(codec.encode(Welcome("bot", False, 1.0, 1 << 20, ["other"])))
    assert message["type"] == SUCCESS
    assert message["data"] == "Authorized."
    assert message["uuid"] == "v-1"
    assert message["id"] == "bot"


def test_on_hold_is_already_authorized_then_promotion_is_a_bare_success() -> None:
    codec = LegacyCodec()
    codec.decode(wire(type=VERIFICATION, id="bot", uuid="v-1"))
    held = one(codec.encode(Welcome("bot", True, 1.0, 1 << 20)))
    # The exact message 1.5.0 tests for (``message.data == "Already authorized."``), with no
    # uuid, so that it does not look for a pending request.
    assert held["type"] == ERROR
    assert held["data"] == "Already authorized."
    assert held["uuid"] is None
    promoted = one(codec.encode(Welcome("bot", False, 1.0, 1 << 20)))
    assert promoted == {**dict.fromkeys(FIELDS), "type": SUCCESS, "data": "Authorized."}


def test_a_second_verification_is_ignored() -> None:
    codec = registered("bot")
    assert codec.decode(wire(type=VERIFICATION, id="other", uuid="v-2")) == []
    assert codec.name == "bot"


@pytest.mark.parametrize("name", [None, "", 42, ["x"]])
def test_verification_needs_a_name(name: Any) -> None:
    with pytest.raises(errors.ProtocolError):
        LegacyCodec().decode(wire(type=VERIFICATION, id=name, uuid="v-1"))


# --- a 1.x client calls ----------------------------------------------------------------------


def test_request_from_legacy_and_its_response() -> None:
    codec = registered("old")
    (request,) = codec.decode(
        wire(type=REQUEST, id="old", destination="new", route="add", data={"a": 1, "b": [2, 3]}, uuid="u-1")
    )
    assert isinstance(request, Request)
    assert (request.peer, request.route) == ("new", "add")
    assert decode_value(request.args) == {"a": 1, "b": [2, 3]}
    message = one(codec.encode(Response(request.id, "new", raw({"sum": 3}))))
    assert message["type"] == RESPONSE
    assert message["uuid"] == "u-1"
    assert message["data"] == {"sum": 3}
    assert message["id"] == "new"
    assert message["destination"] == "old"
    assert message["route"] == "add"
    # Answered once: a second answer for the same id goes nowhere.
    assert codec.encode(Response(request.id, "new", raw(1))) == []


def test_request_ids_are_distinct_per_request() -> None:
    codec = registered("old")
    ids = {
        frame.id
        for n in range(5)
        for frame in codec.decode(wire(type=REQUEST, id="old", destination="x", route="r", uuid=f"u-{n}"))
        if isinstance(frame, Request)
    }
    assert len(ids) == 5


def test_request_without_data_has_empty_args() -> None:
    codec = registered("old")
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", data=None, uuid="u"))
    assert isinstance(request, Request)
    assert decode_value(request.args) == {}


@pytest.mark.parametrize(
    ("code", "message", "text"),
    [
        (ErrorCode.DESTINATION_NOT_FOUND, "client 'x' is not connected", "Destination not found."),
        (ErrorCode.ROUTE_NOT_FOUND, "client 'x' has no route 'r'", "Route not found"),
        (ErrorCode.NOT_READY, "this client is on hold", "Not authorized."),
        (ErrorCode.PEER_DISCONNECTED, "client 'x' disconnected before answering", None),
        (ErrorCode.PAYLOAD_TOO_LARGE, "too big", None),
    ],
)
def test_failures_reach_a_legacy_caller_as_errors(code: ErrorCode, message: str, text: str | None) -> None:
    codec = registered("old")
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="x", route="r", uuid="u-9"))
    assert isinstance(request, Request)
    error = one(codec.encode(Failure(request.id, "x", code, message)))
    # 1.5.0 raises ClientRuntimeError(data) for an error message carrying its uuid.
    assert error["type"] == ERROR
    assert error["uuid"] == "u-9"
    assert error["data"] == (text or message)
    assert error["traceback"]


def test_remote_error_keeps_message_and_traceback() -> None:
    codec = registered("old")
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", uuid="u"))
    assert isinstance(request, Request)
    failure = Failure(
        request.id, "new", ErrorCode.REMOTE_ERROR, "boom", "ValueError", "Traceback ...\nValueError: boom"
    )
    error = one(codec.encode(failure))
    assert (error["data"], error["traceback"]) == ("boom", "Traceback ...\nValueError: boom")


def test_inform_misses_are_not_sent_to_a_legacy_client() -> None:
    # The router tells an informer about each missing destination with a Failure of id 0.
    codec = registered("old")
    assert codec.encode(Failure(0, "ghost", ErrorCode.DESTINATION_NOT_FOUND, "not connected")) == []


# --- a 1.x client is called ------------------------------------------------------------------


def test_request_to_legacy_swaps_id_and_destination() -> None:
    codec = registered("old")
    message = one(codec.encode(Request(7, "caller", "add", raw({"a": 1}))))
    # 1.x swap: ``id`` is the callee (the 1.x client itself), ``destination`` the caller,
    # which 1.5.0 passes to the handler as its ``source``.
    assert message["type"] == REQUEST
    assert (message["id"], message["destination"]) == ("old", "caller")
    assert (message["route"], message["data"]) == ("add", {"a": 1})
    assert isinstance(message["uuid"], str)
    # 1.5.0 answers with a clone of the request: type response, id = itself.
    reply = wire(type=RESPONSE, id="old", destination="caller", route="add", data=[1, "x"], uuid=message["uuid"])
    assert codec.decode(reply) == [Response(7, "caller", raw([1, "x"]))]
    assert codec.decode(reply) == [], "answered once"


def test_uuids_of_requests_to_legacy_are_distinct() -> None:
    codec = registered("old")
    uuids = {one(codec.encode(Request(n, "caller", "r", raw({}))))["uuid"] for n in range(5)}
    assert len(uuids) == 5


def test_error_from_legacy_handler_is_a_remote_error() -> None:
    codec = registered("old")
    uuid = one(codec.encode(Request(3, "caller", "boom", raw({}))))["uuid"]
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nmymod.CustomError: it broke: badly\n'
    (failure,) = codec.decode(
        wire(type=ERROR, id="old", destination="caller", data="it broke: badly", traceback=traceback, uuid=uuid)
    )
    assert failure == Failure(3, "caller", ErrorCode.REMOTE_ERROR, "it broke: badly", "CustomError", traceback)


def test_route_not_found_from_legacy_and_the_client_then_deaf() -> None:
    codec = registered("old")
    uuid = one(codec.encode(Request(3, "caller", "nope", raw({}))))["uuid"]
    # 1.5.0 addresses this one to itself (destination = its own name) and stops reading.
    (failure,) = codec.decode(
        wire(type=ERROR, id="old", destination="old", data="Route not found", traceback="Route not found", uuid=uuid)
    )
    assert isinstance(failure, Failure)
    assert (failure.id, failure.peer, failure.code) == (3, "caller", ErrorCode.ROUTE_NOT_FOUND)
    assert "nope" in failure.message
    assert codec.deaf
    for frame in (Request(4, "caller", "r", raw({})), Ping(5, "caller"), Information("caller", raw(1))):
        with pytest.raises(Undeliverable) as caught:
            codec.encode(frame)
        assert caught.value.code == ErrorCode.PEER_DISCONNECTED
        assert "stopped reading" in caught.value.message


def test_pseudo_object_answer_becomes_a_clear_error() -> None:
    codec = registered("old")
    uuid = one(codec.encode(Request(3, "caller", "obj", raw({}))))["uuid"]
    data = {"__name__": "Thing", "__attr__": {"a": 1}, "__func__": {}, "__uuid__": "abc"}
    (failure,) = codec.decode(wire(type=RESPONSE, id="old", data=data, uuid=uuid, pseudo_object=True))
    assert isinstance(failure, Failure)
    assert failure.code == ErrorCode.REMOTE_ERROR
    assert "winerpObject" in failure.message


@pytest.mark.parametrize("uuid", ["never-sent", None, 5])
def test_answers_nobody_asked_for_are_dropped(uuid: Any) -> None:
    codec = registered("old")
    assert codec.decode(wire(type=RESPONSE, id="old", data=1, uuid=uuid)) == []
    assert codec.decode(wire(type=ERROR, id="old", data="x", traceback="x", uuid=uuid)) == []


# --- ping --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("destination", "peer"), [(None, HUB), ("other", "other")])
def test_ping_from_legacy(destination: str | None, peer: str) -> None:
    codec = registered("old")
    (ping,) = codec.decode(wire(type=PING, id="old", destination=destination, uuid="p-1"))
    assert isinstance(ping, Ping)
    assert ping.peer == peer
    answer = one(codec.encode(Pong(ping.id, peer)))
    # 1.5.0: ``resp.get("success", False)`` on the data of a ping message with its uuid.
    assert (answer["type"], answer["uuid"], answer["data"]) == (PING, "p-1", {"success": True})


def test_failed_ping_from_legacy_is_false() -> None:
    codec = registered("old")
    (ping,) = codec.decode(wire(type=PING, id="old", destination="ghost", uuid="p-2"))
    assert isinstance(ping, Ping)
    answer = one(codec.encode(Failure(ping.id, "ghost", ErrorCode.DESTINATION_NOT_FOUND, "not connected")))
    assert (answer["type"], answer["uuid"], answer["data"]) == (PING, "p-2", {"success": False})


def test_ping_to_legacy_is_a_probe_its_loop_answers() -> None:
    codec = registered("old")
    probe = one(codec.encode(Ping(11, "caller")))
    assert probe["type"] == FUNCTION_CALL
    # 1.5.0 looks the object up by data["__uuid__"], fails, and answers with an error.
    assert probe["data"]["__uuid__"] not in ("", None)
    reply = wire(
        type=ERROR,
        id="old",
        destination="caller",
        data="The called function has either expired or has never been registered",
        traceback="The called function has either expired or has never been registered",
        uuid=probe["uuid"],
    )
    assert codec.decode(reply) == [Pong(11, "caller")]


# --- information ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "peers"),
    [([], []), (["a", "b"], ["a", "b"]), ([None], []), (None, []), ("a", ["a"]), (["a", None, 3], ["a"])],
)
def test_inform_from_legacy(route: Any, peers: list[str]) -> None:
    codec = registered("old")
    # 1.5.0: inform(data, destinations) sends the destinations in ``route``; [] is everyone,
    # inform(data, None) sends [None].
    (inform,) = codec.decode(wire(type=INFORMATION, id="old", route=route, data={"k": [1, 2]}))
    assert inform == Inform(peers, raw({"k": [1, 2]}))


def test_information_to_legacy_names_the_source_in_id() -> None:
    codec = registered("old")
    message = one(codec.encode(Information("sender", raw({"k": 1}))))
    # 1.5.0 dispatches on_winerp_information(message.data, message.id).
    assert (message["type"], message["id"], message["data"]) == (INFORMATION, "sender", {"k": 1})


# --- function_call (winerpObject methods) and frames with no 1.x form -------------------------


def test_function_call_from_legacy_gets_a_clear_error() -> None:
    codec = registered("old")
    (request,) = codec.decode(
        wire(
            type=FUNCTION_CALL,
            id="old",
            destination="new",
            uuid="f-1",
            data={"__uuid__": "abc", "__func__": "f", "__args__": [], "__kwargs__": {}},
        )
    )
    # Sent to the hub, which has no such route and answers: the error goes back by uuid.
    assert isinstance(request, Request)
    assert request.peer == HUB
    error = one(codec.encode(Failure(request.id, HUB, ErrorCode.ROUTE_NOT_FOUND, "the hub has no route")))
    assert (error["type"], error["uuid"]) == (ERROR, "f-1")
    assert "winerpObject" in error["data"]


def test_presence_has_no_legacy_form() -> None:
    codec = registered("old")
    assert codec.encode(Presence("someone", True)) == []
    assert codec.encode(Presence("someone", False)) == []


@pytest.mark.parametrize("message_type", [SUCCESS, 8, 99, -1])
def test_other_types_are_ignored(message_type: int) -> None:
    assert registered().decode(wire(type=message_type, id="legacy")) == []


def test_bytes_messages_are_read_as_json_too() -> None:
    codec = LegacyCodec()
    assert codec.decode(wire(type=VERIFICATION, id="bot", uuid="v").encode()) == [Hello("bot", [], routes_known=False)]


# --- garbage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "",
        "not json",
        b"\x80\x81\x82",
        "[1, 2]",
        '"type"',
        "{}",
        '{"type": "2"}',
        '{"type": 1.5}',
        '{"type": null}',
        "[" * 100_000,
        wire(type=REQUEST, id="old", destination=None, route="r", uuid="u"),
        wire(type=REQUEST, id="old", destination="x", route=None, uuid="u"),
        wire(type=REQUEST, id="old", destination="x", route="r", data=[1], uuid="u"),
        wire(type=PING, id="old", destination=5, uuid="u"),
    ],
)
def test_garbage_is_a_protocol_error(message: str | bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        registered().decode(message)


# --- values JSON cannot carry -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"blob": b"\x00\x01"}, "bytes at ['blob']"),
        ({"n": 2**64}, "does not fit in 64 bits"),
        ({"n": [1, -(2**63) - 1]}, "['n'][1]"),
        ({"d": {1: "x"}}, "key 1"),
        # Types a native value keeps (API.md "Values") have no JSON form: named, never converted.
        ({"when": datetime.datetime(2024, 1, 2, 3, 4)}, "datetime at ['when'] has no JSON form"),
        ({"day": [datetime.date(2024, 1, 2)]}, "date at ['day'][0]"),
        ({"at": datetime.time(1, 2)}, "time at ['at']"),
        ({"took": datetime.timedelta(seconds=3)}, "timedelta at ['took']"),
        ({"id": uuid.UUID(int=1)}, "UUID at ['id']"),
        ({"price": decimal.Decimal("1.20")}, "Decimal at ['price']"),
        ({"tags": {"a", "b"}}, "set at ['tags']"),
        ({"tags": frozenset({1})}, "frozenset at ['tags']"),
    ],
)
def test_request_args_json_cannot_carry(value: dict[str, Any], fragment: str) -> None:
    codec = registered("old")
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Request(1, "caller", "r", raw(value)))
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert fragment in caught.value.message
    assert "old" in caught.value.message
    # Nothing is left waiting for an answer that will never come.
    assert not codec._served


def test_information_json_cannot_carry_is_undeliverable() -> None:
    with pytest.raises(Undeliverable):
        registered().encode(Information("sender", raw([b"x"])))


@pytest.mark.parametrize(
    "value", [datetime.datetime(2024, 1, 2), {1, 2}, decimal.Decimal("1.5"), uuid.UUID(int=7)], ids=repr
)
def test_typed_values_to_a_legacy_client_are_named(value: Any) -> None:
    codec = registered("old")
    name = type(value).__name__
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Information("sender", raw({"v": value})))
    assert f"{name} at ['v'] has no JSON form" in caught.value.message
    # A return value too: the 1.x caller gets an error naming it, not a string or a hang.
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", uuid="u-7"))
    assert isinstance(request, Request)
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Response(request.id, "new", raw(value)))
    assert caught.value.code == ErrorCode.REMOTE_ERROR
    assert f"{name} at the top level has no JSON form" in caught.value.message


def test_response_json_cannot_carry_then_the_failure_explains() -> None:
    codec = registered("old")
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", uuid="u-5"))
    assert isinstance(request, Request)
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Response(request.id, "new", raw(b"bytes")))
    assert caught.value.code == ErrorCode.REMOTE_ERROR
    # The router answers the 1.x caller with a Failure made of that: it still finds the call.
    error = one(codec.encode(Failure(request.id, "new", caught.value.code, caught.value.message)))
    assert (error["type"], error["uuid"]) == (ERROR, "u-5")
    assert "bytes" in error["data"]


def test_non_dict_arguments_are_undeliverable() -> None:
    with pytest.raises(Undeliverable):
        registered().encode(Request(1, "caller", "r", raw([1, 2])))


def test_undecodable_payload_is_undeliverable() -> None:
    with pytest.raises(Undeliverable):
        registered().encode(Request(1, "caller", "r", msgspec.Raw(b"\xc1")))


def test_64_bit_edges_nan_and_tuples_pass() -> None:
    codec = registered("old")
    value = {"edges": [2**64 - 1, -(2**63)], "t": (1, (2,)), "nan": math.nan, "inf": -math.inf}
    message = one(codec.encode(Request(1, "caller", "r", raw(value))))
    # NaN and infinities become null, as orjson made them in 1.x.
    assert message["data"] == {"edges": [2**64 - 1, -(2**63)], "t": [1, [2]], "nan": None, "inf": None}


def test_deep_nesting_is_refused_before_the_client_chokes() -> None:
    value: Any = "leaf"
    for _ in range(600):
        value = [value]
    with pytest.raises(Undeliverable) as caught:
        registered().encode(Request(1, "caller", "r", raw({"v": value})))
    assert "nested" in caught.value.message


def test_too_large_for_a_legacy_client() -> None:
    codec = registered("old")
    big = "x" * LEGACY_MAX_MESSAGE_SIZE
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Request(1, "caller", "r", raw({"big": big})))
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", uuid="u"))
    assert isinstance(request, Request)
    with pytest.raises(Undeliverable) as caught:
        codec.encode(Response(request.id, "new", raw(big)))
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE
    # A smaller limit can be configured.
    small = LegacyCodec(max_message_size=300)
    small.decode(wire(type=VERIFICATION, id="s", uuid="v"))
    with pytest.raises(Undeliverable):
        small.encode(Request(1, "caller", "r", raw({"v": "y" * 300})))


def test_big_ints_from_json_cross_into_native_values() -> None:
    codec = registered("old")
    message = wire(type=REQUEST, id="old", destination="new", route="r", uuid="u", data={"n": 2**70})
    (request,) = codec.decode(message)
    assert isinstance(request, Request)
    assert decode_value(request.args) == {"n": 2**70}


# --- round trip of every JSON value -----------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json_values_round_trip_both_ways(value: Any) -> None:
    codec = registered("old")
    (request,) = codec.decode(wire(type=REQUEST, id="old", destination="new", route="r", data={"v": value}, uuid="u"))
    assert isinstance(request, Request)
    assert decode_value(request.args) == {"v": value}
    assert one(codec.encode(Response(request.id, "new", request.args)))["data"] == {"v": value}
    (inform,) = codec.decode(wire(type=INFORMATION, id="old", route=[], data=value))
    assert isinstance(inform, Inform)
    assert decode_value(inform.data) == value
    assert one(codec.encode(Information("x", inform.data)))["data"] == value

"""Fuzzing the wire: random, malformed and hostile frames against the sans-IO layers and a live hub.

The sans-IO half feeds generated messages to `Router` (native and winerp 1.x sessions side by
side), to `ClientProtocol.receive` and to `LegacyCodec.decode`, and checks that the only thing
hostile input can cause is `ProtocolError` (which the hub answers by closing that one
connection), and that the router's books stay consistent whatever arrives. The live half sends
the same kind of frames over real websockets to a running hub, then checks that the hub still
routes requests between well-behaved clients.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import websocket
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request as WsRequest

import winerp
from winerp import errors
from winerp.protocol.client import ClientProtocol
from winerp.protocol.codec import NativeCodec
from winerp.protocol.frames import (
    HUB,
    SUBPROTOCOL,
    AddRoutes,
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
    decode_value,
    encode_frame,
    encode_value,
)
from winerp.protocol.legacy import LegacyCodec
from winerp.protocol.router import Router, Session, SessionState
from winerp.sync import Client
from winerp.wire import handshake

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIVE_FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- strategies ----------------------------------------------------------------------------

# Names, routes and ids are drawn mostly from small pools, so generated frames hit real
# sessions, routes and requests in flight, and sometimes from anything at all.
NAMES = ["a", "b", "c", "legacy", HUB, "nobody", "x" * 129, "bad\nname"]
names = st.sampled_from(NAMES) | st.text(max_size=8)
routes = st.sampled_from(["r", "s", "peers", "routes", "status", "missing"]) | st.text(max_size=6)
ids = st.integers(0, 6) | st.sampled_from([-1, 2**63 - 1, 2**64 - 1]) | st.integers(-(2**63), 2**64 - 1)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
# Values msgpack can carry (ext types included: unknown codes must be refused, not crash).
scalars = (
    json_scalars
    | st.binary(max_size=20)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=8))
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)


values = st.recursive(scalars, _containers, max_leaves=10)
json_values = st.recursive(json_scalars, _containers, max_leaves=10)
raw_values = st.builds(lambda v: msgspec.Raw(msgspec.msgpack.encode(v)), values) | st.just(
    msgspec.Raw(encode_value({"x": 1}))
)


def _frame_strategy() -> st.SearchStrategy[Frame]:
    name_lists = st.lists(names, max_size=3)
    return st.one_of(
        st.builds(Hello, names, st.lists(routes, max_size=3), st.integers(-2, 3), st.booleans(), st.booleans()),
        st.builds(
            Welcome, names, st.booleans(), st.floats(allow_nan=False), st.integers(0, 2**40), name_lists, st.booleans()
        ),
        st.builds(AddRoutes, st.lists(routes, max_size=3)),
        st.builds(Request, ids, names, routes, raw_values),
        st.builds(Response, ids, names, raw_values),
        st.builds(Failure, ids, names, st.integers(-5, 20), st.text(max_size=10), names, st.text(max_size=10)),
        st.builds(Inform, name_lists, raw_values),
        st.builds(Information, names, raw_values),
        st.builds(Ping, ids, names),
        st.builds(Pong, ids, names),
        st.builds(Presence, names, st.booleans()),
    )


frames_ = _frame_strategy()
# Arrays shaped like frames, with a frame tag (or none) and fields of any type.
frame_shaped = st.builds(
    lambda tag, fields: msgspec.msgpack.encode([tag, *fields]),
    st.integers(-1, 13) | st.text(max_size=3),
    st.lists(values | names | ids, max_size=7),
)
peers = st.sampled_from(["a", "b", "c", "legacy", HUB])
small_ids = st.integers(0, 4)
# Frames that a well-behaved client could send, aimed at real peers: they get routed.
plausible = st.one_of(
    st.builds(Request, small_ids, peers, st.sampled_from(["r", "s", "peers", "routes", "missing"]), raw_values),
    st.builds(Response, small_ids, peers, raw_values),
    st.builds(Failure, small_ids, peers, st.integers(0, 9), st.text(max_size=10)),
    st.builds(Ping, small_ids, peers),
    st.builds(Pong, small_ids, peers),
    st.builds(Inform, st.lists(peers, max_size=2), raw_values),
    st.builds(AddRoutes, st.lists(routes, max_size=2)),
)
# Several frames in one message, as a client that reads batches gets them (any of them may be bad).
batches = st.lists(plausible.map(encode_frame) | frames_.map(encode_frame) | frame_shaped, min_size=2, max_size=4).map(
    lambda frames: batch_header(len(frames)) + b"".join(frames)
)
native_messages = st.one_of(
    batches,
    plausible.map(encode_frame),
    plausible.map(encode_frame),
    plausible.map(encode_frame),
    frames_.map(encode_frame),
    frame_shaped,
    values.map(msgspec.msgpack.encode),
    st.binary(max_size=64),
    st.text(max_size=32),  # a text message on a native connection
)

uuids = st.sampled_from(["winerp-1", "winerp-2", "winerp-3", "u1"]) | st.text(max_size=8)
legacy_fields = st.fixed_dictionaries(
    {"type": st.integers(-1, 9) | json_values},
    optional={
        "id": names | json_values,
        "destination": names | json_values,
        "route": routes | st.lists(names | st.none(), max_size=3) | json_values,
        "uuid": uuids | json_values,
        "data": json_values,
        "traceback": st.text(max_size=10) | json_values,
        "pseudo_object": json_values,
    },
)
legacy_plausible = st.fixed_dictionaries(
    {
        "type": st.sampled_from([2, 3, 4, 5, 6, 7]),
        "id": st.just("legacy"),
        "destination": peers | st.none(),
        "route": st.sampled_from(["r", "s", "missing"]) | st.lists(peers, max_size=2),
        "uuid": st.sampled_from(["winerp-1", "winerp-2", "winerp-3", "u1", "u2"]),
        "data": json_values,
        "traceback": st.none() | st.text(max_size=10),
        "pseudo_object": st.none() | st.booleans(),
    }
)
legacy_messages = st.one_of(
    legacy_plausible.map(lambda fields: msgspec.json.encode(fields).decode()),
    legacy_plausible.map(lambda fields: msgspec.json.encode(fields).decode()),
    legacy_fields.map(lambda fields: msgspec.json.encode(fields).decode()),
    legacy_fields.map(lambda fields: msgspec.json.encode(fields).decode()),
    st.text(max_size=40),
    st.binary(max_size=40),
    json_values.map(lambda value: msgspec.json.encode(value).decode()),
)

# --- sans-IO -------------------------------------------------------------------------------


def test_deeply_nested_frame_is_a_protocol_error() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(errors.ProtocolError):
        decode_frame(deep)
    with pytest.raises(errors.ProtocolError):
        decode_frame(encode_frame(Inform([], msgspec.Raw(deep))))
    with pytest.raises(errors.ProtocolError):
        decode_value(deep)


@FUZZ
@given(st.binary(max_size=256))
def test_decode_frame_random_bytes(data: bytes) -> None:
    try:
        decode_frame(data)
    except errors.ProtocolError:
        pass


@FUZZ
@given(native_messages)
def test_client_protocol_receive(message: bytes | str) -> None:
    """Whatever a hub (or a man in the middle) sends, the client sees frames or a ProtocolError."""
    protocol = ClientProtocol("a", 1 << 20, now=0.0)
    protocol.hello(["r"])
    if not isinstance(message, bytes):
        message = message.encode()
    try:
        frames = protocol.receive(message, now=1.0)
    except errors.ProtocolError:
        return
    # Payloads carried as Raw are decoded by the core; a bad one is a ProtocolError too.
    for frame, field in itertools.product(frames, ("result", "data")):
        raw = getattr(frame, field, None)
        if isinstance(raw, msgspec.Raw):
            try:
                decode_value(raw)
            except errors.ProtocolError:
                pass


@FUZZ
@given(st.lists(legacy_messages, max_size=10))
def test_legacy_codec_decode(messages: list[str | bytes]) -> None:
    codec = LegacyCodec()
    for message in messages:
        try:
            frames = codec.decode(message)
        except errors.ProtocolError:
            continue
        for frame in frames:
            encode_frame(frame)  # whatever it yields is a well-formed native frame


class _Conn:
    """Stands in for a hub connection: the router only ever hands it back to the I/O layer."""

    def __init__(self, label: str) -> None:
        self.label = label


def _check_books(router: Router, open_sessions: set[Session]) -> None:
    """The router's bookkeeping is consistent (what a fuzzer must never break)."""
    assert router.sessions == open_sessions
    for name, session in router._by_name.items():
        assert session in open_sessions
        assert session.state is SessionState.READY
        assert session.name == name
    for name, queue in router._held.items():
        assert queue, "an empty hold queue is kept"
        assert name in router._by_name, "clients held on a name nobody holds"
        for session in queue:
            assert session.state is SessionState.HELD and session.name == name
            assert session in open_sessions
    for session in open_sessions:
        for request_id, destination in session.awaiting.items():
            assert destination in open_sessions
            assert (session, request_id) in destination.serving
        for requester, request_id in session.serving:
            assert requester in open_sessions
            assert requester.awaiting.get(request_id) is session
    assert set(router.ready_names()) == {s.name for s in open_sessions if s.state is SessionState.READY}


def _check_output(out: list[tuple[Session, bytes | str]], open_sessions: set[Session]) -> None:
    for session, message in out:
        assert session in open_sessions, "a message addressed to a closed session"
        if isinstance(session.codec, NativeCodec):
            assert isinstance(message, bytes)
            frame = decode_frame(message)
            event(f"hub sent {type(frame).__name__}")
            assert not isinstance(frame, (Hello, AddRoutes, Inform)), "the hub sent a client-only frame"
        else:
            assert isinstance(message, str)
            msgspec.json.decode(message)


def _hello(slot: int) -> bytes | str:
    if slot == 3:
        return '{"type": 1, "id": "legacy", "uuid": "u1"}'
    return encode_frame(Hello(["a", "b", "c"][slot], ["r", "s"]))


steps = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(["send", "send", "send", "answer", "close", "hello"]),
        native_messages,
        legacy_messages,
    ),
    min_size=1,
    max_size=30,
)


@FUZZ
@given(steps)
def test_router_survives_anything(script: list[tuple[int, str, bytes | str, str | bytes]]) -> None:
    """Three native clients and a 1.x one send fuzzed messages; only ProtocolError may come out.

    Each starts registered (a, b, c and legacy, with routes r and s). A session that gets a
    ProtocolError is closed, as the hub does, and replaced by a fresh one that registers
    again on a "hello" step, so every routing path (requests in flight, answers, hold
    queues, presence) sees hostile input.
    """
    router = Router(heartbeat=1.0, max_message_size=1 << 20, max_pending=4)
    open_sessions: set[Session] = set()
    slots: list[Session] = []

    def fresh(slot: int) -> Session:
        codec = LegacyCodec() if slot == 3 else NativeCodec()
        session = router.open(codec, _Conn(str(slot)), 0.0)
        open_sessions.add(session)
        return session

    for slot in range(4):
        slots.append(fresh(slot))
        _check_output(router.receive(slots[slot], _hello(slot)), open_sessions)
    for slot, action, native, legacy in script:
        session = slots[slot]
        if action == "close":
            out = router.close(session)
            open_sessions.discard(session)
            slots[slot] = fresh(slot)
            _check_output(out, open_sessions)
            _check_books(router, open_sessions)
            continue
        message = _hello(slot) if action == "hello" else legacy if slot == 3 else native
        if action == "answer" and slot != 3 and session.serving:
            # Answer a request this session really serves, with a fuzzed payload.
            requester, request_id = min(session.serving, key=lambda item: item[1])
            message = encode_frame(Response(request_id, requester.name, msgspec.Raw(native[:1] or b"\xc0")))
            if isinstance(native, str) or len(native) % 2:
                message = encode_frame(Failure(request_id, requester.name, len(native) % 12, "fuzz"))
        try:
            out = router.receive(session, message)
        except errors.ProtocolError:
            event("ProtocolError")
            out = router.close(session)
            open_sessions.discard(session)
            slots[slot] = fresh(slot)
        _check_output(out, open_sessions)
        _check_books(router, open_sessions)
    for session in list(open_sessions):
        out = router.close(session)
        open_sessions.discard(session)
        _check_output(out, open_sessions)
        _check_books(router, open_sessions)
    assert not router._by_name and not router._held


@FUZZ
@given(st.lists(frames_, min_size=1, max_size=12))
def test_router_identity_is_stamped(frames: list[Frame]) -> None:
    """Whatever a registered client claims, what the router forwards names its real sender."""
    router = Router(heartbeat=1.0, max_message_size=1 << 20)
    sender = router.open(NativeCodec(), _Conn("s"), 0.0)
    others = {name: router.open(NativeCodec(), _Conn(name), 0.0) for name in ("a", "b")}
    router.receive(sender, encode_frame(Hello("sender", ["r"])))
    for name, session in others.items():
        router.receive(session, encode_frame(Hello(name, ["r"])))
    for frame in frames:
        try:
            out = router.receive(sender, encode_frame(frame))
        except errors.ProtocolError:
            return  # the hub closes the sender: nothing of it is forwarded
        for destination, message in out:
            if destination is sender:
                continue
            forwarded = decode_frame(message)  # type: ignore[arg-type]
            if isinstance(forwarded, (Request, Response, Failure, Ping, Pong)):
                assert forwarded.peer == "sender"
            elif isinstance(forwarded, Information):
                assert forwarded.source == "sender"
            elif isinstance(forwarded, Presence):
                assert forwarded.name == "sender"


# --- the opening handshake -----------------------------------------------------------------

HEADER_NAMES = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Origin",
    "X-Winerp-Token",
]
header_values = st.sampled_from(
    ["websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", SUBPROTOCOL, "", "a, b", "keep-alive, Upgrade"]
) | st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
header_lines = st.lists(
    st.tuples(
        st.sampled_from(HEADER_NAMES) | st.text(max_size=12), st.sampled_from([": ", ":", " : ", ""]), header_values
    ).map(lambda part: f"{part[0]}{part[1]}{part[2]}"),
    max_size=10,
)
request_lines = st.sampled_from(
    ["GET / HTTP/1.1", "GET / HTTP/1.0", "POST / HTTP/1.1", "GET /x HTTP/1.1 extra"]
) | st.text(max_size=30)


def _check_verdict(head: bytes) -> None:
    verdict = handshake.admit(head, token=None, allowed_origins=None)
    assert isinstance(verdict, (handshake.Admission, handshake.Refusal))
    if isinstance(verdict, handshake.Refusal):
        response = verdict.response()
        assert response.startswith(f"HTTP/1.1 {verdict.status} ".encode())
    else:
        assert handshake.switching_protocols(verdict).startswith(b"HTTP/1.1 101 ")
    parsed = handshake.parse_request(head)
    assert isinstance(parsed, (tuple, handshake.Refusal))


@FUZZ
@given(st.binary(max_size=600))
def test_handshake_random_bytes(head: bytes) -> None:
    """Whatever bytes arrive, the handshake parser answers Admission or Refusal and never raises."""
    _check_verdict(head)
    _check_verdict(head + b"\r\n\r\n")


@FUZZ
@given(request_lines, header_lines)
def test_handshake_header_soup(request_line: str, lines: list[str]) -> None:
    """Request heads made of plausible and broken lines: a verdict every time."""
    _check_verdict(("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("utf-8", "surrogatepass"))


hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?(:[0-9]{1,5})?", fullmatch=True) | st.just("[::1]:13254")
targets = st.from_regex(r"/[A-Za-z0-9._~/-]{0,30}(\?[a-z]=[0-9]{1,4})?", fullmatch=True)
extra_headers = st.lists(
    st.tuples(
        st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip),
    ),
    max_size=5,
)


@FUZZ
@given(hostnames, targets, st.booleans(), st.lists(st.sampled_from(["chat", "v2.json"]), max_size=2), extra_headers)
def test_wsproto_client_handshakes_are_admitted(
    host: str, target: str, native: bool, others: list[str], extra: list[tuple[str, str]]
) -> None:
    """Every request wsproto's client handshake builds (a fresh random key each time) is admitted."""
    subprotocols = [*others, SUBPROTOCOL] if native else []
    request = WsRequest(host=host, target=target, subprotocols=subprotocols, extra_headers=extra)
    head = WSConnection(ConnectionType.CLIENT).send(request)
    verdict = handshake.admit(head, token=None, allowed_origins=None)
    assert isinstance(verdict, handshake.Admission), (verdict, head)
    assert verdict.native == native


# --- a live hub ----------------------------------------------------------------------------


class _Errors(logging.Handler):
    """Collects the hub's error log records: a fuzzed message must never cause one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def hub_errors() -> Iterator[_Errors]:
    handler = _Errors()
    hub_logger = logging.getLogger("winerp.hub")
    hub_logger.addHandler(handler)
    yield handler
    hub_logger.removeHandler(handler)


@pytest.fixture(scope="module")
def live_hub(hub_errors: _Errors) -> Iterator[winerp.Hub]:
    with winerp.Hub(port=0, heartbeat=0.5, handshake_timeout=2.0) as hub:
        yield hub


def _raw(port: int, subprotocol: bool = True) -> websocket.WebSocket:
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}/",
        subprotocols=[SUBPROTOCOL] if subprotocol else None,
        suppress_origin=True,
        timeout=5,
    )


def _serves(port: int) -> None:
    """A fresh pair of clients gets a request answered."""
    with Client("fuzz-server", port=port, reconnect=False) as server:
        server.route("echo")(lambda source, x: x)
        with Client("fuzz-caller", port=port, reconnect=False) as caller:
            assert caller.request("echo", "fuzz-server", timeout=5, x=[1, b"2", "3"]) == [1, b"2", "3"]


def _drain(ws: websocket.WebSocket) -> None:
    """Read what the hub answers until it closes or goes quiet; never hang."""
    ws.settimeout(0.05)
    try:
        for _ in range(50):
            opcode, _ = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
    except (websocket.WebSocketException, OSError):
        return


@LIVE_FUZZ
@given(st.lists(native_messages, min_size=1, max_size=6), st.booleans())
def test_live_hub_native_fuzz(live_hub: winerp.Hub, messages: list[bytes | str], register: bool) -> None:
    ws = _raw(live_hub.port)
    try:
        if register:
            ws.send_binary(encode_frame(Hello("fuzzer", ["r"])))
        for message in messages:
            if isinstance(message, bytes):
                ws.send_binary(message)
            else:
                ws.send(message)
        _drain(ws)
    except (websocket.WebSocketException, OSError):
        pass  # the hub closed on us: that is allowed
    finally:
        ws.close()


@LIVE_FUZZ
@given(st.lists(legacy_messages, min_size=1, max_size=6))
def test_live_hub_legacy_fuzz(live_hub: winerp.Hub, messages: list[str | bytes]) -> None:
    ws = _raw(live_hub.port, subprotocol=False)
    try:
        for message in messages:
            if isinstance(message, bytes):
                ws.send_binary(message)
            else:
                ws.send(message)
        _drain(ws)
    except (websocket.WebSocketException, OSError):
        pass
    finally:
        ws.close()


def test_live_hub_still_serves_after_fuzzing(live_hub: winerp.Hub, hub_errors: _Errors) -> None:
    """Runs after the two fuzzers above (file order): the same hub still routes, and logged no error."""
    _serves(live_hub.port)
    assert [record.getMessage() for record in hub_errors.records] == []
    probe = socket.create_connection(("127.0.0.1", live_hub.port), timeout=5)
    probe.close()


@pytest.mark.parametrize("args", [None, [], {"route": None}, {"route": ["r"]}, {"route": {"r": 1}}, 5])
def test_hub_routes_builtin_with_bad_arguments(args: object) -> None:
    """Found by the router fuzzer: the hub's own ``routes`` route used to raise on such arguments."""
    router = Router(heartbeat=1.0, max_message_size=1 << 20)
    session = router.open(NativeCodec(), _Conn("s"), 0.0)
    router.receive(session, encode_frame(Hello("asker", [])))
    out = router.receive(session, encode_frame(Request(7, HUB, "routes", msgspec.Raw(encode_value(args)))))
    [(destination, message)] = out
    answer = decode_frame(message)  # type: ignore[arg-type]
    assert destination is session and isinstance(answer, Failure) and answer.id == 7
    assert "route=" in answer.message

"""Values arrive as sent: API.md's "Values" table, through a real hub, with both clients.

One hub for the module and two clients that are both caller and responder: the sync client
calls and informs the aio client, the aio client (on an event loop of its own thread) calls
and informs the sync one. Each value goes three ways: as a request argument (what the route
handler received), as the route's return value (what the caller got back) and as inform
data. `assert_same` checks value AND type, recursively, with the table's only changes: a
tuple arrives as a list (as a tuple inside a set, where a list cannot be), a subclass of an
allowed type as that type, a named time zone as a fixed offset with the same UTC offset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import itertools
import math
import re
import socket
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import winerp
import winerp.aio
import winerp.sync
from winerp import errors

pytestmark = pytest.mark.timeout(120)

SYNC_NAME = "values-sync"
AIO_NAME = "values-aio"
TIMEOUT = 10.0


# --- what arrives ----------------------------------------------------------------------------

#: The table's types, most specific first (a datetime is also a date, a bool also an int).
ALLOWED: tuple[type, ...] = (
    bool,
    int,
    float,
    str,
    bytes,
    type(None),
    list,
    tuple,
    dict,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    set,
    frozenset,
)


def base_type(kind: type) -> type:
    """The allowed type a value of type ``kind`` is sent as (a subclass: its nearest allowed base)."""
    for klass in kind.__mro__:
        if klass in ALLOWED:
            return klass
    raise AssertionError(f"{kind!r} is not an allowed type")


def assert_same(got: Any, sent: Any, in_set: bool = False) -> None:
    """Assert that ``got`` is what API.md says ``sent`` arrives as: value and type, recursively."""
    base = base_type(type(sent))
    expected = (tuple if in_set else list) if base is tuple else base
    assert type(got) is expected, f"{sent!r} arrived as {got!r}"
    if base in (list, tuple):
        assert len(got) == len(sent)
        for got_item, sent_item in zip(got, sent):
            assert_same(got_item, sent_item, in_set)
    elif base is dict:
        assert len(got) == len(sent)
        keys = {key: key for key in got}
        for key, item in sent.items():
            assert type(keys[key]) is base_type(type(key)), f"key {key!r} arrived as {keys[key]!r}"
            assert_same(got[key], item)
    elif base in (set, frozenset):
        assert len(got) == len(sent)
        members = {member: member for member in got}
        for member in sent:
            assert_same(members[member], member, in_set=True)
    elif base is float:
        assert got == sent or (math.isnan(got) and math.isnan(sent))
    elif base is decimal.Decimal:
        assert str(got) == str(sent)  # equal, and the same form (NaN, -0, exponent ...)
    elif base in (datetime.datetime, datetime.time):
        assert_same_clock(got, sent)
    else:
        assert got == sent


def assert_same_clock(got: Any, sent: Any) -> None:
    """A datetime or time: the same wall clock and fold, the same UTC offset (or none)."""
    assert got.replace(tzinfo=None) == sent.replace(tzinfo=None)
    assert got.fold == sent.fold
    assert got.utcoffset() == sent.utcoffset()
    if sent.utcoffset() is None:
        assert got.tzinfo is None
    else:
        assert isinstance(got.tzinfo, datetime.timezone)
    if isinstance(sent, datetime.datetime):
        # Equal as instants (== between two zones is stricter at ambiguous times: PEP 495).
        assert got.utcoffset() is None or got.astimezone(datetime.timezone.utc) == sent.astimezone(
            datetime.timezone.utc
        )


# --- values of every row of the table ----------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2**70


class Mode(str, enum.Enum):
    FAST = "fast"


class Name(str):
    """A str subclass with a __str__ of its own: it must arrive as its characters, not that."""

    def __str__(self) -> str:
        return "not this"


class Ratio(float):
    pass


class Blob(bytes):
    pass


SUBCLASSED = st.sampled_from([Colour.RED, Colour.BLUE, Mode.FAST, Name("ada"), Ratio(0.5), Blob(b"\x00")])

fixed_zones = st.timedeltas(
    min_value=datetime.timedelta(hours=-23, minutes=-59), max_value=datetime.timedelta(hours=23, minutes=59)
).map(datetime.timezone)
zones = st.none() | fixed_zones | st.timezones()
special_decimals = st.sampled_from(
    [decimal.Decimal(text) for text in ("-0", "0E-7", "1E+3", "1.20", "-1.5e-30", "NaN", "-sNaN", "Infinity", "-Inf")]
)

hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes(timezones=st.none() | fixed_zones)
    | st.dates()
    | st.times(timezones=st.none() | fixed_zones)
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
)
hashables = st.recursive(
    hashable_scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes(timezones=zones)
    | st.dates()
    | st.times(timezones=zones)
    | st.timedeltas()
    | st.uuids()
    | st.decimals()
    | special_decimals
    | st.sets(hashables, max_size=4)
    | st.frozensets(hashables, max_size=4)
    | SUBCLASSED
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | SUBCLASSED.filter(lambda v: isinstance(v, (int, str))),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


# --- the rig: one hub, two clients that call each other ----------------------------------------


class Recorder:
    """What one client's handlers received, by token; `wait` blocks until a token arrives."""

    def __init__(self) -> None:
        self.args: dict[int, Any] = {}
        self.informs: dict[int, Any] = {}
        self._changed = threading.Condition()

    def echo(self, token: int, value: Any) -> Any:
        with self._changed:
            self.args[token] = value
            self._changed.notify_all()
        return value

    def informed(self, data: Any) -> None:
        with self._changed:
            self.informs[data["token"]] = data["value"]
            self._changed.notify_all()

    def wait_inform(self, token: int) -> Any:
        with self._changed:
            if not self._changed.wait_for(lambda: token in self.informs, TIMEOUT):
                pytest.fail(f"inform {token} did not arrive within {TIMEOUT} s")
            return self.informs[token]


def refused_value(kind: str) -> Any:
    """A value of a type the table refuses, made fresh (sockets and coroutines need closing)."""
    return REFUSED[kind][0]()


class Rig:
    """The module's hub and clients. ``send(flavour, ...)`` uses the sync or the aio client."""

    def __init__(self) -> None:
        self.hub = winerp.Hub(port=0)
        self.hub.start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-values-loop", daemon=True)
        self.thread.start()
        self.sync_seen = Recorder()
        self.aio_seen = Recorder()
        self.sync = winerp.sync.Client(SYNC_NAME, port=self.hub.port)
        self._serve_sync()
        self.sync.start(timeout=TIMEOUT)
        self.aio: winerp.aio.Client = self.on_loop(self._start_aio())
        self.tokens = itertools.count(1)

    def _serve_sync(self) -> None:
        seen = self.sync_seen

        @self.sync.route
        def echo(source: str, token: int, value: Any) -> Any:
            return seen.echo(token, value)

        @self.sync.route
        def give(source: str, kind: str) -> Any:
            return refused_value(kind)

        @self.sync.event
        def on_winerp_information(data: Any, source: str) -> None:
            seen.informed(data)

    async def _start_aio(self) -> winerp.aio.Client:
        client = winerp.aio.Client(AIO_NAME, port=self.hub.port)
        seen = self.aio_seen

        @client.route
        async def echo(source: str, token: int, value: Any) -> Any:
            return seen.echo(token, value)

        @client.route
        async def give(source: str, kind: str) -> Any:
            return refused_value(kind)

        @client.event
        async def on_winerp_information(data: Any, source: str) -> None:
            seen.informed(data)

        await client.start(timeout=TIMEOUT)
        return client

    def on_loop(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT * 2)

    def receiver(self, flavour: str) -> Recorder:
        """The recorder of the client that ``flavour``'s client talks to."""
        return self.aio_seen if flavour == "sync" else self.sync_seen

    def request(self, flavour: str, route: str, **kwargs: Any) -> Any:
        if flavour == "sync":
            return self.sync.request(route, AIO_NAME, timeout=TIMEOUT, **kwargs)
        return self.on_loop(self.aio.request(route, SYNC_NAME, timeout=TIMEOUT, **kwargs))

    def inform(self, flavour: str, data: Any) -> None:
        if flavour == "sync":
            self.sync.inform(data, AIO_NAME)
        else:
            self.on_loop(self.aio.inform(data, SYNC_NAME))

    def round_trip(self, flavour: str, value: Any) -> None:
        """Send ``value`` all three ways and check what arrives each time."""
        token = next(self.tokens)
        seen = self.receiver(flavour)
        returned = self.request(flavour, "echo", token=token, value=value)
        assert_same(seen.args[token], value)  # as a request argument
        assert_same(returned, value)  # as a return value
        self.inform(flavour, {"token": token, "value": value})
        assert_same(seen.wait_inform(token), value)  # as inform data

    def close(self) -> None:
        self.sync.close()
        self.on_loop(self.aio.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()
        self.hub.stop()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    made = Rig()
    try:
        yield made
    finally:
        made.close()


FLAVOURS = pytest.mark.parametrize("flavour", ["sync", "aio"])


# --- every row of the table, generated ---------------------------------------------------------


@FLAVOURS
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=values)
def test_values_arrive_as_sent(rig: Rig, flavour: str, value: Any) -> None:
    rig.round_trip(flavour, value)


# --- each row once, by hand ----------------------------------------------------------------------

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ROWS: dict[str, Any] = {
    "scalars": [None, True, False, 0, -(2**63), 2**64 - 1, 2**200, -(2**90), 0.1, -0.0, math.inf, "é✓", b"\x00\xff"],
    "nesting": {"a": [{"b": ({"c": [b"d"]},)}], "e": []},
    "int keys": {1: "one", -5: {2: [3]}, 2**70: "wide", "1": "a str key"},
    "tuple": (1, (2, "x"), []),
    "datetimes": [
        datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        datetime.datetime(
            1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-23, seconds=-59, microseconds=-1))
        ),
        datetime.datetime(
            9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        ),
        datetime.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
    ],
    "dates and times": [
        datetime.date(1, 1, 1),
        datetime.date(9999, 12, 31),
        datetime.time(0, 0),
        datetime.time(23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
        datetime.time(12, 0, fold=1),
    ],
    "timedeltas": [
        datetime.timedelta(0),
        datetime.timedelta(days=-999999999),
        datetime.timedelta.max,
        -datetime.timedelta(microseconds=1),
    ],
    "uuids": [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()],
    "decimals": [
        decimal.Decimal(text)
        for text in (
            "0",
            "-0",
            "1.500",
            "1E+30",
            "-2.5e-300",
            "NaN",
            "sNaN",
            "-Infinity",
            "123456789012345678901234567890.123",
        )
    ],
    "sets": [set(), {1, "a", b"b", (1, (2,)), frozenset({3})}, frozenset({datetime.date(2000, 1, 1), 2**80})],
}


@FLAVOURS
@pytest.mark.parametrize("row", list(ROWS))
def test_each_row(rig: Rig, flavour: str, row: str) -> None:
    rig.round_trip(flavour, ROWS[row])


@FLAVOURS
def test_int_keys_keep_their_type(rig: Rig, flavour: str) -> None:
    got = rig.request(flavour, "echo", token=next(rig.tokens), value={1: "a", "1": "b", 2**64: {3: None}})
    assert got == {1: "a", "1": "b", 2**64: {3: None}}
    assert [type(key) for key in got] == [int, str, int]
    assert [type(key) for key in got[2**64]] == [int]


@FLAVOURS
def test_subclasses_arrive_as_their_base_type(rig: Rig, flavour: str) -> None:
    sent = [Colour.RED, Colour.BLUE, Mode.FAST, Name("ada"), Ratio(0.5), Blob(b"x"), {Name("k"): 1, Colour.RED: 2}]
    got = rig.request(flavour, "echo", token=next(rig.tokens), value=sent)
    assert got == [1, 2**70, "fast", "ada", 0.5, b"x", {"k": 1, 1: 2}]
    assert [type(item) for item in got] == [int, int, str, str, float, bytes, dict]
    assert [type(key) for key in got[-1]] == [str, int]


@FLAVOURS
def test_a_named_zone_arrives_as_its_offset_at_that_instant(rig: Rig, flavour: str) -> None:
    winter = datetime.datetime(2024, 1, 15, 12, 0, tzinfo=PARIS)
    summer = datetime.datetime(2024, 7, 15, 12, 0, tzinfo=PARIS)
    got = rig.request(flavour, "echo", token=next(rig.tokens), value=[winter, summer])
    assert got == [winter, summer]
    assert [moment.tzinfo for moment in got] == [
        datetime.timezone(datetime.timedelta(hours=1)),
        datetime.timezone(datetime.timedelta(hours=2)),
    ]


# --- anything else: TypeError before anything is sent ------------------------------------------


@dataclasses.dataclass
class Point:
    x: int


class StructPoint(msgspec.Struct):
    x: int


class Plain(enum.Enum):
    A = 1


class Opaque:
    pass


async def _coroutine() -> None:
    pass


def _close(value: Any) -> None:
    for thing in (value, *(value.values() if isinstance(value, dict) else ())):
        if hasattr(thing, "close"):
            thing.close()


#: kind -> (a factory of a refused value, the type name the error must give)
REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "instance": (Opaque, "Opaque"),
    "dataclass": (lambda: Point(1), "Point"),
    "struct": (lambda: StructPoint(1), "StructPoint"),
    "enum": (lambda: Plain.A, "Plain"),
    "object": (object, "object"),
    "bytearray": (lambda: bytearray(b"x"), "bytearray"),
    "memoryview": (lambda: memoryview(b"x"), "memoryview"),
    "socket": (socket.socket, "socket"),
    "coroutine": (_coroutine, "coroutine"),
    "function": (lambda: len, "builtin_function_or_method"),
    "float key": (lambda: {1.5: "x"}, "dict key of type float"),
    "tuple key": (lambda: {(1, 2): "x"}, "dict key of type tuple"),
    "in a set": (lambda: {1, Opaque()}, "Opaque"),
    "deep inside": (lambda: {"a": [1, {"b": (2, Point(3))}]}, "Point at ['value']['a'][1]['b'][1]"),
}


@FLAVOURS
@pytest.mark.parametrize("kind", list(REFUSED))
def test_anything_else_is_a_type_error_and_nothing_is_sent(rig: Rig, flavour: str, kind: str) -> None:
    seen = rig.receiver(flavour)
    token = next(rig.tokens)
    bad = refused_value(kind)
    try:
        with pytest.raises(TypeError, match=re.escape(REFUSED[kind][1])):
            rig.request(flavour, "echo", token=token, value=bad)
        with pytest.raises(TypeError, match=REFUSED[kind][1].split(" at ")[0]):
            rig.inform(flavour, {"token": token, "value": bad})
    finally:
        _close(bad)
    # Nothing left: what is sent next arrives, alone (frames from one client stay in order).
    after = next(rig.tokens)
    assert rig.request(flavour, "echo", token=after, value="next") == "next"
    rig.inform(flavour, {"token": after, "value": "next"})
    assert seen.wait_inform(after) == "next"
    assert token not in seen.args
    assert token not in seen.informs


@FLAVOURS
@pytest.mark.parametrize("kind", ["dataclass", "enum", "bytearray", "float key"])
def test_a_refused_return_value_is_a_remote_type_error(rig: Rig, flavour: str, kind: str) -> None:
    with pytest.raises(errors.ClientRuntimeError) as caught:
        rig.request(flavour, "give", kind=kind)
    assert caught.value.remote_type == "TypeError"
    assert REFUSED[kind][1] in caught.value.remote_message
    assert rig.request(flavour, "echo", token=next(rig.tokens), value=1) == 1

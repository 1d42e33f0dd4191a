"""No error ends the hub's loop silently: a bug while handling one connection costs that one alone.

Each test breaks one method of one real hub (on the instance, for one connection, once),
never a socket: the victim is closed with 1011 and the traceback is logged, and the
other clients go on working through the same hub. The client's own safety net (its reader
thread) is tested in tests/sync/test_client.py and tests/aio/test_client.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import winerp
from winerp.client.writer import Writer
from winerp.hub.connection import HubConnection
from winerp.protocol.frames import HUB, Hello, Ping, decode_frame, encode_frame
from winerp.sync import Client

try:
    from conftest import wait_for
    from security_tools import raw_ws, read_until_closed
except ImportError:  # tests/ is a package
    from tests.conftest import wait_for
    from tests.security_tools import raw_ws, read_until_closed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(hub: winerp.Hub) -> Iterator[tuple[Client, Client]]:
    """Two bystanders on the hub: a server with an ``echo`` route and a caller."""
    with Client("bystander-server", port=hub.port) as server:
        server.route("echo")(lambda source, x: x)
        with Client("bystander-caller", port=hub.port) as caller:
            assert caller.request("echo", "bystander-server", timeout=5, x=1) == 1
            yield server, caller


def _break_once(hub: winerp.Hub, method: str, victim: str) -> list[str]:
    """Make ``hub.<method>`` raise once, for the connection registered as ``victim``; returns the log of it."""
    original: Callable[..., Any] = getattr(hub, method)
    raised: list[str] = []

    def broken(connection: Any, *args: Any) -> Any:
        if connection.name == victim and not raised:
            raised.append(method)
            raise RuntimeError(f"a bug in Hub.{method}")
        return original(connection, *args)

    setattr(hub, method, broken)
    return raised


def _break_connection_once(monkeypatch: pytest.MonkeyPatch, method: str, victim: str) -> list[str]:
    """Make ``HubConnection.<method>`` raise once, for the connection registered as ``victim``."""
    original: Callable[..., Any] = getattr(HubConnection, method)
    raised: list[str] = []

    def broken(connection: HubConnection, *args: Any) -> Any:
        if connection.name == victim and not raised:
            raised.append(method)
            raise RuntimeError(f"a bug in HubConnection.{method}")
        return original(connection, *args)

    monkeypatch.setattr(HubConnection, method, broken)
    return raised


def _assert_victim_closed_with_1011(ws: Any) -> None:
    code, reason = read_until_closed(ws, timeout=5)
    assert (code, reason) == (1011, "internal error in the hub")


def _assert_hub_serves(hub: winerp.Hub, pair: tuple[Client, Client], caplog: pytest.LogCaptureFixture) -> None:
    _, caller = pair
    assert caller.request("echo", "bystander-server", timeout=5, x=[2, "three"]) == [2, "three"]
    assert caller.ping("bystander-server", timeout=5)
    assert hub._thread is not None and hub._thread.is_alive()
    assert sorted(hub.clients) == ["bystander-caller", "bystander-server"]
    with Client("newcomer", port=hub.port, reconnect=False) as newcomer:
        assert newcomer.request("echo", "bystander-server", timeout=5, x=3) == 3
    assert "Traceback" in caplog.text


def test_a_bug_while_writing_to_one_client_costs_that_client_only(
    hub: winerp.Hub, pair: tuple[Client, Client], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes are gathered and flushed for every client after the loop's turn: the bug strikes there."""
    raised = _break_connection_once(monkeypatch, "flush", "victim")
    with caplog.at_level(logging.INFO, logger="winerp"):
        ws = raw_ws(hub.port)
        ws.send_binary(encode_frame(Hello("victim", [])))  # its welcome is the write that fails
        _assert_victim_closed_with_1011(ws)
        ws.close()
        assert raised == ["flush"]
        _assert_hub_serves(hub, pair, caplog)
    assert "a bug in HubConnection.flush" in caplog.text
    assert "client 'victim' (127.0.0.1:" in caplog.text and "left: internal error in the hub" in caplog.text


def test_a_bug_while_reading_from_one_client_costs_that_client_only(
    hub: winerp.Hub, pair: tuple[Client, Client], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="winerp"):
        ws = raw_ws(hub.port)
        ws.send_binary(encode_frame(Hello("victim", [])))
        assert type(decode_frame(ws.recv())).__name__ == "Welcome"
        raised = _break_once(hub, "_on_frames", "victim")
        ws.send_binary(encode_frame(Ping(1, HUB)))
        _assert_victim_closed_with_1011(ws)
        ws.close()
        assert raised == ["_on_frames"]
        _assert_hub_serves(hub, pair, caplog)
    assert "a bug in Hub._on_frames" in caplog.text


def test_a_bug_while_sweeping_one_client_costs_that_client_only(
    hub: winerp.Hub, pair: tuple[Client, Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat sweep looks at every connection twice a second."""
    with caplog.at_level(logging.INFO, logger="winerp"):
        ws = raw_ws(hub.port)
        ws.send_binary(encode_frame(Hello("victim", [])))
        assert type(decode_frame(ws.recv())).__name__ == "Welcome"
        raised = _break_once(hub, "_sweep_one", "victim")
        _assert_victim_closed_with_1011(ws)
        ws.close()
        assert raised == ["_sweep_one"]
        _assert_hub_serves(hub, pair, caplog)


def test_a_bug_in_the_loop_itself_does_not_stop_the_hub(
    hub: winerp.Hub, pair: tuple[Client, Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The last net: an error no connection owns (here: accepting) is logged, and the loop goes on."""
    original = hub._accept
    raised: list[bool] = []

    def broken(now: float) -> None:
        if not raised:
            raised.append(True)
            raise RuntimeError("a bug in Hub._accept")
        original(now)

    hub._accept = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="winerp"):
        # The connection that met the bug waits in the listen queue: the next turn accepts it.
        with Client("latecomer", port=hub.port, reconnect=False) as latecomer:
            assert latecomer.request("echo", "bystander-server", timeout=5, x=4) == 4
        assert raised == [True]
        _assert_hub_serves(hub, pair, caplog)
    assert "a bug in Hub._accept" in caplog.text


def test_a_bug_in_a_clients_flusher_thread_is_logged_and_the_client_reconnects(
    hub: winerp.Hub, pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The flusher writes a burst of informs (winerp.client.writer.Writer.send_soon).
    original: Callable[..., Any] = Writer._drain
    raised: list[bool] = []

    def broken(writer: Writer, wait: bool) -> None:
        if threading.current_thread().name.startswith("winerp-writer-sender") and not raised:
            raised.append(True)
            raise RuntimeError("a bug in the flusher")
        original(writer, wait)

    monkeypatch.setattr(Writer, "_drain", broken)
    with caplog.at_level(logging.INFO, logger="winerp"), Client("sender", port=hub.port) as sender:
        deadline = time.monotonic() + 10
        while not raised and time.monotonic() < deadline:
            for number in range(200):
                try:
                    sender.inform(number, "bystander-server")
                except winerp.ClientNotReadyError:
                    break  # the connection the bug closed is already gone
        assert raised == [True]
        wait_for(lambda: "reconnected to" in caplog.text)
        assert sender.request("echo", "bystander-server", timeout=5, x=5) == 5
    failures = [r for r in caplog.records if r.exc_info and "a bug in the flusher" in str(r.exc_info[1])]
    assert failures and failures[0].levelno == logging.ERROR, caplog.text

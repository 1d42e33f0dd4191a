"""Security options and limits: token, TLS, Origin, size and other limits, sender identity.

Each option is checked from the outside, the way a user meets it: sync and aio clients,
the ``winerp-hub`` command line, the ``WINERP_TOKEN`` environment variable, and raw HTTP or
websocket traffic where a client library would hide what the hub answered. TLS uses a
throwaway certificate authority made by ``trustme`` for each test session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trustme
import websocket

import winerp
import winerp.aio
import winerp.client.core
from winerp import errors
from winerp.protocol.frames import (
    MAX_NAME_LENGTH,
    ErrorCode,
    Failure,
    Hello,
    Inform,
    Request,
    Response,
    decode_frame,
    encode_frame,
    encode_value,
)
from winerp.sync import Client
from winerp.wire import handshake

try:
    from conftest import ROOT, core_request, wait_for, winerp_threads
    from security_tools import assert_serves, http_exchange, raw_ws, read_until_closed, status_line, upgrade_request
except ImportError:  # tests/ imported as a package
    from tests.conftest import ROOT, core_request, wait_for, winerp_threads
    from tests.security_tools import (
        assert_serves,
        http_exchange,
        raw_ws,
        read_until_closed,
        status_line,
        upgrade_request,
    )

pytestmark = pytest.mark.timeout(60)

TOKEN = "correct horse battery staple"
#: "Promptly" in the API contract is well under a second; generous for a loaded machine.
PROMPT = 2.0


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set WINERP_TOKEN themselves; one left in the environment would change every hub."""
    monkeypatch.delenv("WINERP_TOKEN", raising=False)


def _echo_pair(port: int, **options: object) -> tuple[Client, Client]:
    server = Client("sec-server", port=port, reconnect=False, **options)
    server.route("echo")(lambda source, x: (source, x))
    server.route("blob")(lambda source, size: b"x" * size)
    release: concurrent.futures.Future[str] = concurrent.futures.Future()
    server.route("wait")(lambda source: release.result(10))
    server.release = release  # type: ignore[attr-defined]
    server.start(timeout=5)
    caller = Client("sec-caller", port=port, reconnect=False, **options)
    caller.start(timeout=5)
    return server, caller


# --- token ----------------------------------------------------------------------------------


@pytest.fixture
def token_hub() -> Iterator[winerp.Hub]:
    with winerp.Hub(port=0, token=TOKEN) as hub:
        yield hub


def test_right_token_is_let_in(token_hub: winerp.Hub) -> None:
    server, caller = _echo_pair(token_hub.port, token=TOKEN)
    try:
        assert caller.authorized and server.authorized
        assert caller.request("echo", "sec-server", timeout=5, x=1) == ["sec-caller", 1]
    finally:
        caller.close()
        server.close()


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
@pytest.mark.parametrize("reconnect", [False, True])
def test_wrong_or_missing_token_is_unauthorized_at_start(
    token_hub: winerp.Hub, token: str | None, reconnect: bool
) -> None:
    client = Client("intruder", port=token_hub.port, token=token, reconnect=reconnect)
    started = time.monotonic()
    with pytest.raises(errors.UnauthorizedError):
        client.start(timeout=10)
    assert time.monotonic() - started < PROMPT, "a refused token must not be retried until the timeout"
    # Never retried: the client's thread is gone, and it never got in.
    wait_for(lambda: not [t for t in winerp_threads() if t.endswith("-intruder")], timeout=5)
    assert not client.authorized and not client.is_ready
    assert "intruder" not in token_hub.clients
    client.close()


def test_wrong_token_aio(token_hub: winerp.Hub) -> None:
    asyncio.run(_wrong_token_aio(token_hub))


async def _wrong_token_aio(token_hub: winerp.Hub) -> None:
    client = winerp.aio.Client("intruder", port=token_hub.port, token="wrong", reconnect=True)
    with pytest.raises(errors.UnauthorizedError):
        await asyncio.wait_for(client.start(timeout=10), PROMPT)
    await client.close()
    async with winerp.aio.Client("aio-ok", port=token_hub.port, token=TOKEN) as good:
        assert await good.ping()


@pytest.mark.parametrize("token", ["pässwörd ✓", "  padded\n", "tab\tinside", "x" * 4000])
def test_any_printable_token_works(token: str) -> None:
    """Non-ASCII tokens, and tokens read with a stray newline, match on both sides."""
    with winerp.Hub(port=0, token=token) as hub:
        assert_serves(hub.port, token=token)
        with pytest.raises(errors.UnauthorizedError):
            Client("near-miss", port=hub.port, token=token.strip() + "!", reconnect=False).start(timeout=5)


def test_refusal_is_a_plain_401_with_a_reason(token_hub: winerp.Hub) -> None:
    for offered in (None, "wrong"):
        extra = {} if offered is None else {"X-Winerp-Token": offered}
        answer = http_exchange(token_hub.port, upgrade_request(token_hub.port, **extra))
        assert status_line(answer) == "HTTP/1.1 401 Unauthorized"
        assert answer.endswith(b"wrong or missing token\n")
    # A winerp 1.x client cannot present a token: it is refused the same way.
    answer = http_exchange(token_hub.port, upgrade_request(token_hub.port, Sec_WebSocket_Protocol=None))
    assert status_line(answer) == "HTTP/1.1 401 Unauthorized"


def test_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    real = handshake.compare_digest
    assert real is hmac.compare_digest or real.__module__ in ("_operator", "operator")

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(handshake, "compare_digest", spy)
    head = upgrade_request(1, X_Winerp_Token="guess")
    verdict = handshake.admit(head, token=TOKEN, allowed_origins=None)
    assert isinstance(verdict, handshake.Refusal) and verdict.status == 401
    assert compared == [(b"guess", TOKEN.encode())]


def test_token_from_the_environment_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINERP_TOKEN", TOKEN)
    with winerp.Hub(port=0) as hub:
        assert hub.token == TOKEN
        assert_serves(hub.port)  # the clients read WINERP_TOKEN too
        with pytest.raises(errors.UnauthorizedError):
            Client("explicit-wrong", port=hub.port, token="wrong", reconnect=False).start(timeout=5)
        monkeypatch.delenv("WINERP_TOKEN")
        with pytest.raises(errors.UnauthorizedError):
            Client("no-env", port=hub.port, reconnect=True).start(timeout=5)
        assert_serves(hub.port, token=TOKEN)


def _run_hub_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """Start ``winerp-hub --port 0 ...``; return the process and the port it printed."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from winerp.cli import hub_main; sys.exit(hub_main())",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"winerp-hub did not start: {line!r} {err[-2000:]}")
    port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
    return proc, port


def _stop_cli(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail("winerp-hub did not stop on SIGTERM")


def test_cli_token_flag_and_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k != "WINERP_TOKEN"}
    proc, port = _run_hub_cli("--token", TOKEN, env=env)
    try:
        assert_serves(port, token=TOKEN)
        with pytest.raises(errors.UnauthorizedError):
            Client("no-token", port=port, reconnect=True).start(timeout=5)
    finally:
        _stop_cli(proc)
    proc, port = _run_hub_cli(env=dict(env, WINERP_TOKEN=TOKEN))
    try:
        assert_serves(port, token=TOKEN)
        with pytest.raises(errors.UnauthorizedError):
            Client("bad-token", port=port, token="nope", reconnect=False).start(timeout=5)
    finally:
        _stop_cli(proc)


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def tls_hub(server_context: ssl.SSLContext) -> Iterator[winerp.Hub]:
    with winerp.Hub(port=0, ssl_context=server_context, handshake_timeout=2.0) as hub:
        yield hub


def test_tls_sync_clients(tls_hub: winerp.Hub, client_context: ssl.SSLContext) -> None:
    server, caller = _echo_pair(tls_hub.port, ssl_context=client_context)
    try:
        informs: list[object] = []

        @server.event
        def on_winerp_information(data: object, source: str) -> None:
            informs.append((data, source))

        for i in range(50):
            assert caller.request("echo", "sec-server", timeout=5, x=i) == ["sec-caller", i]
        big = os.urandom(3 * 1024 * 1024)
        assert caller.request("echo", "sec-server", timeout=20, x=big) == ["sec-caller", big]
        caller.inform({"over": "tls"}, "sec-server")
        wait_for(lambda: informs, timeout=5)
        assert informs == [({"over": "tls"}, "sec-caller")]
        assert isinstance(caller._core._connection.sock, ssl.SSLSocket)  # type: ignore[union-attr]
    finally:
        caller.close()
        server.close()


def test_tls_aio_clients(tls_hub: winerp.Hub, client_context: ssl.SSLContext) -> None:
    asyncio.run(_tls_aio_clients(tls_hub, client_context))


async def _tls_aio_clients(tls_hub: winerp.Hub, client_context: ssl.SSLContext) -> None:
    async with winerp.aio.Client("aio-server", port=tls_hub.port, ssl_context=client_context) as server:

        @server.route
        async def double(source: str, x: int) -> int:
            return 2 * x

        @server.route
        async def echo(source: str, x: bytes) -> bytes:
            return x

        async with winerp.aio.Client("aio-caller", port=tls_hub.port, ssl_context=client_context) as caller:
            results = await asyncio.gather(*(caller.request("double", "aio-server", timeout=5, x=i) for i in range(20)))
            assert results == [2 * i for i in range(20)]
            # Many TLS records per message, read by the event loop (the loop reader).
            big = os.urandom(3 * 1024 * 1024)
            assert await caller.request("echo", "aio-server", timeout=20, x=big) == big
            assert await caller.ping("aio-server")


def test_tls_hub_refuses_plain_and_untrusting_clients(tls_hub: winerp.Hub) -> None:
    started = time.monotonic()
    with pytest.raises(errors.WinerpError):
        Client("plain", port=tls_hub.port, reconnect=False).start(timeout=5)
    untrusting = ssl.create_default_context()  # does not trust the test CA
    with pytest.raises(errors.HubUnreachable, match=r"(?i)certificate"):
        Client("untrusting", port=tls_hub.port, ssl_context=untrusting, reconnect=False).start(timeout=5)
    assert time.monotonic() - started < 5
    assert tls_hub.clients == []


def test_tls_client_meeting_a_plain_hub_fails_at_once(hub: winerp.Hub, client_context: ssl.SSLContext) -> None:
    """The hub refuses a TLS ClientHello at once (it is not HTTP), so the client need not time out."""
    started = time.monotonic()
    with pytest.raises(errors.HubUnreachable):
        Client("tls-to-plain", port=hub.port, ssl_context=client_context, reconnect=False).start(timeout=10)
    assert time.monotonic() - started < PROMPT
    assert handshake.could_be_http(b"G") and handshake.could_be_http(b"GET / HTTP/1.1\r\n")
    assert not handshake.could_be_http(b"\x16\x03\x01") and not handshake.could_be_http(b"SSH-2.0-x")


def test_tls_hub_survives_garbage_and_silence(tls_hub: winerp.Hub, client_context: ssl.SSLContext) -> None:
    for data in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(2000), b"\x16\x03\x01\x00\x05hello"):
        http_exchange(tls_hub.port, data, shut_write=True)
    silent = [socket.create_connection(("127.0.0.1", tls_hub.port), timeout=5) for _ in range(10)]
    try:
        assert_serves(tls_hub.port, ssl_context=client_context)
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(100) == b"", "a silent TLS connection outlived the handshake time"
    finally:
        for sock in silent:
            sock.close()


def test_tls_with_token(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    with winerp.Hub(port=0, ssl_context=server_context, token=TOKEN) as hub:
        assert_serves(hub.port, ssl_context=client_context, token=TOKEN)
        with pytest.raises(errors.UnauthorizedError):
            Client("tls-intruder", port=hub.port, ssl_context=client_context, token="x").start(timeout=5)


def test_cli_certfile_keyfile(ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "hub.pem", tmp_path / "hub.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    proc, port = _run_hub_cli("--certfile", str(certfile), "--keyfile", str(keyfile))
    try:
        assert_serves(port, ssl_context=client_context)
        with pytest.raises(errors.WinerpError):
            Client("plain", port=port, reconnect=False).start(timeout=5)
    finally:
        _stop_cli(proc)


# --- Origin ---------------------------------------------------------------------------------


def test_browser_origin_is_refused(hub: winerp.Hub) -> None:
    for origin in ("http://127.0.0.1:8000", "https://evil.example", "null", "file://"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            raw_ws(hub.port, origin=origin)
        assert refused.value.status_code == 403
        answer = http_exchange(hub.port, upgrade_request(hub.port, Origin=origin))
        assert status_line(answer) == "HTTP/1.1 403 Forbidden"
        assert b"is not allowed" in answer
    # winerp 1.x clients and ours send no Origin: let in.
    raw_ws(hub.port).close()
    raw_ws(hub.port, native=False).close()
    assert_serves(hub.port)


def test_allowed_origin_is_let_in() -> None:
    allowed = "https://dashboard.example"
    with winerp.Hub(port=0, allowed_origins=[allowed]) as hub:
        ws = raw_ws(hub.port, origin=allowed)
        ws.send_binary(encode_frame(Hello("from-browser", [])))
        assert type(decode_frame(ws.recv())).__name__ == "Welcome"
        ws.close()
        for other in ("https://evil.example", allowed.upper(), allowed + ".evil.example", f"{allowed}, {allowed}"):
            answer = http_exchange(hub.port, upgrade_request(hub.port, Origin=other))
            assert status_line(answer) == "HTTP/1.1 403 Forbidden", other
        assert_serves(hub.port)


def test_cli_allow_origin() -> None:
    proc, port = _run_hub_cli("--allow-origin", "https://a.example", "--allow-origin", "https://b.example")
    try:
        for origin in ("https://a.example", "https://b.example"):
            raw_ws(port, origin=origin).close()
        answer = http_exchange(port, upgrade_request(port, Origin="https://c.example"))
        assert status_line(answer) == "HTTP/1.1 403 Forbidden"
        assert_serves(port)
    finally:
        _stop_cli(proc)


# --- limits ---------------------------------------------------------------------------------


def test_message_size_limit_of_the_hub_reaches_the_sender() -> None:
    limit = 256 * 1024
    with winerp.Hub(port=0, max_message_size=limit) as hub:
        server, caller = _echo_pair(hub.port)
        try:
            started = time.monotonic()
            with pytest.raises(errors.PayloadTooLarge):
                caller.request("echo", "sec-server", timeout=10, x=b"x" * limit)
            with pytest.raises(errors.PayloadTooLarge):
                caller.inform(b"x" * limit, "sec-server")
            # A reply too large reaches the requester as PayloadTooLarge, never as a hang.
            with pytest.raises(errors.PayloadTooLarge):
                caller.request("blob", "sec-server", timeout=10, size=limit)
            assert time.monotonic() - started < PROMPT
            assert caller.request("blob", "sec-server", timeout=5, size=limit // 2) == b"x" * (limit // 2)
            assert server.is_ready and caller.is_ready
        finally:
            caller.close()
            server.close()


def test_message_size_limit_of_the_client() -> None:
    with winerp.Hub(port=0) as hub, Client("small", port=hub.port, max_message_size=1000) as small:
        with pytest.raises(errors.PayloadTooLarge):
            small.inform(b"x" * 2000)
        assert small.ping()


def test_raw_sender_over_the_limit_is_cut_off_with_1009() -> None:
    with winerp.Hub(port=0, max_message_size=64 * 1024) as hub:
        ws = raw_ws(hub.port)
        ws.send_binary(encode_frame(Hello("too-big", [])))
        ws.recv()
        try:
            ws.send_binary(b"\x00" * (200 * 1024))
        except (OSError, websocket.WebSocketException):
            pass
        code, reason = read_until_closed(ws)
        assert code == 1009, (code, reason)
        ws.close()
        assert_serves(hub.port)


def test_pending_requests_per_client_are_bounded() -> None:
    with winerp.Hub(port=0, max_pending=3) as hub:
        server, caller = _echo_pair(hub.port)
        release = server.release  # type: ignore[attr-defined]
        try:
            calls = [core_request(caller._core, "sec-server", "wait")[1] for _ in range(3)]
            started = time.monotonic()
            with pytest.raises(errors.WinerpError, match="3 requests in flight"):
                caller.request("echo", "sec-server", timeout=5, x=1)
            assert time.monotonic() - started < PROMPT
            release.set_result("done")
            assert [ended.result(5) for ended in calls] == ["done"] * 3
            assert caller.request("echo", "sec-server", timeout=5, x=1) == ["sec-caller", 1]
        finally:
            caller.close()
            server.close()


def test_registration_time_is_bounded() -> None:
    with winerp.Hub(port=0, handshake_timeout=0.5) as hub:
        ws = raw_ws(hub.port)
        started = time.monotonic()
        code, reason = read_until_closed(ws, timeout=5)
        assert (code, reason) == (1008, "no registration in time")
        assert time.monotonic() - started < 2
        ws.close()
        assert_serves(hub.port)


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_LENGTH + 1), "line\nbreak", "nul\x00", "tab\there", "\x7f"])
def test_invalid_names_are_refused(hub: winerp.Hub, name: str) -> None:
    with pytest.raises(ValueError, match="client name"):
        Client(name, port=hub.port)
    with pytest.raises(ValueError, match="client name"):
        winerp.aio.Client(name, port=hub.port)
    ws = raw_ws(hub.port)
    ws.send_binary(encode_frame(Hello(name, [])))
    code, reason = read_until_closed(ws)
    assert code == 1002 and "client name" in reason, (code, reason)
    ws.close()


@pytest.mark.parametrize("name", ["x" * MAX_NAME_LENGTH, "名前 with spaces", "émoji 🎉", "a/b:c@d"])
def test_valid_names_work(hub: winerp.Hub, name: str) -> None:
    with Client(name, port=hub.port, reconnect=False) as client:
        client.route("hi")(lambda source: source)
        assert client.request("hi", name, timeout=5) == name


@pytest.mark.parametrize("reconnect", [False, True])
def test_start_fails_with_the_hubs_reason_when_refused_before_ready(
    hub: winerp.Hub, monkeypatch: pytest.MonkeyPatch, reconnect: bool
) -> None:
    """A hub that closes the connection before welcoming the client ends start() with its reason."""
    monkeypatch.setattr(winerp.client.core, "name_problem", lambda name: None)  # let a bad name reach the hub
    client = Client("bad\nname", port=hub.port, reconnect=reconnect)
    started = time.monotonic()
    with pytest.raises(errors.ProtocolError, match="client name"):
        client.start(timeout=5)
    assert time.monotonic() - started < PROMPT
    client.close()


def test_nesting_depth(hub: winerp.Hub) -> None:
    def nested(depth: int) -> object:
        value: object = "bottom"
        for _ in range(depth):
            value = [value]
        return value

    with Client("nest-server", port=hub.port) as server, Client("nest-caller", port=hub.port) as caller:
        server.route("echo")(lambda source, x: x)
        server.route("make")(lambda source, depth: nested(depth))
        assert caller.request("echo", "nest-server", timeout=5, x=nested(200)) == nested(200)
        assert caller.request("make", "nest-server", timeout=5, depth=200) == nested(200)
        # Too deep to encode: TypeError at the sender, nothing sent.
        with pytest.raises(TypeError):
            caller.request("echo", "nest-server", timeout=5, x=nested(5000))
        # A reply too deep to encode comes back as the responder's error, not a hang.
        with pytest.raises(errors.ClientRuntimeError):
            caller.request("make", "nest-server", timeout=5, depth=5000)
        assert caller.is_ready and server.is_ready


# --- identity -------------------------------------------------------------------------------


def test_hub_stamps_the_sender_name(hub: winerp.Hub) -> None:
    """Requests, informs and answers name their real sender, whatever a raw client puts in them."""
    seen: list[tuple[str, object]] = []
    with Client("honest", port=hub.port, reconnect=False) as honest:
        honest.route("who")(lambda source: seen.append(("request", source)) or source)

        @honest.event
        def on_winerp_information(data: object, source: str) -> None:
            seen.append(("inform", source))

        liar = raw_ws(hub.port)
        liar.send_binary(encode_frame(Hello("liar", [])))
        liar.recv()
        # The request's peer field is the destination; the hub writes the sender in.
        liar.send_binary(encode_frame(Request(1, "honest", "who", msgspec.Raw(encode_value({})))))
        answer = None
        while not isinstance(answer, Response):
            answer = decode_frame(liar.recv())
        assert answer.peer == "honest"
        assert msgspec.msgpack.decode(answer.result) == "liar"
        liar.send_binary(encode_frame(Inform(["honest"], msgspec.Raw(encode_value("hi")))))
        wait_for(lambda: ("inform", "liar") in seen, timeout=5)
        assert seen == [("request", "liar"), ("inform", "liar")]
        # A second Hello claiming another name is refused: the connection is closed.
        liar.send_binary(encode_frame(Hello("honest-too", [])))
        code, reason = read_until_closed(liar)
        assert code == 1002 and "Hello" in reason
        liar.close()
        assert "honest-too" not in hub.clients


def test_answers_can_only_come_from_the_destination(hub: winerp.Hub) -> None:
    """A client cannot answer, or fail, a request that was sent to someone else."""
    release = concurrent.futures.Future()  # type: ignore[var-annotated]
    with Client("asker", port=hub.port) as asker, Client("real", port=hub.port) as real:
        real.route("slow")(lambda source: release.result(10))
        forger = raw_ws(hub.port)
        forger.send_binary(encode_frame(Hello("forger", [])))
        forger.recv()
        _, answer = core_request(asker._core, "real", "slow")
        for request_id in range(0, 20):
            forger.send_binary(encode_frame(Response(request_id, "asker", msgspec.Raw(encode_value("forged")))))
            forger.send_binary(encode_frame(Failure(request_id, "asker", ErrorCode.REMOTE_ERROR, "forged")))
        assert asker.ping()  # the forgeries were routed (and dropped) before this answer
        assert not answer.done()
        release.set_result("genuine")
        assert answer.result(5) == "genuine"
        forger.close()


def test_a_taken_name_cannot_be_impersonated(hub: winerp.Hub) -> None:
    """A second client registering a held name waits on hold and receives nothing meant for the holder."""
    received: list[object] = []
    with Client("holder", port=hub.port, reconnect=False) as holder, Client("sender", port=hub.port) as sender:
        holder.route("r")(lambda source: "holder")
        with Client("holder", port=hub.port, reconnect=False) as usurper:
            usurper.route("r")(lambda source: "usurper")

            @usurper.event
            def on_winerp_information(data: object, source: str) -> None:
                received.append(data)

            assert usurper.on_hold
            assert sender.request("r", "holder", timeout=5) == "holder"
            sender.inform("secret", "holder")
            assert sender.ping("holder")
            with pytest.raises(errors.ClientNotReadyError):
                usurper.request("r", "holder", timeout=5)
            assert received == []


def test_legacy_client_cannot_claim_another_name(hub: winerp.Hub) -> None:
    """A winerp 1.x message naming someone else as its author still arrives under its real name."""
    with Client("target", port=hub.port, reconnect=False) as target:
        target.route("who")(lambda source: source)
        legacy = raw_ws(hub.port, native=False)
        legacy.send('{"type": 1, "id": "old-client", "uuid": "v"}')
        legacy.recv()
        legacy.send('{"type": 2, "id": "target", "destination": "target", "route": "who", "data": {}, "uuid": "q1"}')
        for _ in range(5):
            message = msgspec.json.decode(legacy.recv())
            if message.get("uuid") == "q1":
                break
        assert message["data"] == "old-client"
        legacy.close()

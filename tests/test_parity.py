"""The sync and aio clients expose the same API, and every name of the contract is importable."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import winerp
import winerp.aio
import winerp.errors
import winerp.sync
from winerp.protocol.client import error_from_failure
from winerp.protocol.frames import ErrorCode, Failure

TESTS = Path(__file__).resolve().parent

#: Tests that only make sense for one facade; every other test exists in both.
AIO_ONLY = {
    "test_coroutine_and_plain_handlers",
    "test_cancelled_request_is_dropped_quietly",
    "test_start_as_a_task_then_wait_until_ready",
    "test_winerp_client_is_the_aio_client",
}
SYNC_ONLY: set[str] = set()

#: Methods that wait: blocking in the sync client, coroutines in the aio client.
WAITING = {"start", "wait_until_ready", "close", "request", "inform", "ping", "peers", "request_many"}
#: Neither waits: the same plain methods in both.
PLAIN = {"route", "event", "submit"}
PROPERTIES = {"name", "local_name", "is_ready", "authorized", "on_hold"}

ERRORS = [
    "WinerpError",
    "ClientNotReadyError",
    "UnauthorizedError",
    "DestinationNotFound",
    "RouteNotFound",
    "ClientRuntimeError",
    "RequestTimeout",
    "PeerDisconnected",
    "ConnectionLost",
    "PayloadTooLarge",
    "InvalidRouteType",
]


def _public(cls: type) -> dict[str, Any]:
    return {name: value for name, value in inspect.getmembers(cls) if not name.startswith("_")}


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_same_public_names() -> None:
    assert sorted(_public(winerp.sync.Client)) == sorted(_public(winerp.aio.Client))


@pytest.mark.parametrize("name", sorted(_public(winerp.sync.Client)))
def test_same_signatures(name: str) -> None:
    sync_member = inspect.getattr_static(winerp.sync.Client, name)
    aio_member = inspect.getattr_static(winerp.aio.Client, name)
    assert type(sync_member) is type(aio_member)
    if isinstance(sync_member, property):
        return
    assert _parameters(sync_member) == _parameters(aio_member)


def test_same_constructor() -> None:
    assert _parameters(winerp.sync.Client.__init__) == _parameters(winerp.aio.Client.__init__)


def test_constructor_matches_the_contract() -> None:
    for client in (winerp.sync.Client, winerp.aio.Client):
        parameters = inspect.signature(client).parameters
        assert list(parameters)[:3] == ["local_name", "host", "port"]
        assert parameters["host"].default == "127.0.0.1"
        assert parameters["port"].default == 13254
        for name, default in (("reconnect", True), ("token", None), ("ssl_context", None)):
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[name].default == default
        assert "max_message_size" in parameters


def test_methods_match_the_contract() -> None:
    for client in (winerp.sync.Client, winerp.aio.Client):
        members = _public(client)
        assert members.keys() >= WAITING | PLAIN | PROPERTIES
        request = inspect.signature(client.request).parameters
        assert list(request)[1:4] == ["route", "source", "timeout"]
        assert request["timeout"].default == 60
        assert request["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
        inform = inspect.signature(client.inform).parameters
        assert list(inform)[1:] == ["data", "destinations"]
        assert inform["destinations"].default is None
        assert inspect.signature(client.ping).parameters["name"].default is None
        assert inspect.signature(client.wait_until_ready).parameters["timeout"].default is None
        many = inspect.signature(client.request_many).parameters
        assert list(many)[1:4] == ["route", "sources", "timeout"]
        assert (many["sources"].default, many["timeout"].default) == (None, 60)
        assert "timeout" in inspect.signature(client.start).parameters
        assert "timeout" in inspect.signature(client.peers).parameters
        for name in PROPERTIES:
            assert isinstance(inspect.getattr_static(client, name), property)
            assert inspect.getattr_static(client, name).fset is None


def test_sync_methods_block_and_aio_methods_are_awaitable() -> None:
    for name in WAITING:
        assert not inspect.iscoroutinefunction(getattr(winerp.sync.Client, name)), name
        assert inspect.iscoroutinefunction(getattr(winerp.aio.Client, name)), name
    for name in PLAIN:
        assert not inspect.iscoroutinefunction(getattr(winerp.sync.Client, name)), name
        assert not inspect.iscoroutinefunction(getattr(winerp.aio.Client, name)), name
    assert hasattr(winerp.sync.Client, "__enter__") and hasattr(winerp.sync.Client, "__exit__")
    assert inspect.iscoroutinefunction(winerp.aio.Client.__aenter__)
    assert inspect.iscoroutinefunction(winerp.aio.Client.__aexit__)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    }


def test_sync_and_aio_suites_mirror_each_other() -> None:
    sync_tests = _test_names(TESTS / "sync" / "test_client.py")
    aio_tests = _test_names(TESTS / "aio" / "test_client.py")
    assert sync_tests - SYNC_ONLY == aio_tests - AIO_ONLY
    assert aio_tests >= AIO_ONLY
    assert sync_tests >= SYNC_ONLY


# --- the contract's names ------------------------------------------------------------------------


def test_contract_names_are_importable() -> None:
    assert winerp.Hub is importlib.import_module("winerp.hub").Hub
    assert winerp.Server is winerp.Hub
    assert winerp.Client is winerp.aio.Client
    assert winerp.sync.Client is not winerp.aio.Client
    assert isinstance(winerp.__version__, str) and winerp.__version__
    for name in winerp.__all__:
        assert getattr(winerp, name) is not None, name
    for name in ("Client", "Hub", "Server", "__version__", *ERRORS):
        assert name in winerp.__all__, name


@pytest.mark.parametrize("name", ERRORS)
def test_errors_are_exported_under_one_root(name: str) -> None:
    error = getattr(winerp.errors, name)
    assert getattr(winerp, name) is error
    assert issubclass(error, winerp.WinerpError)
    assert name in winerp.errors.__all__


def test_errors_also_subclass_the_builtins() -> None:
    assert issubclass(winerp.RequestTimeout, TimeoutError)
    for error in (winerp.PeerDisconnected, winerp.ConnectionLost, winerp.HubUnreachable):
        assert issubclass(error, ConnectionError)
    # Local and remote failures stay distinct.
    assert not issubclass(winerp.ClientRuntimeError, (TimeoutError, ConnectionError))
    error = winerp.ClientRuntimeError("m", remote_type="ValueError", remote_message="m", remote_traceback="tb")
    assert (error.remote_type, error.remote_message, error.remote_traceback) == ("ValueError", "m", "tb")


def test_hub_api() -> None:
    parameters = inspect.signature(winerp.Hub).parameters
    assert list(parameters)[:2] == ["host", "port"]
    assert (parameters["host"].default, parameters["port"].default) == ("127.0.0.1", 13254)
    for name in ("token", "ssl_context", "allowed_origins", "max_message_size"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    for name in ("start", "stop", "serve_forever", "__enter__", "__exit__"):
        assert callable(getattr(winerp.Hub, name)), name
    for name in ("port", "clients"):
        assert isinstance(inspect.getattr_static(winerp.Hub, name), property), name


def test_console_scripts_are_declared() -> None:
    try:
        scripts = importlib.metadata.entry_points(group="console_scripts")  # type: ignore[call-arg]
    except TypeError:  # Python 3.9
        scripts = importlib.metadata.entry_points()["console_scripts"]  # type: ignore[index]
    ours = {entry.name: entry.value for entry in scripts if entry.value.startswith("winerp.")}
    assert ours.get("winerp") == "winerp.cli:main"
    assert ours.get("winerp-hub") == "winerp.cli:hub_main"
    assert importlib.util.find_spec("winerp.__main__") is not None  # python -m winerp


# --- the 1.x import path, typed ------------------------------------------------------------------


def test_import_winerp_reaches_both_clients_in_a_fresh_interpreter() -> None:
    # `import winerp` alone, nothing else imported first: the subpackages come with it.
    code = (
        "import winerp\n"
        "print(winerp.sync.Client.__module__, winerp.aio.Client.__module__, winerp.Client is winerp.aio.Client)\n"
        "print(sorted({'Client', 'aio', 'sync'} - set(dir(winerp))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["winerp.sync.client winerp.aio.client True", "[]"]


def test_import_winerp_does_not_import_asyncio() -> None:
    # The clients come on first use: a blocking program pays for no asyncio machinery.
    code = "import sys, winerp; print('asyncio' in sys.modules, 'winerp.aio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_typed_user_program_runs() -> None:
    # tests/typing/user_program.py is checked by `mypy --strict` in CI; here it runs, so
    # what its annotations claim is also what happens.
    result = subprocess.run(
        [sys.executable, str(TESTS / "typing" / "user_program.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "typed program ok"


@pytest.mark.parametrize("client", [winerp.sync.Client, winerp.aio.Client], ids=["sync", "aio"])
def test_core_hooks_are_not_public_methods(client: type[Any]) -> None:
    # The core's Host hooks are lent through a private object: not a user's API.
    for name in ("run_route", "run_event", "lend_reader"):
        assert not hasattr(client, name), name


def _env() -> dict[str, str]:
    root = str(TESTS.parent)
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_client_runtime_error_text_begins_with_the_remote_type() -> None:
    def text(message: str, remote_type: str) -> str:
        failure = Failure(1, "peer", ErrorCode.REMOTE_ERROR, message, remote_type=remote_type)
        return str(error_from_failure(failure))

    assert text("bad user id 42", "ValueError") == "ValueError: bad user id 42"
    assert text("", "StopIteration") == "StopIteration"
    # The shapes a winerp 1.x answer takes: a type read from its traceback, none at all (a
    # traceback with no exception line), a message that already names it, a pseudo object.
    assert text("Type is not JSON serializable: set", "TypeError") == "TypeError: Type is not JSON serializable: set"
    assert text("it broke", "") == "it broke"
    assert text("ValueError: it broke", "ValueError") == "ValueError: it broke"
    assert text("'old' answered 'p' with a winerpObject", "winerpObject").startswith("winerpObject: 'old' answered")
    error = winerp.ClientRuntimeError("m", remote_type="ValueError", remote_message="m")
    assert error.args == ("m",) and error.remote_message == "m"  # only the text changes

"""The command line: ``winerp``, ``winerp-hub`` and ``python -m winerp``, run as real processes."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import winerp
import winerp.cli
from winerp.sync import Client

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
#: "A few seconds" for a graceful stop, generous for a loaded machine.
STOP_WITHIN = 5.0


def _script(name: str) -> list[str]:
    """The installed console script ``name``; skip when the package is not installed."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"console script {name!r} not installed (pip install -e .)")
    return [found]


COMMANDS = {
    "python -m winerp": lambda: [sys.executable, "-m", "winerp"],
    "winerp": lambda: _script("winerp"),
    "winerp hub": lambda: [*_script("winerp"), "hub"],
    "winerp-hub": lambda: _script("winerp-hub"),
}


def _run(command: list[str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=_env())


def _spawn(command: list[str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WINERP_TOKEN", None)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """The first line the process prints, or fail with its stderr."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"no output within {timeout} s; stderr:\n{stderr}")


def _hub_option_strings() -> set[str]:
    parser = argparse.ArgumentParser()
    winerp.cli._hub_options(parser)
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


# --- --help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["winerp", "winerp-hub", "python -m winerp"])
def test_help_names_every_option(name: str) -> None:
    result = _run(COMMANDS[name](), "--help")
    assert result.returncode == 0, result.stderr
    options = _hub_option_strings()
    assert options >= {"--host", "--port", "--token", "--certfile", "--keyfile"}
    for option in options | {"--help", "--version"}:
        assert option in result.stdout, f"{name} --help does not name {option}"
    if name != "winerp-hub":
        for command in ("hub", "demo", "status"):
            assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [("status", {"--host", "--port", "--token", "--json"}), ("demo", {"--port"}), ("hub", _hub_option_strings())],
)
def test_subcommand_help_names_every_option(command: str, options: set[str]) -> None:
    result = _run(COMMANDS["python -m winerp"](), command, "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, f"winerp {command} --help does not name {option}"


def test_version() -> None:
    result = _run(COMMANDS["python -m winerp"](), "--version")
    assert result.returncode == 0
    assert winerp.__version__ in result.stdout


# --- running a hub -------------------------------------------------------------------------------


@pytest.fixture
def running_hub(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A hub command started on a free port, killed if the test left it running."""
    name = getattr(request, "param", "python -m winerp")
    port = _free_port()
    proc = _spawn(COMMANDS[name](), "--port", str(port))
    try:
        line = _first_line(proc)
        assert str(port) in line, line
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _use_hub(port: int) -> None:
    """Two clients talk through the hub at ``port``."""
    with Client("server", port=port) as server, Client("caller", port=port) as caller:

        @server.route
        def double(source: str, x: int) -> int:
            return 2 * x

        assert server.ping()  # the route was added after start: the hub has it once this returns
        assert caller.ping("server")
        assert caller.request("double", "server", x=21) == 42


@pytest.mark.parametrize("running_hub", list(COMMANDS), indirect=True)
def test_hub_command_serves_clients_and_stops_on_sigterm(running_hub: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = running_hub
    _use_hub(port)
    _stop_gracefully(proc, signal.SIGTERM)


def test_hub_command_stops_on_sigint(running_hub: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = running_hub
    _use_hub(port)
    _stop_gracefully(proc, signal.SIGINT)


def test_connected_clients_see_the_hub_go_away(running_hub: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = running_hub
    gone = threading.Event()
    client = Client("watcher", port=port, reconnect=False)

    @client.event
    def on_winerp_disconnect() -> None:
        gone.set()

    with client:
        proc.send_signal(signal.SIGTERM)
        assert gone.wait(STOP_WITHIN)
        assert not client.is_ready
    assert proc.wait(STOP_WITHIN) == 0


def _stop_gracefully(proc: subprocess.Popen[str], signum: signal.Signals) -> None:
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the hub did not stop within {STOP_WITHIN} s of {signum.name}")
    assert time.monotonic() - started < STOP_WITHIN
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("name", ["python -m winerp", "winerp-hub"])
def test_busy_port_exits_non_zero_with_one_line(name: str) -> None:
    with winerp.Hub(port=0) as hub:
        port = hub.port
        result = _run(COMMANDS[name](), "--port", str(port), timeout=STOP_WITHIN * 2)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0]
    assert "Traceback" not in result.stderr


# --- status and demo -----------------------------------------------------------------------------


def test_status_json_prints_the_clients(hub: winerp.Hub) -> None:
    with Client("server", port=hub.port) as server, Client("caller", port=hub.port) as caller:

        @server.route
        def double(source: str, x: int) -> int:
            return 2 * x

        assert server.ping()
        assert caller.request("double", "server", x=1) == 2
        result = _run(COMMANDS["python -m winerp"](), "status", "--port", str(hub.port), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        clients = {client["name"]: client for client in status["clients"]}
        assert sorted(clients) == ["caller", "server"]  # not the status command's own client
        assert clients["server"]["routes"] == ["double"]
        for client in clients.values():
            for counter in ("connected_since", "messages_in", "messages_out", "bytes_in", "bytes_out"):
                assert isinstance(client[counter], (int, float)), counter
        assert clients["caller"]["messages_out"] >= 1
        assert clients["server"]["messages_in"] >= 1
        assert status["messages_routed"] >= 2

        text = _run(COMMANDS["python -m winerp"](), "status", "--port", str(hub.port))
        assert text.returncode == 0, text.stderr
        assert "server" in text.stdout and "caller" in text.stdout and "double" in text.stdout


def test_status_without_a_hub_exits_non_zero_with_one_line() -> None:
    result = _run(COMMANDS["python -m winerp"](), "status", "--port", str(_free_port()), "--json")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_demo_exits_zero() -> None:
    result = _run(_script("winerp"), "demo", timeout=45)
    assert result.returncode == 0, result.stderr
    assert "demo done" in result.stdout


# --- first-day edges: help texts and defaults, status counts, package metadata ----------------------


HELP_COMMANDS = {
    "winerp": ["--help"],
    "winerp-hub": ["--help"],
    "winerp hub": ["hub", "--help"],
    "winerp status": ["status", "--help"],
    "winerp demo": ["demo", "--help"],
}


def _option_entries(help_text: str) -> dict[str, str]:
    """``{"--port": "its help text"}`` for every option of an argparse ``--help`` output."""
    entries: dict[str, str] = {}
    current = ""
    for line in help_text.split("options:", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -") and not line.startswith("   "):
            current = stripped.split()[0].rstrip(",")
            if current == "-h":
                current = "--help"
            # The help text, if any, follows the option on the same line after 2+ spaces.
            parts = stripped.split("  ", 1)
            entries[current] = parts[1].strip() if len(parts) > 1 else ""
        elif current and stripped:
            entries[current] = f"{entries[current]} {stripped}".strip()
    return entries


@pytest.mark.parametrize("name", list(HELP_COMMANDS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    program = COMMANDS["winerp-hub"]() if name == "winerp-hub" else COMMANDS["python -m winerp"]()
    result = _run(program, *HELP_COMMANDS[name])
    assert result.returncode == 0, result.stderr
    entries = _option_entries(result.stdout)
    assert "--port" in entries
    for option, text in entries.items():
        assert text, f"{name}: {option} has no help text"
        if option not in ("--help", "--version"):
            assert "default" in text, f"{name}: {option} does not show its default: {text!r}"
    if name in ("winerp", "winerp-hub", "winerp hub"):
        assert "(default: 13254)" in entries["--port"]
        assert "(default: 127.0.0.1)" in entries["--host"]


def test_status_json_counts_only_the_clients_it_lists(hub: winerp.Hub) -> None:
    with Client("one", port=hub.port), Client("two", port=hub.port):
        result = _run(COMMANDS["python -m winerp"](), "status", "--port", str(hub.port), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert [client["name"] for client in status["clients"]] == ["one", "two"]
    assert status["connections"] == 2  # not 3: the status command's own connection is not counted


def test_cli_uses_no_private_client_method() -> None:
    # The command line is a user of the clients like any other: their public API only.
    tree = ast.parse((ROOT / "winerp" / "cli.py").read_text())
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    ]
    assert private == []


def test_pip_show_names_the_home_page_and_project_urls() -> None:
    urls = dict(entry.split(", ", 1) for entry in importlib.metadata.metadata("winerp").get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    home = urls["Homepage"]
    assert home.startswith("https://") and all(url.startswith(home) for url in urls.values())
    shown = subprocess.run(
        [sys.executable, "-m", "pip", "show", "-v", "winerp"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert home in shown.stdout  # as Home-page (recent pip) and among the Project-URLs

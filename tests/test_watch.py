"""``winerp status --watch``: the live terminal view, in a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

import winerp
from winerp.sync import Client
from winerp.watch import render

try:
    from conftest import ROOT
except ImportError:  # tests/ is a package
    from tests.conftest import ROOT

# Takes the pseudo-terminal as its controlling terminal (so Ctrl-C typed into it reaches the
# view as SIGINT, as in a real terminal), then becomes `python -m winerp ...`.
_AS_TERMINAL_SESSION = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'winerp', *sys.argv[1:]])"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on an 80x24 pseudo-terminal, and everything it wrote."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _AS_TERMINAL_SESSION, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env=env,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, wanted: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{wanted!r} not on the screen within {timeout} s; screen: {self.output[-2000:]!r}")
            if not self._read(min(remaining, 0.5)):
                pytest.fail(f"the view ended before showing {wanted!r}; screen: {self.output[-2000:]!r}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child has gone and the terminal is closed
                return False
            if not chunk:
                return False
            self.output += chunk
        return True

    def finish(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        os.close(self.master)
        try:
            return self.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("the view did not end on Ctrl-C")

    def last_screen(self) -> list[str]:
        """The lines of the last view drawn (it starts at the cursor-home sequence)."""
        text = self.output.decode(errors="replace")
        last = text.rsplit("\x1b[H", 1)[-1]
        return [_ANSI.sub("", line).rstrip("\r") for line in last.split("\n")]


def test_watch_shows_the_clients_live_and_ends_cleanly_on_ctrl_c(hub: winerp.Hub) -> None:
    with Client("alpha-worker", port=hub.port) as alpha, Client("beta-service", port=hub.port) as beta:

        @beta.route
        def echo(source: str, value: int) -> int:
            return value

        alpha.request("echo", "beta-service", value=1)
        terminal = Terminal("status", "--watch", "--port", str(hub.port))
        try:
            terminal.read_until(b"beta-service")
            terminal.read_until(b"alpha-worker")
            with Client("gamma-joins-late", port=hub.port):
                terminal.read_until(b"gamma-joins-late", timeout=5)
            screen = terminal.last_screen()
            assert any(line.startswith("beta-service") and line.endswith("echo") for line in screen), screen
            assert all(len(line) <= 80 for line in screen), screen
            assert any(line.startswith("rates:") for line in screen), screen
            os.write(terminal.master, b"\x03")  # Ctrl-C, typed
        finally:
            code = terminal.finish()
        assert code == 0, terminal.output[-2000:]
        assert b"Traceback" not in terminal.output
        assert terminal.output.endswith(b"\x1b[?25h\x1b[?1049l")  # cursor and screen given back


def test_watch_gives_the_terminal_back_on_sigterm_too(hub: winerp.Hub) -> None:
    with Client("still-here", port=hub.port):
        terminal = Terminal("status", "--watch", "--port", str(hub.port))
        try:
            terminal.read_until(b"still-here")
            terminal.process.send_signal(signal.SIGTERM)
        finally:
            code = terminal.finish()
    assert code == 0
    assert terminal.output.endswith(b"\x1b[?25h\x1b[?1049l")


def test_watch_without_a_hub_exits_non_zero_with_one_line() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with winerp.Hub(port=0) as gone:
        port = gone.port
    done = subprocess.run(
        [sys.executable, "-m", "winerp", "status", "--watch", "--port", str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"winerp: no hub answered at 127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


def test_render_fits_80_columns_with_long_names_and_many_routes() -> None:
    now = time.time()
    client = {
        "name": "a-very-long-client-name-" + "x" * 60,
        "state": "ready",
        "routes": [f"route_{i}" for i in range(40)],
        "connected_since": now - 3 * 86400,
        "messages_in": 123_456_789,
        "messages_out": 98_765,
        "bytes_in": 5 << 30,
        "bytes_out": 12_345,
        "in_flight": 64,
    }
    status = {
        "clients": [client, dict(client, name="held-one", state="held", routes=None)],
        "messages_routed": 10**9,
        "pending": 64,
        "errors": {"destination_not_found": 3, "remote_error": 12, "heartbeat_timeout": 1},
        "rates": {"messages_in": [float(i) for i in range(600)], "now": {"messages_in_per_s": 12345.6}},
    }
    lines = render(status, "127.0.0.1:13254", now, width=80)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    assert "a-very-long-client-n" in text
    assert "held-one (held)" in text
    assert "12.3k/s" in text
    assert "remote_error 12" in text

"""Helpers of the life-cycle tests: a hub that answers slowly, hub and client processes, their output.

Everything here talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def slowloris_hub(interval: float = 0.5) -> Iterator[int]:
    """A server that reads the HTTP upgrade, then answers it one byte every ``interval`` seconds.

    Each read the client makes gets a byte well within any socket timeout, so only a
    deadline over the whole handshake can end the wait. Yields the port.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + b"X-Slow: "
        + (b"z" * 4096)
    )

    def dribble(sock: socket.socket) -> None:
        with sock:
            try:
                sock.recv(65536)  # the request head (small; one read is enough here)
                for byte in answer:
                    if stop.wait(interval):
                        return
                    sock.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up and closed: what the test wants

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=dribble, args=(sock,), name="test-slowloris", daemon=True).start()

    thread = threading.Thread(target=accept, name="test-slowloris-accept", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(5)


def env() -> dict[str, str]:
    """The environment of a child process: winerp importable from this tree, no token, no log setup."""
    variables = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    variables.pop("WINERP_TOKEN", None)
    return variables


def hub_command() -> list[str]:
    """``winerp-hub`` as installed, or the same entry point through the interpreter."""
    beside = Path(sys.executable).parent / "winerp-hub"
    found = str(beside) if beside.exists() else shutil.which("winerp-hub")
    if found is not None:
        return [found]
    return [sys.executable, "-c", "import sys; from winerp.cli import hub_main; sys.exit(hub_main())"]


class Output:
    """The lines a process prints on one stream, read by a thread, each with the wall-clock time it came."""

    def __init__(self, stream: object) -> None:
        self.lines: list[tuple[float, str]] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._done = threading.Event()
        threading.Thread(target=self._read, args=(stream,), name="test-output", daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append((time.time(), line.rstrip("\n")))
            self._new.put(None)
        self._done.set()
        self._new.put(None)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, needle: str, timeout: float) -> tuple[float, str]:
        """The first line containing ``needle`` and when it came; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for when, line in self.lines[seen:]:
                if needle in line:
                    return when, line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._done.is_set() and seen == len(self.lines)):
                raise AssertionError(f"no line with {needle!r} within {timeout} s; got:\n{self.text}")
            try:
                self._new.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                pass

    def finished(self, timeout: float) -> None:
        self._done.wait(timeout)


class Process:
    """A child process whose stdout and stderr are read as they come."""

    def __init__(self, command: list[str], cwd: Path | None = None, **variables: str) -> None:
        self.popen = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env(), **variables},
            cwd=cwd,
        )
        self.stdout = Output(self.popen.stdout)
        self.stderr = Output(self.popen.stderr)

    @classmethod
    def python(cls, code: str, *args: str) -> Process:
        return cls([sys.executable, "-c", code, *args])

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if it lingers; return the exit code once its output is read."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(timeout)
        self.stdout.finished(timeout)
        self.stderr.finished(timeout)
        return code

    def wait(self, timeout: float) -> int:
        """The exit code, once it exits by itself and its output is read."""
        code = self.popen.wait(timeout)
        self.stdout.finished(timeout)
        self.stderr.finished(timeout)
        return code

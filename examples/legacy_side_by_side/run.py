"""A winerp 1.x client and a new client on one hub, calling each other.

    python examples/legacy_side_by_side/run.py --legacy-python /path/to/legacy-venv/bin/python

where the legacy virtualenv has ``winerp==1.5.0`` and ``websockets<14`` (``python -m venv
legacy-venv && legacy-venv/bin/pip install winerp==1.5.0 'websockets<14'``). In a checkout,
``python tests/legacy_env.py`` builds one and prints its interpreter.

This script starts a hub (the new one: it speaks the 1.x dialect to 1.x clients), a new
blocking client ``new-dashboard``, and ``legacy_bot.py`` under winerp 1.5.0. The two call
each other's routes and exchange informs through the hub, then it all stops. Pass
``--hub-port 13254`` to use a hub you started yourself instead (``winerp --port 13254``,
as with 1.x).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import winerp
from winerp.sync import Client

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def hub_on(port: int | None) -> Iterator[int]:
    """A hub of our own on a free port, or the one already listening on ``port``."""
    if port is not None:
        yield port
        return
    with winerp.Hub(port=0) as hub:
        yield hub.port


def main() -> int:
    parser = argparse.ArgumentParser(description="winerp 1.x and 2 clients side by side")
    parser.add_argument("--legacy-python", required=True, help="interpreter of a virtualenv with winerp 1.5.0")
    parser.add_argument("--hub-port", type=int, default=None, help="use this running hub instead of starting one")
    args = parser.parse_args()
    with hub_on(args.hub_port) as port, Client("new-dashboard", port=port) as client:
        informed = threading.Event()

        @client.route
        def dashboard_version(source: str) -> str:
            print(f"new-dashboard: dashboard_version asked by {source}", flush=True)
            return winerp.__version__

        @client.event
        def on_winerp_information(data: object, source: str) -> None:
            print(f"new-dashboard: inform from {source}: {data}", flush=True)
            informed.set()

        # -I and a working directory outside this checkout: the 1.x process must import
        # winerp 1.5.0 from its own virtualenv, never this winerp.
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        with tempfile.TemporaryDirectory() as elsewhere:
            legacy = subprocess.Popen(
                [os.path.abspath(args.legacy_python), "-I", str(HERE / "legacy_bot.py"), str(port)],
                cwd=elsewhere,
                env=environ,
            )
            try:
                deadline = time.monotonic() + 30
                while not client.ping("legacy-bot"):
                    if time.monotonic() > deadline or legacy.poll() is not None:
                        print("the 1.x client did not come up", file=sys.stderr)
                        return 1
                    time.sleep(0.05)
                print(f"new-dashboard: legacy-bot has {client.request('guild_count', 'legacy-bot')} guilds", flush=True)
                if not informed.wait(30):
                    print("no inform from the 1.x client", file=sys.stderr)
                    return 1
                client.inform({"command": "refresh"}, "legacy-bot")
                client.inform({"command": "stop"}, "legacy-bot")
                return_code = legacy.wait(30)
            finally:
                if legacy.poll() is None:
                    legacy.kill()
                    legacy.wait()
    print(f"done: the 1.x client exited with {return_code}", flush=True)
    return 0 if return_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""A Quart dashboard of the bots' live stats: the asyncio client lives in the app's lifespan.

Start a hub (``winerp-hub``) and the bots (see ``examples/discord_cluster``), then:

    python examples/quart_dashboard.py --port 5000

and open http://127.0.0.1:5000/ (``/api/stats`` gives the same as JSON). It runs under
hypercorn until Ctrl-C / SIGTERM. ``--hub-port`` says where the hub is (default 13254).

The client starts in ``before_serving`` as a task, so the dashboard serves even while the hub
is down (its pages then say so: calls raise ``ClientNotReadyError`` at once, nothing waits),
and it connects as soon as the hub is up. ``after_serving`` closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import signal
import socket
from typing import Any

from quart import Quart

import winerp
from winerp.aio import Client

app = Quart(__name__)
app.config["HUB_PORT"] = int(os.environ.get("HUB_PORT", "13254"))


def ipc() -> Client:
    client: Client = app.config["IPC"]
    return client


@app.before_serving
async def start_ipc() -> None:
    client = Client(f"quart-dashboard-{os.getpid()}", port=app.config["HUB_PORT"])
    app.config["IPC"] = client
    # Not awaited: serve at once, connect when the hub is there (kept so it is not collected).
    app.config["IPC_START"] = asyncio.create_task(client.start())


@app.after_serving
async def stop_ipc() -> None:
    await ipc().close()
    print("dashboard: winerp client closed", flush=True)


async def gather_stats() -> dict[str, Any]:
    results = await ipc().request_many("stats", timeout=3)
    clusters = {
        name: {"error": type(value).__name__} if isinstance(value, winerp.WinerpError) else value
        for name, value in sorted(results.items())
    }
    return {"guilds": sum(v.get("guilds", 0) for v in clusters.values()), "clusters": clusters}


@app.get("/api/stats")
async def api_stats() -> Any:
    try:
        return await gather_stats()
    except winerp.ClientNotReadyError:
        return {"error": "not connected to the hub"}, 503


@app.get("/")
async def index() -> Any:
    try:
        stats = await gather_stats()
    except winerp.ClientNotReadyError:
        return "<!doctype html><title>Bot dashboard</title><p>Waiting for the hub...</p>", 503
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value.get('guilds', '-')))}</td></tr>"
        for name, value in stats["clusters"].items()
    )
    return (
        "<!doctype html><title>Bot dashboard</title>"
        f"<h1>{stats['guilds']} guilds in {len(stats['clusters'])} clusters</h1>"
        f"<table><tr><th>cluster</th><th>guilds</th></tr>{rows}</table>"
    )


async def serve(host: str, port: int) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    # Bind here, so that --port 0 works and the real address can be printed.
    sock = socket.create_server((host, port))
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    print(f"dashboard: http://{host}:{sock.getsockname()[1]}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Quart dashboard for the discord_cluster example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="HTTP port (0: any free port)")
    parser.add_argument("--hub-port", type=int, default=None, help="the hub's port (default 13254)")
    args = parser.parse_args()
    if args.hub_port is not None:
        app.config["HUB_PORT"] = args.hub_port
    asyncio.run(serve(args.host, args.port))

"""A FastAPI dashboard of the bots' live stats: the asyncio client lives in the app's lifespan.

Start a hub (``winerp-hub``) and the bots (see ``examples/discord_cluster``), then:

    python examples/fastapi_dashboard.py --port 8000

and open http://127.0.0.1:8000/ (``/api/stats`` gives the same as JSON). It runs under
uvicorn until Ctrl-C / SIGTERM. ``--hub-port`` says where the hub is (default 13254).
``uvicorn fastapi_dashboard:app`` (from this folder) works too; set ``HUB_PORT`` then.

The ``lifespan`` context manager starts the client before the first request and closes it
after the last one. It is started as a task, so the app serves even while the hub is down
(the pages say so: calls raise ``ClientNotReadyError`` at once) and connects when it is up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

import winerp
from winerp.aio import Client

HUB_PORT = int(os.environ.get("HUB_PORT", "13254"))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = Client(f"fastapi-dashboard-{os.getpid()}", port=HUB_PORT)
    app.state.ipc = client
    starting = asyncio.create_task(client.start())  # serve at once; connect when the hub is there
    try:
        yield
    finally:
        await client.close()
        starting.cancel()
        print("dashboard: winerp client closed", flush=True)


app = FastAPI(lifespan=lifespan)


async def gather_stats() -> dict[str, Any]:
    ipc: Client = app.state.ipc
    results = await ipc.request_many("stats", timeout=3)
    clusters = {
        name: {"error": type(value).__name__} if isinstance(value, winerp.WinerpError) else value
        for name, value in sorted(results.items())
    }
    return {"guilds": sum(v.get("guilds", 0) for v in clusters.values()), "clusters": clusters}


@app.get("/api/stats")
async def api_stats() -> JSONResponse:
    try:
        return JSONResponse(await gather_stats())
    except winerp.ClientNotReadyError:
        return JSONResponse({"error": "not connected to the hub"}, status_code=503)


@app.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    try:
        stats = await gather_stats()
    except winerp.ClientNotReadyError:
        return HTMLResponse("<!doctype html><title>Bot dashboard</title><p>Waiting for the hub...</p>", 503)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value.get('guilds', '-')))}</td></tr>"
        for name, value in stats["clusters"].items()
    )
    return HTMLResponse(
        "<!doctype html><title>Bot dashboard</title>"
        f"<h1>{stats['guilds']} guilds in {len(stats['clusters'])} clusters</h1>"
        f"<table><tr><th>cluster</th><th>guilds</th></tr>{rows}</table>"
    )


def main() -> None:
    global HUB_PORT
    import uvicorn

    parser = argparse.ArgumentParser(description="FastAPI dashboard for the discord_cluster example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    parser.add_argument("--hub-port", type=int, default=HUB_PORT, help="the hub's port (default 13254)")
    args = parser.parse_args()
    HUB_PORT = args.hub_port
    # Bind here, so that --port 0 works and the real address can be printed.
    sock = socket.create_server((args.host, args.port))
    print(f"dashboard: http://{args.host}:{sock.getsockname()[1]}/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    main()

"""A Flask dashboard of the bots' live stats, served by gunicorn, one winerp client per worker.

Start a hub (``winerp-hub``) and the bots (see ``examples/discord_cluster``), then, from the
repository root:

    gunicorn -c examples/flask_dashboard/gunicorn.conf.py

and open http://127.0.0.1:8000/ (``/api/stats`` gives the same as JSON). ``HUB_HOST`` and
``HUB_PORT`` say where the hub is (default ``127.0.0.1:13254``).

A winerp client belongs to the process that started it, so each gunicorn worker starts its
own, named ``dashboard-<pid>`` (two workers must not share one name): gunicorn's
``post_fork`` hook (see gunicorn.conf.py) starts it as the worker begins, and `ipc()` starts
it on first use if the app runs under another server (``flask --app app run``).
"""

from __future__ import annotations

import html
import os
import threading
from typing import Any

from flask import Flask, jsonify

import winerp
from winerp.sync import Client

app = Flask(__name__)

_client: Client | None = None
_lock = threading.Lock()


def ipc() -> Client:
    """This process's winerp client, started on first use.

    Raises:
        winerp.WinerpError: no hub answered within 5 s (the next call tries again).
    """
    global _client
    with _lock:
        if _client is None:
            client = Client(
                f"dashboard-{os.getpid()}",
                host=os.environ.get("HUB_HOST", "127.0.0.1"),
                port=int(os.environ.get("HUB_PORT", "13254")),
            )
            try:
                client.start(timeout=5)
            except winerp.WinerpError:
                client.close()
                raise
            _client = client  # from now on it reconnects by itself after a drop
        return _client


def close_ipc() -> None:
    """Leave the hub (gunicorn's ``worker_exit`` hook calls this)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
            _client = None


def gather_stats() -> dict[str, Any]:
    """Ask every client with a ``stats`` route (the bot clusters) at once."""
    results = ipc().request_many("stats", timeout=3)
    clusters = {}
    for name, value in sorted(results.items()):
        if isinstance(value, winerp.WinerpError):
            clusters[name] = {"error": f"{type(value).__name__}: {value}"}
        else:
            clusters[name] = value
    total = sum(v.get("guilds", 0) for v in clusters.values())
    return {"served_by": ipc().name, "guilds": total, "clusters": clusters}


@app.get("/api/stats")
def api_stats() -> Any:
    try:
        return jsonify(gather_stats())
    except winerp.WinerpError as exc:  # no hub, or the connection is down right now
        return jsonify({"error": f"{type(exc).__name__}: {exc}"}), 503


@app.get("/")
def index() -> Any:
    try:
        stats = gather_stats()
    except winerp.WinerpError as exc:
        return f"<!doctype html><title>Bot dashboard</title><p>No hub: {html.escape(str(exc))}</p>", 503
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value.get('guilds', '-')))}</td>"
        f"<td>{html.escape(str(value.get('latency_ms', value.get('error', '-'))))}</td></tr>"
        for name, value in stats["clusters"].items()
    )
    return (
        "<!doctype html><title>Bot dashboard</title>"
        '<meta http-equiv="refresh" content="5">'
        f"<h1>{stats['guilds']} guilds in {len(stats['clusters'])} clusters</h1>"
        f"<table><tr><th>cluster</th><th>guilds</th><th>latency (ms)</th></tr>{rows}</table>"
        f"<p>served by {html.escape(stats['served_by'])}</p>"
    )

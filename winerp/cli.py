"""Command line: ``winerp`` (1.x compatible), ``winerp-hub`` and ``python -m winerp``.

``winerp --port N`` runs a hub, as winerp 1.x did; ``winerp hub``, ``winerp demo`` and
``winerp status`` are sub-commands. ``winerp-hub`` is ``winerp hub``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .defaults import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT
from .errors import WinerpError
from .hub import Hub

__all__ = ["main", "hub_main"]


def _hub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--token", default=None, help="shared secret clients must present (default: $WINERP_TOKEN, else none)"
    )
    parser.add_argument(
        "--certfile", default=None, help="TLS certificate (PEM): serve wss:// (default: none, plain ws://)"
    )
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM), with --certfile (default: none)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser handshakes from ORIGIN in (repeatable); others get 403 (default: none)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        help="largest message in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="client heartbeat interval in seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="URL",
        help="join a cluster of hubs over the NATS server at URL (nats://host:port, several comma-separated)"
        " (default: $WINERP_CLUSTER, else none)",
    )
    parser.add_argument(
        "--cluster-name",
        default="winerp",
        help="name of the cluster to join on that NATS server (default: %(default)s)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also serve a live web page (/), /status.json and /metrics (Prometheus) on the hub's port (default: off)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)"
    )


def _raise_open_file_limit() -> None:
    """Let the hub hold as many connections as the system allows (one file each)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def _run_hub(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = None
    if args.certfile:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
    _raise_open_file_limit()
    hub = Hub(
        args.host,
        args.port,
        token=args.token,
        ssl_context=context,
        allowed_origins=args.allow_origin,
        max_message_size=args.max_message_size,
        heartbeat=args.heartbeat,
        cluster=args.cluster,
        cluster_name=args.cluster_name,
        dashboard=args.dashboard,
    )
    try:
        hub.start()
    except OSError as exc:
        print(f"winerp: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the cluster cannot be joined (winerp.cluster.ClusterUnavailable)
        print(f"winerp: {exc}", file=sys.stderr)
        return 1
    print(f"winerp hub {__version__} listening on {args.host}:{hub.port} (Ctrl-C to stop)", flush=True)
    if args.dashboard:
        scheme = "https" if context is not None else "http"
        print(f"dashboard: {scheme}://{args.host}:{hub.port}/  metrics: /metrics", flush=True)
    hub.serve_forever()
    return 0


def _run_status(args: argparse.Namespace) -> int:
    if args.watch:
        from .watch import watch

        return watch(args.host, args.port, args.token)
    from .sync import Client
    from .sync.client import hub_status

    name = f"winerp-status-{os.getpid()}"
    try:
        with Client(name, args.host, args.port, token=args.token, reconnect=False) as client:
            status = hub_status(client, timeout=5)
    except (WinerpError, TimeoutError) as exc:
        print(f"winerp: no hub answered at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    _leave_out(status, name)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(
        f"hub {args.host}:{args.port}: {len(status['clients'])} client(s), {status['messages_routed']} messages routed"
    )
    for c in status["clients"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["connected_since"]))
        routes = ", ".join(c["routes"]) if c["routes"] is not None else "(1.x client: routes unknown)"
        print(
            f"  {c['name']:<24} {c['state']:<6} since {since}  in {c['messages_in']} msg/{c['bytes_in']} B"
            f"  out {c['messages_out']} msg/{c['bytes_out']} B  routes: {routes}"
        )
    for h in status.get("hubs", ()):
        # A clustered hub: every hub of the cluster, with its ready clients.
        mark = " (this hub)" if h.get("this") else ""
        clients = ", ".join(h["clients"]) or "no clients"
        print(f"cluster hub {h['address']}{mark}: {clients}")
    return 0


def _leave_out(status: dict[str, Any], name: str) -> None:
    """Drop the status command's own client from ``status``: it lists and counts the others only."""
    clients = status["clients"]
    status["clients"] = [c for c in clients if c["name"] != name]
    status["connections"] = max(0, status["connections"] - (len(clients) - len(status["clients"])))
    for hub in status.get("hubs", ()):
        hub["clients"] = [c for c in hub["clients"] if c != name]


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``winerp`` and ``python -m winerp``."""
    parser = argparse.ArgumentParser(
        prog="winerp",
        description="winerp: a websocket hub that routes requests and informs between named Python processes. "
        "With no sub-command, runs a hub (winerp 1.x compatible: winerp --port 13254).",
    )
    parser.add_argument("--version", action="version", version=f"winerp {__version__}")
    _hub_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="{hub,demo,status}")
    hub_parser = commands.add_parser("hub", help="run a hub in the foreground (the default)")
    _hub_options(hub_parser)
    demo = commands.add_parser("demo", help="run a hub and two clients (sync and asyncio) that talk")
    demo.add_argument("--port", type=int, default=0, help="hub port (default: 0, any free port)")
    status = commands.add_parser("status", help="print the clients connected to a hub and its counters")
    status.add_argument("--host", default=DEFAULT_HOST, help="address of the hub to ask (default: %(default)s)")
    status.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the hub to ask (default: %(default)s)")
    status.add_argument("--token", default=None, help="the hub's shared secret (default: $WINERP_TOKEN, else none)")
    status.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table (default: a table)"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="a live view, redrawn every second until Ctrl-C (default: print once)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "status":
        return _run_status(args)
    return _run_hub(args)


def hub_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``winerp-hub``."""
    parser = argparse.ArgumentParser(prog="winerp-hub", description="Run a winerp hub in the foreground.")
    parser.add_argument("--version", action="version", version=f"winerp {__version__}")
    _hub_options(parser)
    return _run_hub(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

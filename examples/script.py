"""A one-off script or cron job: call a route, inform everyone, exit.

Start a hub (``winerp-hub``) and a bot (see ``examples/discord_cluster``), then:

    python examples/script.py --target cluster-0

It asks ``cluster-0`` for its stats, tells every other client to refresh its cache (an
inform: fire and forget), and exits. ``with Client(...)`` starts the client and closes it:
no thread is left behind, so the process ends by itself. Exit status 1 with a one-line
message when the hub or the target is not there.

A crontab line that runs it every five minutes:

    */5 * * * * cd /srv/bot && .venv/bin/python examples/script.py --target cluster-0 >> cron.log 2>&1
"""

from __future__ import annotations

import argparse
import os
import sys

import winerp
from winerp.sync import Client


def main() -> int:
    parser = argparse.ArgumentParser(description="call a bot's route and inform every client")
    parser.add_argument("--target", default="cluster-0", help="the client whose stats route to call")
    parser.add_argument("--hub-host", default="127.0.0.1")
    parser.add_argument("--hub-port", type=int, default=13254)
    args = parser.parse_args()
    try:
        # A name of its own (the pid), so two runs that overlap do not wait on each other.
        with Client(f"script-{os.getpid()}", host=args.hub_host, port=args.hub_port, reconnect=False) as client:
            stats = client.request("stats", args.target, timeout=10)
            print(f"{args.target}: {stats['guilds']} guilds, up {stats['uptime_s']} s")
            client.inform({"event": "refresh-cache", "by": client.name})  # everyone else
            print("informed every client: refresh-cache")
    except winerp.DestinationNotFound:
        print(f"{args.target} is not connected", file=sys.stderr)
        return 1
    except winerp.HubUnreachable as exc:
        print(f"no hub at {args.hub_host}:{args.hub_port}: {exc}", file=sys.stderr)
        return 1
    except winerp.WinerpError as exc:  # a timeout, a refused token, the target's handler failed ...
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

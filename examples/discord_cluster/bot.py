"""One cluster of a discord.py bot, with winerp as the link between clusters.

Run one process per cluster, each with its own name (``cluster-0``, ``cluster-1`` ...), and a
hub (``winerp-hub``) beside them:

    DISCORD_TOKEN=... python examples/discord_cluster/bot.py --cluster 0 --clusters 2
    DISCORD_TOKEN=... python examples/discord_cluster/bot.py --cluster 1 --clusters 2

``!stats`` in any cluster gathers every cluster's guild count with ``request_many``.

Without a Discord token, ``--no-discord`` runs everything but the Discord connection: the bot
is built, its ``setup_hook`` starts the IPC client, its routes and presence events work, and
each cluster pretends to have ``100 + N`` guilds so the figures are visible. It runs until
Ctrl-C / SIGTERM; ``--stats`` waits until all ``--clusters`` clusters are up, prints what
``!stats`` would say, and exits:

    python examples/discord_cluster/bot.py --cluster 1 --no-discord &
    python examples/discord_cluster/bot.py --cluster 0 --clusters 2 --no-discord --stats
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

import discord
from discord.ext import commands

import winerp


class ClusterBot(commands.Bot):
    """A discord.py bot that is also a winerp client named after its cluster."""

    def __init__(self, cluster: int, hub_host: str, hub_port: int, *, fake_guilds: int | None = None) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # for the prefix command; enable it in the developer portal
        super().__init__(command_prefix="!", intents=intents)
        self.cluster = cluster
        self.fake_guilds = fake_guilds
        self.started_at = time.time()
        self.ipc = winerp.Client(f"cluster-{cluster}", host=hub_host, port=hub_port)
        # Routes and events are registered before the client starts; they are sent to the
        # hub again after every reconnect.
        self.ipc.route("stats")(self.stats_route)
        self.ipc.event(self.on_winerp_ready)
        self.ipc.event(self.on_winerp_peer_join)
        self.ipc.event(self.on_winerp_peer_leave)
        self.ipc.event(self.on_winerp_information)

    async def setup_hook(self) -> None:
        # The 1.x way: start the client beside the bot. It keeps trying until the hub
        # answers, so the bot may come up before the hub.
        self.ipc_task = asyncio.create_task(self.ipc.start())
        await self.add_cog(Stats(self))

    async def close(self) -> None:
        await self.ipc.close()
        await super().close()

    # what this cluster tells the others

    def guild_count(self) -> int:
        return self.fake_guilds if self.fake_guilds is not None else len(self.guilds)

    async def stats_route(self, source: str) -> dict[str, Any]:
        latency = self.latency
        return {
            "cluster": self.cluster,
            "guilds": self.guild_count(),
            "latency_ms": None if latency != latency else round(latency * 1000, 1),  # NaN before login
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def cluster_stats(self) -> str:
        """What ``!stats`` answers: this cluster's figures and every other cluster's."""
        results = await self.ipc.request_many("stats", timeout=5)
        results[self.ipc.name] = await self.stats_route(self.ipc.name)
        lines, total = [], 0
        for name in sorted(results):
            value = results[name]
            if isinstance(value, winerp.WinerpError):  # that cluster failed or timed out
                lines.append(f"{name}: unavailable ({type(value).__name__})")
            else:
                total += value["guilds"]
                lines.append(f"{name}: {value['guilds']} guilds")
        return f"{len(results)} clusters, {total} guilds\n" + "\n".join(lines)

    # presence

    async def on_winerp_ready(self) -> None:
        print(f"{self.ipc.name}: IPC ready", flush=True)

    async def on_winerp_peer_join(self, name: str) -> None:
        print(f"{self.ipc.name}: peer joined: {name}", flush=True)

    async def on_winerp_peer_leave(self, name: str) -> None:
        print(f"{self.ipc.name}: peer left: {name}", flush=True)

    async def on_winerp_information(self, data: Any, source: str) -> None:
        # e.g. {"event": "refresh-cache"} from examples/script.py
        print(f"{self.ipc.name}: inform from {source}: {data}", flush=True)


class Stats(commands.Cog):
    def __init__(self, bot: ClusterBot) -> None:
        self.bot = bot

    @commands.command()
    async def stats(self, ctx: commands.Context[ClusterBot]) -> None:
        await ctx.send(await self.bot.cluster_stats())


async def run_without_discord(bot: ClusterBot, clusters: int, print_stats: bool) -> None:
    """Everything but the Discord connection: ``setup_hook``, the IPC client, routes, events."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with bot:  # discord.py's own set-up of its asyncio objects, then close() on exit
        await bot.setup_hook()
        await bot.ipc.wait_until_ready(timeout=30)
        if not print_stats:
            await stop.wait()
            return
        others = {f"cluster-{n}" for n in range(clusters)} - {bot.ipc.name}
        while not others <= set(await bot.ipc.peers()) and not stop.is_set():
            await asyncio.sleep(0.1)
        print(await bot.cluster_stats(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", type=int, default=0, help="this cluster's number (its name is cluster-N)")
    parser.add_argument("--clusters", type=int, default=1, help="how many clusters there are")
    parser.add_argument("--hub-host", default="127.0.0.1")
    parser.add_argument("--hub-port", type=int, default=13254)
    parser.add_argument("--no-discord", action="store_true", help="run the IPC part without logging in to Discord")
    parser.add_argument("--stats", action="store_true", help="with --no-discord: print !stats once and exit")
    args = parser.parse_args()
    if not args.no_discord:
        token = os.environ.get("DISCORD_TOKEN")
        if not token:
            sys.exit("set DISCORD_TOKEN, or run with --no-discord")
        ClusterBot(args.cluster, args.hub_host, args.hub_port).run(token)
        return
    bot = ClusterBot(args.cluster, args.hub_host, args.hub_port, fake_guilds=100 + args.cluster)
    asyncio.run(run_without_discord(bot, args.clusters, args.stats))


if __name__ == "__main__":
    main()

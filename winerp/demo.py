"""``winerp demo``: a hub, an asyncio "bot" in a second process and a blocking "dashboard".

The dashboard calls the bot's routes and the bot informs the dashboard, through the hub,
so a new user sees every part of winerp work in a few seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

from .hub import Hub
from .sync import Client as SyncClient

__all__ = ["run_demo"]


async def _bot(port: int) -> None:
    from .aio import Client

    bot = Client("bot", port=port)

    @bot.route
    async def get_guild(source: str, guild_id: int) -> dict[str, object]:
        return {"id": guild_id, "name": f"Guild {guild_id}", "members": 42, "asked_by": source}

    @bot.route
    async def shard_stats(source: str) -> dict[str, object]:
        return {"shards": 2, "latency_ms": [41.5, 38.2]}

    async with bot:
        await bot.inform({"event": "bot ready", "guilds": 3}, "dashboard")
        while await bot.ping("dashboard"):
            await asyncio.sleep(0.2)


def run_demo(port: int = 0) -> int:
    """Run the demo; return the process exit code."""
    with Hub(port=port) as hub:
        print(f"hub listening on 127.0.0.1:{hub.port}")
        informed = threading.Event()
        with SyncClient("dashboard", port=hub.port) as dashboard:

            @dashboard.event
            def on_winerp_information(data: object, source: str) -> None:
                print(f"dashboard <- inform from {source}: {data}")
                informed.set()

            bot = subprocess.Popen([sys.executable, "-m", "winerp.demo", str(hub.port)])
            try:
                if not informed.wait(20):
                    print("the bot did not start", file=sys.stderr)
                    return 1
                print("dashboard -> bot.get_guild(guild_id=7):", dashboard.request("get_guild", "bot", guild_id=7))
                print("dashboard -> bot.shard_stats():", dashboard.request("shard_stats", "bot"))
                print("dashboard -> ping bot:", dashboard.ping("bot"))
                print("clients on the hub:", hub.clients)
            finally:
                dashboard.close()
                bot.wait(10)
    print("demo done: a hub, a blocking client and an asyncio client in another process talked.")
    return 0


if __name__ == "__main__":
    asyncio.run(_bot(int(sys.argv[1])))

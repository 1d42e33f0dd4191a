"""A winerp 1.x client, unchanged 1.x code: run it with winerp 1.5.0, not with this winerp.

winerp 1.5.0 and winerp 2 are both the ``winerp`` package, so this file runs in a virtualenv
of its own (``pip install winerp==1.5.0 'websockets<14'``); ``run.py`` starts it for you.
By hand, against a hub on port 13254:

    /path/to/legacy-venv/bin/python -I examples/legacy_side_by_side/legacy_bot.py 13254

It serves ``guild_count``, calls the new client's ``dashboard_version`` route, informs it,
prints every inform it gets, and exits when told ``{"command": "stop"}``.
"""

import asyncio
import sys

import winerp

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 13254

client = winerp.Client(local_name="legacy-bot", port=PORT)
stopping = []


@client.route
async def guild_count(source):
    print(f"legacy-bot: guild_count asked by {source}", flush=True)
    return 42


@client.event
async def on_winerp_information(data, source):
    print(f"legacy-bot: inform from {source}: {data}", flush=True)
    if isinstance(data, dict) and data.get("command") == "stop":
        stopping.append(True)


async def main():
    starting = asyncio.create_task(client.start())  # the usual 1.x start (kept: tasks are weakly held)
    await client.wait_until_ready()
    print("legacy-bot: ready", flush=True)
    version = await client.request("dashboard_version", "new-dashboard")
    print(f"legacy-bot: new-dashboard runs winerp {version}", flush=True)
    await client.inform({"hello": "from winerp 1.x"}, ["new-dashboard"])
    while not stopping:
        await asyncio.sleep(0.05)
    print("legacy-bot: stopping", flush=True)
    starting.cancel()


if __name__ == "__main__":
    asyncio.run(main())

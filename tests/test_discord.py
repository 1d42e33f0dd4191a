"""The README's discord.py 2 example, its IPC part, against a real hub (no Discord login).

The example's code is read from README.md and run as written, except that it talks to the
test's hub and does not log in: the test calls the bot's `setup_hook` itself, on a running
loop, as discord.py does before logging in.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import discord  # in the 'test' extra: this test runs in CI, it never skips
import pytest
from discord.ext import commands

import winerp

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example(port: int) -> dict[str, Any]:
    """Run the README's discord.py example up to `bot.run`; return its globals."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (code,) = [block for block in blocks if "setup_hook" in block]
    assert "port=13254" in code and "bot.run(" in code
    code = code.replace("port=13254", f"port={port}")
    code = "\n".join(line for line in code.splitlines() if not line.startswith("bot.run("))
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md (discord.py example)", "exec"), namespace)
    return namespace


def test_readme_bot_starts_its_client_in_setup_hook(hub: winerp.Hub) -> None:
    example = _readme_example(hub.port)
    bot = example["bot"]
    assert isinstance(bot, commands.Bot)

    async def main() -> tuple[Any, ...]:
        # What discord.py does before it logs in; the hook must not wait for the hub.
        await asyncio.wait_for(bot.setup_hook(), 5)
        await bot.ipc.wait_until_ready(timeout=10)
        async with winerp.aio.Client("dashboard", port=hub.port) as dashboard:
            answer = await dashboard.request("guild_count", "cluster-0", timeout=10)
            routes = await dashboard.peers(routes=True)
            seen = await bot.ipc.peers()
        await bot.close()  # closes the IPC client too
        await bot.ipc_task
        return answer, routes, seen, bot.ipc.is_ready

    assert asyncio.run(main()) == (0, {"cluster-0": ["guild_count"]}, ["dashboard"], False)


def test_readme_setup_hook_does_not_wait_for_the_hub() -> None:
    # No hub yet: setup_hook returns at once, and the client connects when the hub comes up.
    with winerp.Hub(port=0) as probe:
        port = probe.port  # a port that is free again once this hub stops
    example = _readme_example(port)
    bot = example["bot"]

    async def main() -> bool:
        await asyncio.wait_for(bot.setup_hook(), 2)
        assert not bot.ipc.is_ready
        with winerp.Hub(port=port):
            await bot.ipc.wait_until_ready(timeout=10)
            ready = bool(bot.ipc.is_ready)
            await bot.close()
        await asyncio.gather(bot.ipc_task, return_exceptions=True)
        return ready

    assert asyncio.run(main())


def test_the_winerp_1x_line_fails_under_discord_py_2() -> None:
    # Why the README's migration section moves the start into setup_hook.
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
    ipc = winerp.Client("cluster-0")
    with pytest.raises(AttributeError, match="non-async"):
        bot.loop.create_task(ipc.start())

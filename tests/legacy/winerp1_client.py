"""A real winerp 1.5.0 client, remote-controlled over stdin/stdout with JSON lines.

Run by the interop tests with the interpreter of the winerp 1.5.0 virtualenv (see
tests/legacy_env.py), never with winerp 2 importable::

    python -I winerp1_client.py NAME PORT

It starts ``winerp.Client(NAME, port=PORT)`` unmodified, with a few routes, and then:

* prints one JSON object per line for each event: ``{"event": "ready"}``,
  ``{"event": "information", "data": ..., "source": ...}``, ``{"event": "request"}``,
  ``{"event": "error", "error": "..."}``, ``{"event": "disconnect"}``, ``{"event": "started", ...}`` (with the
  ``winerp`` module path and the ``websockets`` version);
* reads one JSON command per line, and answers each with ``{"reply": ID, "ok": value}`` or
  ``{"reply": ID, "error": "ExceptionClass", "message": "..."}``:

  - ``{"id": ID, "cmd": "request", "route": R, "source": S, "kwargs": {...}, "timeout": T}``
  - ``{"id": ID, "cmd": "inform", "data": D, "destinations": [...] or null}``
  - ``{"id": ID, "cmd": "ping", "name": N or null}``
  - ``{"id": ID, "cmd": "state"}``: ``{"authorized": bool, "on_hold": bool}``
  - ``{"id": ID, "cmd": "calls"}``: the ``[route, source, kwargs]`` its routes were called with
  - ``{"cmd": "exit"}``: ends the process.

This file must run on winerp 1.5.0 as published: it only uses its public API.
"""

import asyncio
import json
import logging
import sys

import websockets

import winerp

NAME = sys.argv[1]
PORT = int(sys.argv[2])

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"[1.x {NAME}] %(name)s: %(message)s")

client = winerp.Client(NAME, port=PORT, reconnect=False)
calls = []


def emit(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


@client.route
async def add(source, a, b):
    calls.append(["add", source, {"a": a, "b": b}])
    return a + b


@client.route
async def echo(source, **kwargs):
    calls.append(["echo", source, kwargs])
    return {"source": source, "kwargs": kwargs}


@client.route
async def boom(source, message="boom from 1.x"):
    calls.append(["boom", source, {"message": message}])
    raise ValueError(message)


@client.route
async def slow(source, seconds):
    calls.append(["slow", source, {"seconds": seconds}])
    emit(event="slow-started", source=source)
    await asyncio.sleep(seconds)
    return "slow done"


@client.route
async def unjsonable(source):
    calls.append(["unjsonable", source, {}])
    return {1, 2, 3}  # a set: orjson cannot serialise it


@client.route
async def pseudo(source):
    calls.append(["pseudo", source, {}])

    class Thing:
        def __init__(self):
            self.size = 3

        async def grow(self):
            self.size += 1
            return self.size

    return winerp.winerpObject(Thing(), required_functions=["grow"])


@client.event
async def on_winerp_ready():
    emit(event="ready")


@client.event
async def on_winerp_information(data, source):
    emit(event="information", data=data, source=source)


@client.event
async def on_winerp_request():
    emit(event="request")


@client.event
async def on_winerp_error(error):
    emit(event="error", error=str(error))


@client.event
async def on_winerp_disconnect():
    emit(event="disconnect")


async def run_command(command):
    cmd = command["cmd"]
    if cmd == "request":
        return await client.request(
            command["route"], command["source"], timeout=command.get("timeout", 60), **command.get("kwargs", {})
        )
    if cmd == "inform":
        return await client.inform(command["data"], command["destinations"])
    if cmd == "ping":
        return await client.ping(command["name"], timeout=command.get("timeout", 10))
    if cmd == "state":
        return {"authorized": client.authorized, "on_hold": client.on_hold}
    if cmd == "calls":
        return calls
    raise ValueError(f"unknown command {cmd!r}")


async def answer(command):
    try:
        value = await run_command(command)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
        emit(reply=command.get("id"), error=type(exc).__name__, message=str(exc))
    else:
        emit(reply=command.get("id"), ok=value)


async def main():
    loop = asyncio.get_running_loop()
    await client.start()
    emit(event="started", winerp=winerp.__file__, websockets=websockets.__version__)
    tasks = set()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "exit":
            break
        task = asyncio.create_task(answer(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())

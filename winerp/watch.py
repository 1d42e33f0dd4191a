"""``winerp status --watch``: a live view of a hub in the terminal, redrawn every second.

Plain ANSI, nothing to install: the view takes the terminal's alternate screen, redraws
from the top each second (no flicker: each line is overwritten, then cleared to its end),
and gives the screen back on Ctrl-C. Lines are cut to the terminal's width, so it reads in
80 columns. When the output is not a terminal, each view is printed after the last.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, TextIO

from .errors import WinerpError

if TYPE_CHECKING:
    from .sync import Client

__all__ = ["render", "watch"]

_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME = "\x1b[H"
_CLEAR_LINE = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"
_BARS = " ▁▂▃▄▅▆▇█"
_RATES = ("messages_in_per_s", "messages_out_per_s", "bytes_in_per_s", "bytes_out_per_s", "errors_per_s")


def _count(value: float) -> str:
    """A count in at most 6 characters: 999, 12.3k, 4.5M."""
    for limit, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if value >= limit:
            return f"{value / unit:.1f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _bytes(value: float) -> str:
    for limit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}B"


def _sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values as block characters, scaled to their peak."""
    values = values[-width:]
    peak = max(values, default=0.0)
    if peak <= 0:
        return _BARS[1] * len(values)
    return "".join(_BARS[max(1, round(v / peak * (len(_BARS) - 1)))] if v > 0 else _BARS[1] for v in values)


def _since(connected: float, now: float) -> str:
    seconds = max(0, int(now - connected))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def render(status: dict[str, Any], where: str, now: float, width: int = 80) -> list[str]:
    """The lines of one view of ``status`` (a hub's status object), each at most ``width`` wide."""
    clients = status["clients"]
    ready = sum(1 for c in clients if c["state"] == "ready")
    rates = status.get("rates") or {}
    current: dict[str, float] = {**dict.fromkeys(_RATES, 0.0), **rates.get("now", {})}
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [
        f"winerp hub {where}  {ready} client(s)  {_count(status['messages_routed'])} routed  {stamp}  (Ctrl-C quits)",
        f"rates: in {_count(current['messages_in_per_s'])}/s  out {_count(current['messages_out_per_s'])}/s"
        f"  {_bytes(current['bytes_in_per_s'])}/s in  {_bytes(current['bytes_out_per_s'])}/s out"
        f"  errors {_count(current['errors_per_s'])}/s  pending {status.get('pending', 0)}",
    ]
    history = rates.get("messages_in") or []
    if history:
        lines.append(f"msgs/s {_sparkline(history, max(10, width - 20))} peak {_count(max(history))}")
    errors = status.get("errors") or {}
    lines.append("errors: " + ("  ".join(f"{kind} {count}" for kind, count in errors.items()) or "none"))
    lines.append("")
    lines.append(f"{'client':<20} {'since':>7} {'msgs in':>8} {'msgs out':>8} {'in':>7} {'out':>7} {'pend':>5}  routes")
    for c in clients:
        name = c["name"] if c["state"] == "ready" else f"{c['name']} ({c['state']})"
        routes = ", ".join(c["routes"]) if c["routes"] is not None else "(1.x: unknown)"
        lines.append(
            f"{name[:20]:<20} {_since(c['connected_since'], now):>7} {_count(c['messages_in']):>8}"
            f" {_count(c['messages_out']):>8} {_bytes(c['bytes_in']):>7} {_bytes(c['bytes_out']):>7}"
            f" {c['in_flight']:>5}  {routes}"
        )
    if not clients:
        lines.append("(no clients connected)")
    return [line[:width] for line in lines]


def _draw(out: TextIO, lines: list[str], tty: bool) -> None:
    if tty:
        out.write(_HOME + "".join(line + _CLEAR_LINE + "\r\n" for line in lines) + _CLEAR_BELOW)
    else:
        out.write("\n".join(lines) + "\n\n")
    out.flush()


def watch(host: str, port: int, token: str | None, interval: float = 1.0, out: TextIO | None = None) -> int:
    """Show the hub at ``host:port`` live until Ctrl-C; return the exit status.

    0 after Ctrl-C; 1 if no hub answers at the start. The view's own client is left out of
    what it shows. If the hub goes away later, the view says so and shows it again once it is
    back.
    """
    stream = out if out is not None else sys.stdout
    tty = stream.isatty()
    where = f"{host}:{port}"
    try:
        client: Client | None = _connect(host, port, token)
    except (WinerpError, TimeoutError) as exc:
        print(f"winerp: no hub answered at {where}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    _stop_on_sigterm()
    if tty:
        stream.write(_ENTER)
    try:
        while True:
            width = shutil.get_terminal_size().columns if tty else 80
            lines, client = _view(client, host, port, token, width)
            _draw(stream, lines, tty)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            stream.write(_LEAVE)
            stream.flush()
        if client is not None:
            client.close()


def _stop_on_sigterm() -> None:
    """End on SIGTERM as on Ctrl-C, so the terminal is given back (the main thread only)."""
    if threading.current_thread() is threading.main_thread():

        def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _on_sigterm)


def _connect(host: str, port: int, token: str | None) -> Client:
    """A started client of the view's own; one attempt (raises at once if no hub answers)."""
    from .sync import Client

    client = Client(f"winerp-watch-{os.getpid()}", host, port, token=token, reconnect=False)
    try:
        client.start()
    except BaseException:
        client.close()
        raise
    return client


def _view(
    client: Client | None, host: str, port: int, token: str | None, width: int
) -> tuple[list[str], Client | None]:
    """The lines of one view, and the client to use next time (a new one after the hub was lost)."""
    from .sync.client import hub_status

    where = f"{host}:{port}"
    try:
        if client is None:
            client = _connect(host, port, token)
        status = hub_status(client, timeout=5)
    except (WinerpError, TimeoutError) as exc:
        if client is not None:
            client.close()
        return [f"winerp hub {where}: not answering ({exc}); retrying  (Ctrl-C quits)"[:width]], None
    status["clients"] = [c for c in status["clients"] if c["name"] != client.name]
    return render(status, where, time.time(), width), client

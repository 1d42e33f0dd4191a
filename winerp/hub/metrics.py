"""What a hub shows about itself: its rates over the last minutes, and Prometheus text.

`Rates` is a ring of fixed size: the hub's loop samples its counters into it about once a
second (from its sweep, never per message), so its memory does not grow with uptime and
routing pays nothing for it. `prometheus_text` writes a status object (`Hub.status`) in the
Prometheus text exposition format, version 0.0.4.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any

from ..wire.close import CloseCode

__all__ = ["Rates", "prometheus_text", "end_error", "RATE_FIELDS", "HISTORY_SECONDS"]

#: The totals sampled, in order: each becomes a per-second rate.
RATE_FIELDS = ("messages_in", "messages_out", "bytes_in", "bytes_out", "errors")
#: How much history the ring holds, one sample a second.
HISTORY_SECONDS = 600
# How much of it a status object carries, and which series (what the page charts); the
# latest rate of every field is there too.
_STATUS_SECONDS = 300
_CHARTED = ("messages_in", "messages_out", "errors")


class Rates:
    """A fixed-size ring of ``(time, totals)`` samples, one per second at most.

    Not thread-safe: the hub samples and reads it under its lock.

    Args:
        seconds: Samples kept; older ones fall off.
    """

    def __init__(self, seconds: int = HISTORY_SECONDS) -> None:
        self._samples: collections.deque[tuple[float, tuple[int, ...]]] = collections.deque(maxlen=seconds + 1)

    def due(self, now: float) -> bool:
        """Whether a sample taken at ``now`` (wall clock) would be kept: a second has passed."""
        return not self._samples or now - self._samples[-1][0] >= 0.95

    def sample(self, now: float, totals: dict[str, Any]) -> None:
        """Record ``totals`` (counters that only grow) as of ``now``, if a second has passed."""
        if self.due(now):
            self._samples.append((now, tuple(int(totals[field]) for field in RATE_FIELDS)))

    def history(self, seconds: int = _STATUS_SECONDS) -> dict[str, Any]:
        """Per-second rates over the last ``seconds``, oldest first, with the current ones.

        ``t`` holds the wall-clock end of each interval; ``messages_in``, ``messages_out`` and
        ``errors`` a list of per-second rates each, one per interval; ``now`` the latest rate
        of every field of `RATE_FIELDS` (``messages_in_per_s``, ...).
        """
        samples = list(self._samples)[-(seconds + 1) :]
        series: dict[str, list[float]] = {field: [] for field in RATE_FIELDS}
        times: list[float] = []
        for (t0, before), (t1, after) in zip(samples, samples[1:]):
            elapsed = max(t1 - t0, 1e-3)
            times.append(round(t1, 3))
            for field, old, new in zip(RATE_FIELDS, before, after):
                series[field].append(round(max(new - old, 0) / elapsed, 2))
        now = {f"{field}_per_s": (values[-1] if values else 0.0) for field, values in series.items()}
        charted = {field: series[field] for field in _CHARTED}
        return {"step_s": 1, "t": times, **charted, "now": now}


# -- Prometheus text ---------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}")


def prometheus_text(status: dict[str, Any]) -> str:
    """The hub's metrics, from its status object, in the Prometheus text format (``winerp_`` names)."""
    out = _Writer()
    clients = status["clients"]
    ready = sum(1 for c in clients if c["state"] == "ready")
    held = sum(1 for c in clients if c["state"] == "held")
    hub = status.get("hub", {})
    out.family("winerp_up_seconds", "gauge", "Seconds since the hub started.", [({}, hub.get("uptime_s", 0.0))])
    out.family("winerp_clients_connected", "gauge", "Clients registered and ready.", [({}, ready)])
    out.family("winerp_clients_held", "gauge", "Clients on hold (their name is taken).", [({}, held)])
    out.family("winerp_connections", "gauge", "Websocket connections open.", [({}, status["connections"])])
    out.family("winerp_requests_pending", "gauge", "Requests routed and not answered yet.", [({}, status["pending"])])
    by_kind = status["by_kind"]
    for unit, text in (("messages", "Messages"), ("bytes", "Bytes")):
        out.family(
            f"winerp_{unit}_total",
            "counter",
            f"{text} between the hub and its clients, by direction (in: from clients) and kind.",
            [
                ({"direction": direction, "kind": kind}, counts[unit])
                for direction in ("in", "out")
                for kind, counts in by_kind[direction].items()
            ],
        )
    out.family("winerp_messages_routed_total", "counter", "Messages the hub routed.", [({}, status["messages_routed"])])
    out.family(
        "winerp_errors_total",
        "counter",
        "Failed requests and connections the hub ended, by kind.",
        [({"kind": kind}, count) for kind, count in status["errors"].items()],
    )
    _client_families(out, clients)
    return "\n".join(out.lines) + "\n"


# Close codes that end a connection normally: not errors.
_NORMAL_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART})


def end_error(why: str) -> str | None:
    """The kind of error a connection that ended for ``why`` counts as, or None for a normal end.

    ``why`` is the hub's own note of the reason (``"closed by the hub: 1002 ..."``,
    ``"dropped by the hub: 1013 too slow ..."``, ``"internal error in the hub"``).
    """
    if why.startswith("internal error"):
        return "internal_error"
    prefix, _, rest = why.partition(": ")
    if prefix not in ("closed by the hub", "dropped by the hub"):
        return None
    code_text, _, reason = rest.partition(" ")
    if not code_text.isdigit() or int(code_text) in _NORMAL_CLOSES:
        return None
    code = int(code_text)
    if code == CloseCode.OVERLOADED:
        return "slow_consumer"
    if reason.startswith("heartbeat timeout"):
        return "heartbeat_timeout"
    if reason.startswith("no registration"):
        return "registration_timeout"
    try:
        return f"closed_{CloseCode(code).name.lower()}"
    except ValueError:
        return f"closed_{code}"


def _client_families(out: _Writer, clients: list[dict[str, Any]]) -> None:
    ready = [c for c in clients if c["state"] == "ready"]
    for unit, text in (("messages", "Messages"), ("bytes", "Bytes")):
        out.family(
            f"winerp_client_{unit}_total",
            "counter",
            f"{text} between the hub and one client, by direction (in: from the client).",
            [
                ({"client": c["name"], "direction": direction}, c[f"{unit}_{direction}"])
                for c in ready
                for direction in ("in", "out")
            ],
        )
    out.family(
        "winerp_client_requests_pending",
        "gauge",
        "Requests a client sent that wait for an answer.",
        [({"client": c["name"]}, c["in_flight"]) for c in ready],
    )

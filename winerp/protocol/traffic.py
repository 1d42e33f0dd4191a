"""The hub's traffic counters, sans-IO: messages and bytes by kind and direction, errors by kind.

Rules of this module: no I/O, no threads, no clock. The router's hub counters are a
`Traffic`: the router bumps them where it already handles each message (what comes in, in
`Router.receive`; what goes out, in `Router._emit`); the hub reads them (``winerp status``,
the dashboard, Prometheus) and samples them once a second for its rates. Counters only
grow, so a reader may take differences between two readings.
"""

from __future__ import annotations

from typing import Any

from .frames import (
    AddRoutes,
    Failure,
    Hello,
    Inform,
    Information,
    Ping,
    Pong,
    Presence,
    Request,
    Response,
    Welcome,
)

__all__ = ["Traffic", "IN_KINDS", "OUT_KINDS"]

#: The kind of each frame a client sends the hub, as named in status and metrics.
IN_KINDS: dict[type, str] = {
    Request: "request",
    Response: "response",
    Failure: "failure",
    Inform: "inform",
    Ping: "ping",
    Pong: "pong",
    Hello: "hello",
    AddRoutes: "add_routes",
}
#: The kind of each frame the hub sends a client (a routed inform arrives as `Information`).
OUT_KINDS: dict[type, str] = {
    Request: "request",
    Response: "response",
    Failure: "failure",
    Information: "inform",
    Ping: "ping",
    Pong: "pong",
    Welcome: "welcome",
    Presence: "presence",
}


class Traffic:
    """Counters of one hub since it started.

    ``received`` and ``sent`` map each frame class to ``[messages, bytes]`` (mutable lists,
    so the router bumps them in place, with no name lookup on its hot path); ``errors``
    counts failed requests and dropped connections by kind.

    Not thread-safe: the router's lock covers it.
    """

    __slots__ = ("errors", "received", "sent")

    def __init__(self) -> None:
        self.received: dict[type, list[int]] = {frame_type: [0, 0] for frame_type in IN_KINDS}
        self.sent: dict[type, list[int]] = {frame_type: [0, 0] for frame_type in OUT_KINDS}
        self.errors: dict[str, int] = {}

    def sent_entry(self, frame_type: type) -> list[int]:
        """The ``[messages, bytes]`` sent of ``frame_type`` (created for a kind not listed)."""
        entry = self.sent.get(frame_type)
        if entry is None:
            entry = self.sent[frame_type] = [0, 0]
        return entry

    def error(self, kind: str) -> None:
        """Count one error of ``kind`` (e.g. ``destination_not_found``, ``heartbeat_timeout``)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def by_kind(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{"in": {kind: {"messages": n, "bytes": n}}, "out": {...}}``."""

        def named(counts: dict[type, list[int]], names: dict[type, str]) -> dict[str, dict[str, int]]:
            return {
                names.get(frame_type, frame_type.__name__.lower()): {"messages": m, "bytes": b}
                for frame_type, (m, b) in counts.items()
            }

        return {"in": named(self.received, IN_KINDS), "out": named(self.sent, OUT_KINDS)}

    def totals(self) -> dict[str, Any]:
        """Messages and bytes in and out, and errors, of every kind together."""
        return {
            "messages_in": sum(m for m, _ in self.received.values()),
            "bytes_in": sum(b for _, b in self.received.values()),
            "messages_out": sum(m for m, _ in self.sent.values()),
            "bytes_out": sum(b for _, b in self.sent.values()),
            "errors": sum(self.errors.values()),
        }

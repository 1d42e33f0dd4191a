"""The hub's traffic counters, sans-IO: messages and bytes by kind, errors by kind.

Rules of this module: no I/O, no threads, no clock. The router owns one `Traffic` and bumps
it where it already handles a message; the hub reads it (``winerp status``, the dashboard,
Prometheus) and samples it once a second for its rates. Counters only grow, so a reader may
take differences between two readings.
"""

from __future__ import annotations

from typing import Any

from .frames import AddRoutes, Failure, Hello, Inform, Ping, Pong, Request, Response

__all__ = ["Traffic", "KINDS"]

#: The kind of each frame a client sends, as named in status and metrics.
KINDS: dict[type, str] = {
    Request: "request",
    Response: "response",
    Failure: "failure",
    Inform: "inform",
    Ping: "ping",
    Pong: "pong",
    Hello: "hello",
    AddRoutes: "add_routes",
}


class Traffic:
    """Counters of one hub since it started.

    ``received`` maps each frame class to ``[messages, bytes]`` (mutable lists, so the router
    bumps them in place without a name lookup); ``sent_*_retired`` hold what was sent to
    connections that have left (the live ones keep their own counts in their session);
    ``errors`` counts failures and dropped connections by kind.

    Not thread-safe: the router's lock covers it.
    """

    __slots__ = ("errors", "received", "sent_bytes_retired", "sent_messages_retired")

    def __init__(self) -> None:
        self.received: dict[type, list[int]] = {frame_type: [0, 0] for frame_type in KINDS}
        self.sent_messages_retired = 0
        self.sent_bytes_retired = 0
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        """Count one error of ``kind`` (e.g. ``destination_not_found``, ``heartbeat_timeout``)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def received_by_kind(self) -> dict[str, dict[str, int]]:
        """``{kind: {"messages": n, "bytes": n}}`` of every kind of message clients sent."""
        return {KINDS[frame_type]: {"messages": m, "bytes": b} for frame_type, (m, b) in self.received.items()}

    def summary(self, live_sent_messages: int, live_sent_bytes: int) -> dict[str, Any]:
        """Totals in and out, given what the live sessions have been sent so far."""
        messages_in = sum(m for m, _ in self.received.values())
        bytes_in = sum(b for _, b in self.received.values())
        return {
            "messages_in": messages_in,
            "bytes_in": bytes_in,
            "messages_out": self.sent_messages_retired + live_sent_messages,
            "bytes_out": self.sent_bytes_retired + live_sent_bytes,
            "errors": sum(self.errors.values()),
        }

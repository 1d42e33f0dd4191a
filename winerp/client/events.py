"""Where user code runs: the facade's `Hooks`, and the client's event handlers.

The core decides *when* a route handler or an event handler is due; the facade decides
*where* it runs (a worker thread, a task on its event loop), through the `Hooks` it gives
the core.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EVENT_NAMES", "Events", "Hooks"]

EVENT_NAMES = frozenset(
    {
        "on_winerp_connect",
        "on_winerp_ready",
        "on_winerp_disconnect",
        "on_winerp_request",
        "on_winerp_response",
        "on_winerp_information",
        "on_winerp_error",
        "on_winerp_peer_join",
        "on_winerp_peer_leave",
    }
)


#: An event loop's thread (``threading.get_ident()``) and its ``call_soon``.
LoopTurns = tuple[int, Callable[[Callable[[], None]], object]]


class Hooks(Protocol):
    """What a facade provides to the core: where user code runs."""

    def run_route(
        self,
        handler: Callable[..., Any],
        source: str,
        kwargs: dict[str, Any],
        finish: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run a route handler off the reader's thread, then call ``finish(value, error)``."""

    def run_event(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run an event handler off the reader's thread, events in the order they come."""

    def lend_reader(self, fileno: int, read: Callable[[], bool]) -> Callable[[], bool] | None:
        """Offer to read the connection whose socket is ``fileno``; None declines.

        A facade whose callers wait on an event loop accepts, and calls ``read()`` whenever
        the socket is readable, until it returns False (the connection is gone). It returns
        a check that stays true while it can read (e.g. its loop is not closed). See
        `winerp.client.seat`.
        """

    def batch_writes(self) -> LoopTurns | None:
        """The facade's event loop, if its callers send from one: its thread and its ``call_soon``.

        What that thread sends while more is under way is then gathered and written several
        frames at a time, the rest when the turn ends (see `winerp.client.writer`). None: no
        such loop.
        """


def _positional_capacity(handler: Callable[..., Any]) -> int | None:
    """How many positional arguments ``handler`` takes (None: any number)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


class Events(dict[str, list[tuple[Callable[..., Any], "int | None"]]]):
    """The client's event handlers by event name, each with how many arguments it takes.

    A plain dict underneath, so that the reader's ``name in events`` (is anyone listening?)
    costs no Python call.
    """

    def __init__(self, hooks: Hooks) -> None:
        super().__init__()
        self._hooks = hooks

    def add(self, name: str, handler: Callable[..., Any]) -> None:
        """Register ``handler`` for the event ``name``. Raises `NameError` for unknown names."""
        if name not in EVENT_NAMES:
            raise NameError(f"unknown event {name!r}; events are {', '.join(sorted(EVENT_NAMES))}")
        self.setdefault(name, []).append((handler, _positional_capacity(handler)))

    def emit(self, name: str, *args: Any) -> None:
        """Hand an event to its handlers (through the facade), trimmed to what each accepts."""
        for handler, capacity in self.get(name, ()):
            self._hooks.run_event(handler, args if capacity is None else args[:capacity])

"""The hub's router, sans-IO: names, routes, requests in flight, presence.

Rules of this module: no I/O, no threads, no clock. `Router` is the whole of the hub's
logic: names, routes, the queue of clients on hold, requests in flight (so a peer that
leaves fails them at once), presence, the hub's own routes, and per-connection counters. It
speaks to each connection through that connection's codec (`winerp.protocol.codec`), so it
never cares which dialect a connection speaks. Callers own the sockets, the threads and the
locking: every method expects to be called by one thread at a time.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Any, Protocol

from msgspec import Raw

from .. import errors
from .codec import Codec, Message, NativeCodec, Undeliverable
from .frames import (
    FRAME_ENCODER,
    HUB,
    MAX_NAME_LENGTH,
    AddRoutes,
    ErrorCode,
    Failure,
    Frame,
    Hello,
    Inform,
    Information,
    Ping,
    Pong,
    Presence,
    Request,
    Response,
    Welcome,
    decode_value,
    encode_value,
    name_problem,
)
from .traffic import Traffic

__all__ = ["Router", "Session", "SessionState", "Output", "Counters", "HubCounters", "Elsewhere"]

_encode_frame = FRAME_ENCODER.encode


class SessionState(enum.Enum):
    """Where a connection stands at the hub."""

    NEW = "new"
    HELD = "held"
    READY = "ready"
    CLOSED = "closed"


class Counters:
    """The traffic of one connection, in messages (frames) and bytes (what ``winerp status`` shows).

    Counted in two places only: `Router.receive` (in) and `Router._emit` (out).
    """

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0


class HubCounters(Traffic):
    """The hub's own counters, beside every session's `Counters`.

    Its `Traffic` part (messages and bytes by kind and direction, errors by kind) is what the
    dashboard, ``/metrics`` and the rates read.
    """

    __slots__ = ("messages_routed",)

    def __init__(self) -> None:
        super().__init__()
        #: Frames the router sent to a client (each may take several wire messages).
        self.messages_routed = 0


class Session:
    """The hub's view of one connection.

    Args:
        codec: Translates this connection's dialect.
        transport: Whatever the I/O layer uses to reach the connection; opaque here.
        now: Wall-clock time of the connection, for status.
    """

    __slots__ = (
        "awaiting",
        "batches",
        "codec",
        "connected_since",
        "counters",
        "name",
        "native",
        "routes",
        "routes_known",
        "serving",
        "state",
        "transport",
    )

    def __init__(self, codec: Codec, transport: Any, now: float) -> None:
        self.codec = codec
        #: Speaks the native dialect: one encoding of a frame serves every such session.
        self.native = isinstance(codec, NativeCodec)
        self.transport = transport
        self.connected_since = now
        self.name = ""
        self.routes: set[str] = set()
        self.routes_known = True
        #: The client reads batched messages (said in its Hello): its transport may batch.
        self.batches = False
        self.state = SessionState.NEW
        #: Requests this session sent that wait for an answer: request id -> destination.
        self.awaiting: dict[int, Session] = {}
        #: Requests other sessions sent to this one: (requester, request id).
        self.serving: set[tuple[Session, int]] = set()
        self.counters = Counters()

    def __repr__(self) -> str:
        return f"<Session {self.name or '?'} {self.state.value}>"


Output = list[tuple[Session, Message]]


class Elsewhere(Protocol):
    """Where a router looks for a name that is not one of its own clients (e.g. a cluster of hubs).

    Without one, a name not here is not connected. With one, `lookup` may return a session
    that stands for a client of another hub: its codec encodes for that hub and its transport
    carries the messages there, so requests, answers and informs take the same paths as
    between two clients of this hub.
    """

    def lookup(self, name: str) -> Session | None:
        """The session standing for ``name`` elsewhere, or None if it is nowhere."""

    def announce(self, name: str, ready: bool) -> None:
        """A client of this hub became ready (``True``) or left (``False``) under ``name``."""


class Router:
    """The hub's routing logic, with no I/O.

    Every method returns the messages to send as ``(session, message)`` pairs, in order.
    Not thread-safe: the hub calls it under one lock.

    Args:
        heartbeat: Interval the hub asks clients to send heartbeats at, in seconds.
        max_message_size: Largest message the hub accepts; announced to clients.
        max_pending: Requests in flight allowed per client.
    """

    def __init__(self, *, heartbeat: float = 1.0, max_message_size: int, max_pending: int = 10_000) -> None:
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.sessions: set[Session] = set()
        self.counters = HubCounters()
        #: What the hub adds to `status` (uptime, rates): set by the hub (dashboard hook).
        self.status_extra: Callable[[], dict[str, Any]] | None = None
        #: Asked for names that are not here (see `Elsewhere`); None: a hub on its own.
        self.elsewhere: Elsewhere | None = None
        self._by_name: dict[str, Session] = {}
        self._held: dict[str, collections.deque[Session]] = {}
        # One handler per frame kind a client sends.
        self._handlers: dict[type, Any] = {
            Request: self._route_request,
            Response: self._route_answer,
            Failure: self._route_answer,
            Pong: self._route_answer,
            Inform: self._route_inform,
            Ping: self._route_ping,
            Hello: self._register,
            AddRoutes: self._add_routes,
        }

    # queries

    def ready_names(self) -> list[str]:
        """Names of the registered, active clients, sorted."""
        return sorted(self._by_name)

    def status(self) -> dict[str, Any]:
        """Counters of the hub and of every connection, for ``winerp status``."""
        status = self._status()
        # dashboard hook: traffic by kind and direction, errors by kind, the hub's own part.
        counters = self.counters
        status["totals"] = counters.totals()
        status["by_kind"] = counters.by_kind()
        status["errors"] = dict(sorted(counters.errors.items()))
        status["pending"] = sum(len(s.awaiting) for s in self.sessions)
        if self.status_extra is not None:
            status.update(self.status_extra())
        return status

    def _status(self) -> dict[str, Any]:
        return {
            "clients": [
                {
                    "name": s.name,
                    "state": s.state.value,
                    "routes": sorted(s.routes) if s.routes_known else None,
                    "connected_since": s.connected_since,
                    "messages_in": s.counters.messages_in,
                    "messages_out": s.counters.messages_out,
                    "bytes_in": s.counters.bytes_in,
                    "bytes_out": s.counters.bytes_out,
                    "in_flight": len(s.awaiting),
                }
                for s in sorted(self.sessions, key=lambda s: (s.name, s.connected_since))
                if s.state is not SessionState.NEW
            ],
            "connections": len(self.sessions),
            "messages_routed": self.counters.messages_routed,
        }

    # lifecycle

    def open(self, codec: Codec, transport: Any, now: float) -> Session:
        """Start tracking a new connection; it must register before anything else."""
        session = Session(codec, transport, now)
        self.sessions.add(session)
        return session

    def receive(self, session: Session, message: Message, out: Output | None = None) -> Output:
        """Route one wire message from ``session``; returns ``out`` (a new list if None) with what to send.

        Raises:
            ProtocolError: the message breaks the protocol; the caller closes the connection.
                What the frames before the bad one produced is in ``out``, to be sent first.
        """
        counters = session.counters
        size = len(message)
        frames = session.codec.decode(message)
        counters.messages_in += len(frames)  # a batch counts each of its frames, as out does
        counters.bytes_in += size
        if out is None:
            out = []
        received = self.counters.received
        for frame in frames:
            kind = type(frame)
            handler = self._handlers.get(kind)
            if handler is None:
                raise errors.ProtocolError(f"a client does not send {kind.__name__}")
            # dashboard hook: in, by kind (`received` has a key for every kind handled). A batch
            # or a 1.x message may hold several frames: its bytes count once.
            entry = received[kind]
            entry[0] += 1
            entry[1] += size
            size = 0
            handler(session, frame, out)
        return out

    def close(self, session: Session) -> Output:
        """Forget ``session``: fail what waits on it, tell the others, promote a held client."""
        out: Output = []
        if session.state is SessionState.CLOSED:
            return out
        was_ready = session.state is SessionState.READY
        session.state = SessionState.CLOSED
        self.sessions.discard(session)
        for request_id, destination in session.awaiting.items():
            destination.serving.discard((session, request_id))
        session.awaiting.clear()
        for requester, request_id in session.serving:
            requester.awaiting.pop(request_id, None)
            message = f"client {session.name!r} disconnected before answering"
            self.counters.error("peer_disconnected")  # dashboard hook
            self._send(out, requester, Failure(request_id, session.name, ErrorCode.PEER_DISCONNECTED, message))
        session.serving.clear()
        if was_ready:
            del self._by_name[session.name]
            self._presence(out, session, ready=False)
            successor = self._unhold(session.name)
            if successor is not None:
                self._activate(out, successor)
        else:
            queue = self._held.get(session.name)
            if queue and session in queue:
                queue.remove(session)
                if not queue:
                    del self._held[session.name]
        return out

    # names

    def lookup(self, name: str) -> Session | None:
        """The ready session called ``name``: the one place a destination is looked up.

        A client of this hub first; else whatever `elsewhere` knows; else None (not connected).
        """
        session = self._by_name.get(name)
        if session is None and self.elsewhere is not None:
            session = self.elsewhere.lookup(name)
        return session

    def _register(self, session: Session, hello: Hello, out: Output) -> None:
        if session.state is not SessionState.NEW:
            raise errors.ProtocolError("Hello sent twice")
        if name_problem(hello.name) is not None:
            raise errors.ProtocolError(
                f"invalid client name {hello.name[:40]!r}: 1 to {MAX_NAME_LENGTH} printable characters"
            )
        session.name = hello.name
        session.routes = set(hello.routes)
        session.routes_known = hello.routes_known
        session.batches = hello.batches
        if hello.name in self._by_name:
            session.state = SessionState.HELD
            self._held.setdefault(hello.name, collections.deque()).append(session)
            self._send(out, session, self._welcome(session, on_hold=True))
        else:
            self._activate(out, session)

    def _activate(self, out: Output, session: Session) -> None:
        session.state = SessionState.READY
        self._by_name[session.name] = session
        self._send(out, session, self._welcome(session, on_hold=False))
        self._presence(out, session, ready=True)

    def _unhold(self, name: str) -> Session | None:
        """The first client on hold for ``name``, taken off the queue, if any."""
        queue = self._held.get(name)
        if not queue:
            return None
        successor = queue.popleft()
        if not queue:
            del self._held[name]
        return successor

    def _presence(self, out: Output, session: Session, *, ready: bool) -> None:
        """Tell every other ready client (and `elsewhere`) that ``session`` joined or left."""
        self._fan_out(out, self._others(session), Presence(session.name, ready))
        if self.elsewhere is not None:
            self.elsewhere.announce(session.name, ready)

    def _others(self, session: Session) -> list[Session]:
        return [s for s in self._by_name.values() if s is not session]

    def _welcome(self, session: Session, *, on_hold: bool) -> Welcome:
        peers = [name for name in self._by_name if name != session.name]
        return Welcome(session.name, on_hold, self.heartbeat, self.max_message_size, sorted(peers), batches=True)

    def _add_routes(self, session: Session, frame: AddRoutes, out: Output) -> None:
        self._require_registered(session, frame)
        session.routes.update(frame.routes)

    def _require_registered(self, session: Session, frame: Frame) -> None:
        if session.state is SessionState.NEW:
            raise errors.ProtocolError(f"{type(frame).__name__} before Hello: register a name first")

    # one path per frame kind

    def _route_request(self, session: Session, request: Request, out: Output) -> None:
        if request.peer == HUB and session.state is SessionState.READY:
            self._answer_builtin(session, request, out)
            return
        destination = self._destination(session, request.id, request.peer, out)
        if destination is not None:
            # A route the hub has not heard of goes to the client all the same, which answers
            # RouteNotFound itself if it has none: its AddRoutes may be on its way on its own
            # connection, and the hub cannot tell which of two connections spoke first.
            forwarded = Request(request.id, session.name, request.route, request.args)
            self._forward(out, session, destination, request.id, forwarded)

    def _route_ping(self, session: Session, ping: Ping, out: Output) -> None:
        if ping.peer == HUB:
            self._send(out, session, Pong(ping.id, HUB))
            return
        destination = self._destination(session, ping.id, ping.peer, out)
        if destination is not None:
            self._forward(out, session, destination, ping.id, Ping(ping.id, session.name))

    def _destination(self, session: Session, request_id: int, peer: str, out: Output) -> Session | None:
        """The session a request or ping from ``session`` goes to, or None once the requester is answered."""
        if session.state is SessionState.NEW:
            raise errors.ProtocolError("request before Hello: register a name first")
        problem: tuple[ErrorCode, str] | None = None
        destination = None
        if session.state is not SessionState.READY:
            problem = ErrorCode.NOT_READY, "this client is on hold"
        elif request_id in session.awaiting:
            problem = ErrorCode.BAD_REQUEST, "request id already in flight"
        elif len(session.awaiting) >= self.max_pending:
            problem = ErrorCode.TOO_MANY_PENDING, f"more than {self.max_pending} requests in flight"
        else:
            destination = self.lookup(peer)
            if destination is None:
                problem = ErrorCode.DESTINATION_NOT_FOUND, f"client {peer!r} is not connected"
        if problem is not None:
            self._fail(out, session, request_id, peer, *problem)
        return destination

    def _forward(self, out: Output, requester: Session, destination: Session, request_id: int, frame: Frame) -> None:
        """Send a request or ping on to ``destination`` and remember who waits for the answer."""
        try:
            messages = destination.codec.encode(frame)
        except Undeliverable as exc:
            self._fail(out, requester, request_id, destination.name, exc.code, exc.message)
            return
        requester.awaiting[request_id] = destination
        destination.serving.add((requester, request_id))
        self._emit(out, destination, messages, type(frame))

    def _route_answer(self, session: Session, answer: Response | Failure | Pong, out: Output) -> None:
        requester = self.lookup(answer.peer)
        # Only the session a request went to may answer it: late, stray or spoofed answers drop.
        if requester is None or requester.awaiting.get(answer.id) is not session:
            self._require_registered(session, answer)
            return
        del requester.awaiting[answer.id]
        session.serving.discard((requester, answer.id))
        forwarded: Frame
        if isinstance(answer, Response):
            forwarded = Response(answer.id, session.name, answer.result)
        elif isinstance(answer, Pong):
            forwarded = Pong(answer.id, session.name)
        else:
            # dashboard hook: errors clients answer (remote_error, route_not_found, ...), by kind
            self.counters.error(_error_kind(answer.code))
            forwarded = Failure(
                answer.id, session.name, answer.code, answer.message, answer.remote_type, answer.traceback
            )
        try:
            messages = requester.codec.encode(forwarded)
        except Undeliverable as exc:
            self._fail(out, requester, answer.id, session.name, exc.code, exc.message)
            return
        self._emit(out, requester, messages, type(forwarded))

    def _route_inform(self, session: Session, inform: Inform, out: Output) -> None:
        if session.state is not SessionState.READY:
            self._require_registered(session, inform)
            return  # on hold: its informs go nowhere
        information = Information(session.name, inform.data)
        if not inform.peers:
            self._fan_out(out, self._others(session), information)
            return
        shared: list[Message] = []
        for name in inform.peers if len(inform.peers) == 1 else dict.fromkeys(inform.peers):
            destination = self.lookup(name)
            if destination is None:
                self._fail(out, session, 0, name, ErrorCode.DESTINATION_NOT_FOUND, f"client {name!r} is not connected")
            else:
                shared = self._deliver(out, destination, information, shared)

    def _answer_builtin(self, session: Session, request: Request, out: Output) -> None:
        result: Any
        if request.route == "peers":
            result = self._peers(session, decode_value(request.args))
        elif request.route == "status":
            result = self.status()
        elif request.route == "routes":
            # Which ready clients have a given route: the basis of request_many.
            args = decode_value(request.args)
            wanted = args.get("route") if isinstance(args, dict) else None
            if not isinstance(wanted, str):
                self._fail(
                    out, session, request.id, HUB, ErrorCode.BAD_REQUEST, "the hub's 'routes' takes route=<a name>"
                )
                return
            result = sorted(s.name for s in self._others(session) if wanted in s.routes or not s.routes_known)
        else:
            self._fail(
                out, session, request.id, HUB, ErrorCode.ROUTE_NOT_FOUND, f"the hub has no route {request.route!r}"
            )
            return
        self._send(out, session, Response(request.id, HUB, Raw(encode_value(result))))

    def _peers(self, session: Session, args: Any) -> list[str] | dict[str, list[str]]:
        """The other ready clients: sorted names, or with ``routes=True`` their sorted routes.

        A winerp 1.x client's routes are unknown to the hub: it is listed with none.
        """
        ready = [(name, s) for name, s in sorted(self._by_name.items()) if s is not session]
        if isinstance(args, dict) and args.get("routes") is True:
            return {name: sorted(s.routes) if s.routes_known else [] for name, s in ready}
        return [name for name, _ in ready]

    # output: every message leaves through _emit

    def _fail(self, out: Output, session: Session, request_id: int, peer: str, code: ErrorCode, message: str) -> None:
        self.counters.error(code.name.lower())  # dashboard hook: errors the hub answers, by kind
        self._send(out, session, Failure(request_id, peer, code, message))

    def _fan_out(self, out: Output, destinations: list[Session], frame: Frame) -> None:
        """Send one frame to many sessions."""
        shared: list[Message] = []
        for destination in destinations:
            shared = self._deliver(out, destination, frame, shared)

    def _deliver(self, out: Output, destination: Session, frame: Frame, shared: list[Message]) -> list[Message]:
        """Send ``frame`` to one of many destinations; returns ``shared`` for the next one.

        ``shared`` is the native encoding of ``frame`` once made: one encoding serves every
        native destination (a broadcast inform, presence), while a winerp 1.x codec encodes
        for its own connection.
        """
        if destination.native:
            shared = shared or [_encode_frame(frame)]
            self._emit(out, destination, shared, type(frame))
        else:
            self._send(out, destination, frame)
        return shared

    def _send(self, out: Output, destination: Session, frame: Frame) -> None:
        try:
            messages = destination.codec.encode(frame)
        except Undeliverable:
            # Only informs and presence reach here with a payload a codec may refuse; there is
            # no caller waiting on them to tell.
            return
        self._emit(out, destination, messages, type(frame))

    def _emit(self, out: Output, destination: Session, messages: list[Message], kind: type) -> None:
        """Add one frame's wire messages for ``destination`` to ``out``: the one place output is counted.

        ``kind`` is the frame's class, for the hub's counts by kind.
        """
        counters = destination.counters
        sent = self.counters.sent.get(kind) or self.counters.sent_entry(kind)  # dashboard hook: out, by kind
        for message in messages:
            size = len(message)
            counters.messages_out += 1
            counters.bytes_out += size
            sent[0] += 1
            sent[1] += size
            out.append((destination, message))
        self.counters.messages_routed += 1


def _error_kind(code: int) -> str:
    """The name of an error code as the hub counts it (``remote_error``, ...)."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error_{code}"

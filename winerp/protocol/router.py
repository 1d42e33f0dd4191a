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
from typing import Any

import msgspec
from msgspec import Raw

from .. import errors
from .codec import Codec, Message, NativeCodec, Undeliverable
from .frames import (
    FRAME_DECODER,
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

__all__ = ["Router", "Session", "SessionState", "Output"]

_encode_frame = FRAME_ENCODER.encode
_decode_frame = FRAME_DECODER.decode


class SessionState(enum.Enum):
    """Where a connection stands at the hub."""

    NEW = "new"
    HELD = "held"
    READY = "ready"
    CLOSED = "closed"


class Session:
    """The hub's view of one connection.

    Args:
        codec: Translates this connection's dialect.
        transport: Whatever the I/O layer uses to reach the connection; opaque here.
        now: Wall-clock time of the connection, for status.
    """

    __slots__ = (
        "awaiting",
        "bytes_in",
        "bytes_out",
        "codec",
        "connected_since",
        "messages_in",
        "messages_out",
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
        #: Speaks the native dialect: frames are encoded and decoded here without the codec.
        self.native = isinstance(codec, NativeCodec)
        self.transport = transport
        self.connected_since = now
        self.name = ""
        self.routes: set[str] = set()
        self.routes_known = True
        self.state = SessionState.NEW
        #: Requests this session sent that wait for an answer: request id -> destination.
        self.awaiting: dict[int, Session] = {}
        #: Requests other sessions sent to this one: (requester, request id).
        self.serving: set[tuple[Session, int]] = set()
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    def __repr__(self) -> str:
        return f"<Session {self.name or '?'} {self.state.value}>"


Output = list[tuple[Session, Message]]


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
        self._by_name: dict[str, Session] = {}
        self._held: dict[str, collections.deque[Session]] = {}
        self.messages_routed = 0
        # dashboard hook: the traffic counters (read by status, the dashboard and /metrics), and
        # what the hub adds to the status object (its rates); set by the hub.
        self.traffic = Traffic()
        self.status_extra: Any = None
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
        # dashboard hook: the traffic counters and the hub's own part (rates).
        traffic = self.traffic
        status["totals"] = traffic.summary(
            sum(s.messages_out for s in self.sessions), sum(s.bytes_out for s in self.sessions)
        )
        status["received"] = traffic.received_by_kind()
        status["errors"] = dict(sorted(traffic.errors.items()))
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
                    "messages_in": s.messages_in,
                    "messages_out": s.messages_out,
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                    "in_flight": len(s.awaiting),
                }
                for s in sorted(self.sessions, key=lambda s: (s.name, s.connected_since))
                if s.state is not SessionState.NEW
            ],
            "connections": len(self.sessions),
            "messages_routed": self.messages_routed,
        }

    # lifecycle

    def open(self, codec: Codec, transport: Any, now: float) -> Session:
        """Start tracking a new connection; it must register before anything else."""
        session = Session(codec, transport, now)
        self.sessions.add(session)
        return session

    def receive(self, session: Session, message: Message) -> Output:
        """Route one wire message from ``session``.

        Raises:
            ProtocolError: the message breaks the protocol; the caller closes the connection.
        """
        session.messages_in += 1
        session.bytes_in += len(message)
        out: Output = []
        if session.native and type(message) is bytes:
            # The native codec's work, inline: this runs for every message the hub routes.
            try:
                frame = _decode_frame(message)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise errors.ProtocolError(f"undecodable frame: {exc}") from None
            counted = self.traffic.received.get(type(frame))  # dashboard hook: in, by kind
            if counted is not None:
                counted[0] += 1
                counted[1] += len(message)
            self._dispatch(session, frame, out)
        else:
            size = len(message)
            for frame in session.codec.decode(message):
                counted = self.traffic.received.get(type(frame))  # dashboard hook: in, by kind
                if counted is not None:
                    counted[0] += 1
                    counted[1] += size
                    size = 0  # a 1.x message that holds several frames is counted once in bytes
                self._dispatch(session, frame, out)
        return out

    def close(self, session: Session) -> Output:
        """Forget ``session``: fail what waits on it, tell the others, promote a held client."""
        out: Output = []
        if session.state is SessionState.CLOSED:
            return out
        was_ready = session.state is SessionState.READY
        session.state = SessionState.CLOSED
        self.sessions.discard(session)
        # dashboard hook: what this session was sent stays in the totals after it leaves.
        self.traffic.sent_messages_retired += session.messages_out
        self.traffic.sent_bytes_retired += session.bytes_out
        for request_id, destination in session.awaiting.items():
            destination.serving.discard((session, request_id))
        session.awaiting.clear()
        for requester, request_id in session.serving:
            requester.awaiting.pop(request_id, None)
            self.traffic.error("peer_disconnected")  # dashboard hook
            self._send(
                out,
                requester,
                Failure(
                    request_id,
                    session.name,
                    ErrorCode.PEER_DISCONNECTED,
                    f"client {session.name!r} disconnected before answering",
                ),
            )
        session.serving.clear()
        if was_ready:
            del self._by_name[session.name]
            self._broadcast(out, Presence(session.name, False), exclude=None)
            queue = self._held.get(session.name)
            if queue:
                successor = queue.popleft()
                if not queue:
                    del self._held[session.name]
                self._activate(out, successor)
        else:
            queue = self._held.get(session.name)
            if queue and session in queue:
                queue.remove(session)
                if not queue:
                    del self._held[session.name]
        return out

    # internals

    def _dispatch(self, session: Session, frame: Frame, out: Output) -> None:
        handler = self._handlers.get(type(frame))
        if handler is None:
            raise errors.ProtocolError(f"a client does not send {type(frame).__name__}")
        handler(session, frame, out)

    def _add_routes(self, session: Session, frame: AddRoutes, out: Output) -> None:
        self._require_registered(session, frame)
        session.routes.update(frame.routes)

    def _require_registered(self, session: Session, frame: Frame) -> None:
        if session.state is SessionState.NEW:
            raise errors.ProtocolError(f"{type(frame).__name__} before Hello: register a name first")

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
        self._broadcast(out, Presence(session.name, True), exclude=session)

    def _welcome(self, session: Session, *, on_hold: bool) -> Welcome:
        peers = [name for name in self._by_name if name != session.name]
        return Welcome(session.name, on_hold, self.heartbeat, self.max_message_size, sorted(peers))

    def _destination(self, session: Session, request_id: int, peer: str, out: Output) -> Session | None:
        """Return the ready session named ``peer``, or answer the requester and return None."""
        if session.state is SessionState.NEW:
            raise errors.ProtocolError("request before Hello: register a name first")
        if session.state is not SessionState.READY:
            self._fail(out, session, request_id, peer, ErrorCode.NOT_READY, "this client is on hold")
            return None
        if request_id in session.awaiting:
            self._fail(out, session, request_id, peer, ErrorCode.BAD_REQUEST, "request id already in flight")
            return None
        if len(session.awaiting) >= self.max_pending:
            self._fail(
                out,
                session,
                request_id,
                peer,
                ErrorCode.TOO_MANY_PENDING,
                f"more than {self.max_pending} requests in flight",
            )
            return None
        destination = self._by_name.get(peer)
        if destination is None:
            self._fail(
                out, session, request_id, peer, ErrorCode.DESTINATION_NOT_FOUND, f"client {peer!r} is not connected"
            )
        return destination

    def _route_request(self, session: Session, request: Request, out: Output) -> None:
        request_id = request.id
        awaiting = session.awaiting
        destination = self._by_name.get(request.peer)
        if (
            destination is None
            or not destination.native
            or session.state is not SessionState.READY
            or request_id in awaiting
            or len(awaiting) >= self.max_pending
        ):
            self._route_request_carefully(session, request, out)
            return
        # The usual case, in one place: a ready client calls a native one.
        message = _encode_frame(Request(request_id, session.name, request.route, request.args))
        awaiting[request_id] = destination
        destination.serving.add((session, request_id))
        destination.messages_out += 1
        destination.bytes_out += len(message)
        self.messages_routed += 1
        out.append((destination, message))

    def _route_request_carefully(self, session: Session, request: Request, out: Output) -> None:
        if request.peer == HUB and session.state is SessionState.READY:
            self._answer_builtin(session, request, out)
            return
        destination = self._destination(session, request.id, request.peer, out)
        if destination is None:
            return
        # A route the hub has not heard of goes to the client all the same, which answers
        # RouteNotFound itself if it has none: its AddRoutes may be on its way on its own
        # connection, and the hub cannot tell which of two connections spoke first.
        self._forward(
            out, session, destination, request.id, Request(request.id, session.name, request.route, request.args)
        )

    def _route_ping(self, session: Session, ping: Ping, out: Output) -> None:
        if ping.peer == HUB:
            self._send(out, session, Pong(ping.id, HUB))
            return
        destination = self._destination(session, ping.id, ping.peer, out)
        if destination is not None:
            self._forward(out, session, destination, ping.id, Ping(ping.id, session.name))

    def _forward(self, out: Output, requester: Session, destination: Session, request_id: int, frame: Frame) -> None:
        try:
            messages = destination.codec.encode(frame)
        except Undeliverable as exc:
            self._fail(out, requester, request_id, destination.name, exc.code, exc.message)
            return
        requester.awaiting[request_id] = destination
        destination.serving.add((requester, request_id))
        self._emit(out, destination, messages)

    def _route_answer(self, session: Session, answer: Response | Failure | Pong, out: Output) -> None:
        requester = self._by_name.get(answer.peer)
        # Only the session a request went to may answer it: late, stray or spoofed answers drop.
        if requester is None or requester.awaiting.get(answer.id) is not session:
            self._require_registered(session, answer)
            return
        del requester.awaiting[answer.id]
        session.serving.discard((requester, answer.id))
        forwarded: Frame
        if isinstance(answer, Response):
            if requester.native:
                # The usual case, in one place.
                message = _encode_frame(Response(answer.id, session.name, answer.result))
                requester.messages_out += 1
                requester.bytes_out += len(message)
                self.messages_routed += 1
                out.append((requester, message))
                return
            forwarded = Response(answer.id, session.name, answer.result)
        elif isinstance(answer, Pong):
            forwarded = Pong(answer.id, session.name)
        else:
            # dashboard hook: errors clients answer (remote_error, route_not_found, ...), by kind
            self.traffic.error(_error_kind(answer.code))
            forwarded = Failure(
                answer.id, session.name, answer.code, answer.message, answer.remote_type, answer.traceback
            )
        try:
            messages = requester.codec.encode(forwarded)
        except Undeliverable as exc:
            self._fail(out, requester, answer.id, session.name, exc.code, exc.message)
            return
        self._emit(out, requester, messages)

    def _route_inform(self, session: Session, inform: Inform, out: Output) -> None:
        self._require_registered(session, inform)
        if session.state is not SessionState.READY:
            return
        information = Information(session.name, inform.data)
        if not inform.peers:
            self._broadcast(out, information, exclude=session)
            return
        native_message = b""
        for name in inform.peers if len(inform.peers) == 1 else dict.fromkeys(inform.peers):
            destination = self._by_name.get(name)
            if destination is None:
                self._fail(out, session, 0, name, ErrorCode.DESTINATION_NOT_FOUND, f"client {name!r} is not connected")
            elif destination.native:
                # Encoded once for every native destination.
                native_message = native_message or _encode_frame(information)
                destination.messages_out += 1
                destination.bytes_out += len(native_message)
                self.messages_routed += 1
                out.append((destination, native_message))
            else:
                self._send(out, destination, information)

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
            result = [
                s.name
                for s in self._by_name.values()
                if s is not session and (wanted in s.routes or not s.routes_known)
            ]
            result.sort()
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

    def _fail(self, out: Output, session: Session, request_id: int, peer: str, code: ErrorCode, message: str) -> None:
        self.traffic.error(code.name.lower())  # dashboard hook: errors the hub answers, by kind
        self._send(out, session, Failure(request_id, peer, code, message))

    def _broadcast(self, out: Output, frame: Frame, exclude: Session | None) -> None:
        native_message = b""
        for destination in self._by_name.values():
            if destination is exclude:
                continue
            if destination.native:
                native_message = native_message or _encode_frame(frame)
                self._emit(out, destination, [native_message])
            else:
                self._send(out, destination, frame)

    def _send(self, out: Output, destination: Session, frame: Frame) -> None:
        try:
            messages = destination.codec.encode(frame)
        except Undeliverable:
            # Only informs and presence reach here with a payload a codec may refuse; there is
            # no caller waiting on them to tell.
            return
        self._emit(out, destination, messages)

    def _emit(self, out: Output, destination: Session, messages: list[Message]) -> None:
        for message in messages:
            destination.messages_out += 1
            destination.bytes_out += len(message)
            out.append((destination, message))
        self.messages_routed += 1


def _error_kind(code: int) -> str:
    """The name of an error code as counted by `Traffic` (``remote_error``, ...)."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error_{code}"

"""A hub's membership of a cluster: the router's view of other hubs' clients, and the way there.

Each ready client of another hub appears in this hub's router as a `RemoteSession`: a
session like any other, whose codec does not write to a socket but sends the frame over
NATS, addressed to the hub that holds the client (``winerp.<cluster>.hub.<hub id>``), on the
hub loop's own connection (`winerp.cluster.direct`; through the bridge where there is none). So
the router's own logic (names on hold, requests in flight, a peer that leaves failing what
waits on it, presence, ``peers`` and ``routes``) covers the whole cluster unchanged, and a
call between two clients of one hub never leaves it.

What crosses between hubs is an `Envelope`: the sender's name, its hub, and the frame as the
receiving hub's router expects it from that sender (a client's view: ``peer`` names the
destination). User payloads are `msgspec.Raw` inside the frame: never decoded on the way.

Names: a local client becomes ready only once its hub holds the name's key in the cluster's
key-value bucket (`Registry.claim`); a hub that holds the key passes the name to its next
local client on hold directly. The key-value watch turns other hubs' keys into remote
sessions (joins) and their deletion or expiry into closes (leaves).

Everything in `ClusterRouter` and `ClusterLink` runs on the hub's loop thread, under the
hub's lock (but `start` and `stop`, before and after the loop); nats-py runs on the bridge's
thread (`winerp.cluster.bridge`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..protocol.codec import Message, Undeliverable
from ..protocol.frames import (
    ErrorCode,
    Failure,
    Frame,
    Inform,
    Information,
    Ping,
    Pong,
    Request,
    Response,
)
from ..protocol.router import Output, Router, Session, SessionState
from .bridge import Bridge
from .direct import ConnectionLost, Direct, Unsupported, open_direct
from .names import HubRecord, NameRecord, Registry, Taken, decode_hub_record, decode_name_record
from .subjects import (
    HUB_PREFIX,
    NAME_PREFIX,
    all_subject,
    check_cluster_name,
    decode_name,
    hub_subject,
    name_key,
    new_hub_id,
)

__all__ = ["ClusterLink", "ClusterRouter", "RemoteSession", "Envelope", "UNREACHABLE"]

logger = logging.getLogger("winerp.hub.cluster")

#: Said by every error that the cluster being out of reach caused.
UNREACHABLE = "the cluster is unreachable (its NATS server does not answer)"


class Envelope(msgspec.Struct, array_like=True):
    """What one hub sends another: ``frame`` as from client ``source`` of hub ``origin``."""

    source: str
    origin: str
    frame: Frame


_encode_envelope = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode


class RemoteSession(Session):
    """A ready client of another hub, as this hub's router sees it."""

    __slots__ = ("hub",)

    def __init__(self, codec: RemoteCodec, name: str, hub: str, record: NameRecord | None) -> None:
        super().__init__(codec, None, time.time())
        self.hub = hub
        self.name = name
        self.state = SessionState.READY
        if record is not None:
            self.routes = set(record.routes)
            self.routes_known = record.routes_known
        else:
            self.routes_known = False  # not known yet: requests go through, it answers itself


class RemoteCodec:
    """Sends the frames the router writes to a remote client over NATS, and returns no message."""

    __slots__ = ("link", "name", "subject")

    def __init__(self, link: ClusterLink, name: str, subject: str) -> None:
        self.link = link
        self.name = name
        self.subject = subject

    def decode(self, message: Message) -> list[Frame]:
        return []  # frames of remote clients arrive through ClusterLink.on_message

    def encode(self, frame: Frame) -> list[Message]:
        """Send ``frame`` to the hub of this client; nothing is written here. Raises `Undeliverable`."""
        kind = type(frame)
        name = self.name
        turned: Frame
        # Turned around: the receiving hub reads it as sent by the source, to this name.
        if kind is Request:
            source, turned = frame.peer, Request(frame.id, name, frame.route, frame.args)  # type: ignore[union-attr]
        elif kind is Response:
            source, turned = frame.peer, Response(frame.id, name, frame.result)  # type: ignore[union-attr]
        elif kind is Failure:
            assert isinstance(frame, Failure)
            source = frame.peer
            turned = Failure(frame.id, name, frame.code, frame.message, frame.remote_type, frame.traceback)
        elif kind is Ping:
            source, turned = frame.peer, Ping(frame.id, name)  # type: ignore[union-attr]
        elif kind is Pong:
            source, turned = frame.peer, Pong(frame.id, name)  # type: ignore[union-attr]
        elif kind is Information:
            if self.link.router.broadcasting:
                return []  # an inform to all crosses once per hub, on the cluster's subject
            source, turned = frame.source, Inform([name], frame.data)  # type: ignore[union-attr]
        else:
            return []  # presence crosses through the key-value store; Welcome never goes here
        self.link.send(self.subject, Envelope(source, self.link.hub_id, turned))
        return []


class ClusterRouter(Router):
    """The router of a hub in a cluster: names are claimed cluster-wide before a client is ready."""

    def __init__(self, link: ClusterLink, **options: Any) -> None:
        super().__init__(**options)
        self.link = link
        #: True while an inform to all is routed: remote sessions then take no copy.
        self.broadcasting = False
        #: Local sessions waiting for the cluster's answer to their claim, by name.
        self.claiming: dict[str, Session] = {}

    def ready_names(self) -> list[str]:
        """Names of this hub's own ready clients (`Hub.clients`); ``peers`` covers the cluster."""
        return sorted(name for name, s in self._by_name.items() if not isinstance(s, RemoteSession))

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["hubs"] = self.link.hubs_status()
        status["hub_id"] = self.link.hub_id
        return status

    def _activate(self, out: Output, session: Session) -> None:
        link = self.link
        name = session.name
        if isinstance(session, RemoteSession) or name in link.claimed or not link.bridge.connected:
            # This hub holds the name already (the next local client on hold), or the cluster
            # is away (local traffic goes on; the name is claimed when it is back).
            super()._activate(out, session)
            link.claim(session)
            return
        if name in self.claiming:
            session.state = SessionState.HELD
            self._held.setdefault(name, collections.deque()).append(session)
            self._send(out, session, self._welcome(session, on_hold=True))
            return
        # Ready once the cluster says the name is ours (a few milliseconds): no Welcome yet.
        session.state = SessionState.HELD
        self.claiming[name] = session
        link.claim(session)

    def claimed(self, session: Session, error: BaseException | None) -> Output:
        """The cluster's answer to ``session``'s claim: ready it, or put it on hold."""
        out: Output = []
        name = session.name
        if self.claiming.get(name) is session:
            del self.claiming[name]
        if session.state is SessionState.CLOSED:
            if error is None:
                self.link.claimed.add(name)
                self._promote(out, name)
            return out
        if session.state is SessionState.READY:
            if isinstance(error, Taken):
                # Lost to another hub while the cluster was away: the client must go on hold.
                self.link.evict(session)
            elif error is None:
                self.link.claimed.add(name)
            return out
        if error is None or not isinstance(error, Taken):
            if error is not None:
                logger.warning("could not claim %r in the cluster (%s); serving it on this hub", name, error)
            else:
                self.link.claimed.add(name)
            self._activate_now(out, session)
            return out
        # Another hub holds it: wait in front of the local queue for the holder to leave.
        self._held.setdefault(name, collections.deque()).appendleft(session)
        self._send(out, session, self._welcome(session, on_hold=True))
        if not isinstance(self._by_name.get(name), RemoteSession):
            self.link.retry_later(name)  # its holder left before this hub even saw it
        return out

    def _activate_now(self, out: Output, session: Session) -> None:
        existing = self._by_name.get(session.name)
        if isinstance(existing, RemoteSession):
            out.extend(self.close(existing))  # stale: the name is ours
        Router._activate(self, out, session)

    def promote(self, name: str) -> Output:
        """Give ``name`` to its next local client on hold, if no one holds it."""
        out: Output = []
        self._promote(out, name)
        return out

    def _promote(self, out: Output, name: str) -> None:
        if name in self._by_name or name in self.claiming:
            return
        queue = self._held.get(name)
        if not queue:
            if name in self.link.claimed:
                self.link.release(name)
            return
        successor = queue.popleft()
        if not queue:
            del self._held[name]
        self._activate(out, successor)

    def close(self, session: Session) -> Output:
        name = session.name
        local_ready = session.state is SessionState.READY and not isinstance(session, RemoteSession)
        out = super().close(session)
        if local_ready and name not in self._by_name and name in self.link.claimed:
            self.link.release(name)
        return out

    def _add_routes(self, session: Session, frame: Any, out: Output) -> None:
        super()._add_routes(session, frame, out)
        if session.state is SessionState.READY and session.name in self.link.claimed:
            self.link.claim(session)  # the new routes, for the other hubs' peers and request_many

    def _route_inform(self, session: Session, inform: Inform, out: Output) -> None:
        if inform.peers:
            super()._route_inform(session, inform, out)
            return
        if session.state is SessionState.READY and not isinstance(session, RemoteSession):
            try:
                self.link.send(all_subject(self.link.cluster), Envelope(session.name, self.link.hub_id, inform))
            except Undeliverable as exc:
                logger.warning("an inform to all from %r stays on this hub: %s", session.name, exc.message)
        self.broadcasting = True
        try:
            super()._route_inform(session, inform, out)
        finally:
            self.broadcasting = False

    def _fail(self, out: Output, session: Session, request_id: int, peer: str, code: ErrorCode, message: str) -> None:
        if code == ErrorCode.DESTINATION_NOT_FOUND and not self.link.bridge.connected:
            message = f"{message} here, and {UNREACHABLE}"
        super()._fail(out, session, request_id, peer, code, message)


Deliver = Callable[[Output], None]


class ClusterLink:
    """One hub's part in a cluster: the bridge to NATS, the name registry, the remote sessions.

    Args:
        servers: NATS URLs.
        cluster: The cluster's name; hubs of other clusters on the same NATS never meet.
        lock: The hub's lock around its router.
        deliver: Sends the router's output (on the hub's thread).
        evict: Closes a local client's connection with a reason (on the hub's thread).
        wake: Pokes the hub's loop.
        ttl: Seconds a dead hub's names live on.
        router_options: For `Router`.
    """

    def __init__(
        self,
        servers: list[str],
        cluster: str,
        *,
        lock: Any,
        deliver: Deliver,
        evict: Callable[[Session, str], None],
        wake: Callable[[], None],
        ttl: float = 4.5,
        **router_options: Any,
    ) -> None:
        self.cluster = check_cluster_name(cluster)
        self.hub_id = new_hub_id()
        self.subject = hub_subject(cluster, self.hub_id)
        self.ttl = ttl
        self.address = ""
        self.started = time.time()
        self._lock = lock
        self._deliver = deliver
        self._evict = evict
        self.router = ClusterRouter(self, **router_options)
        self.bridge = Bridge(servers, wake=wake, on_down=self._on_down, on_up=self._on_up, name=f"winerp-hub {cluster}")
        self.bridge.on_turn = self.service
        self.registry: Registry | None = None
        #: Names this hub holds in the cluster (hub thread's view).
        self.claimed: set[str] = set()
        #: Other hubs' records, by hub id.
        self.hubs: dict[str, HubRecord] = {}
        self._watch_task: asyncio.Future[Any] | None = None
        self._refresh_task: Any = None
        #: The hub loop's own connection for hub-to-hub messages (None: through the bridge).
        self.direct: Direct | None = None
        #: The largest message NATS takes (its server says; 1 MiB unless configured).
        self.max_payload = 1_048_576
        self._poller: Any = None
        self._reopening = False
        self._stopping = False

    # lifecycle (the hub's thread that starts and stops it)

    def start(self, address: str, timeout: float = 5.0, poller: Any = None) -> None:
        """Connect, take part: subscribe, announce this hub, watch the names. Blocks until done.

        With the hub's ``poller`` (before its loop runs), hub-to-hub messages take a direct
        connection that the hub's loop polls itself (`winerp.cluster.direct`), where it can.
        """
        self.address = address
        self._poller = poller
        self.bridge.start(timeout)
        self.max_payload = int(self.bridge.nc.max_payload or self.max_payload)
        try:
            if poller is not None and os.environ.get("WINERP_CLUSTER_NO_DIRECT") != "1":
                self._open_direct_now(timeout)
            asyncio.run_coroutine_threadsafe(self._join(), self.bridge.loop).result(timeout)
        except BaseException:
            self._close_direct()
            self.bridge.stop()
            raise
        self._refresh_task = asyncio.run_coroutine_threadsafe(self._refresh_forever(), self.bridge.loop)
        logger.info("hub %s joined cluster %r through %s", self.hub_id, self.cluster, ", ".join(self.bridge.servers))

    def stop(self, timeout: float = 3.0) -> None:
        """Give up this hub's names and its record at once (others need not wait for expiry), then close."""
        self._stopping = True
        for task in (self._refresh_task, self._watch_task):
            if task is not None:
                task.cancel()
        direct = self.direct
        if direct is not None:
            try:
                direct.flush()  # the last answers, as far as the socket takes them at once
            except ConnectionLost:
                pass
            self._close_direct()
        registry = self.registry
        if registry is not None and self.bridge.connected:
            try:
                asyncio.run_coroutine_threadsafe(registry.release_all(), self.bridge.loop).result(timeout)
            except Exception as exc:  # noqa: BLE001 - the names expire by themselves
                logger.debug("could not release this hub's names: %s", exc)
        self.bridge.stop()

    async def _join(self) -> None:
        bridge = self.bridge
        if self.direct is None:
            await bridge.nc.subscribe(self.subject, cb=self._on_nats_message, pending_msgs_limit=1_000_000)
            await bridge.nc.subscribe(all_subject(self.cluster), cb=self._on_nats_message, pending_msgs_limit=1_000_000)
        self.registry = Registry(bridge.js, self.cluster, self.hub_id, self.ttl)
        await self._enter_registry()

    async def _enter_registry(self) -> None:
        assert self.registry is not None
        await self.registry.open()
        await self.registry.announce(HubRecord(self.hub_id, self.address, self.started))
        first = asyncio.get_running_loop().create_future()

        def snapshot(keys: dict[str, bytes]) -> None:
            self.bridge.deliver(self._on_snapshot, keys)
            if not first.done():
                first.set_result(None)

        def change(key: str, value: bytes | None) -> None:
            self.bridge.deliver(self._on_change, (key, value))

        if self._watch_task is not None:
            self._watch_task.cancel()
        self._watch_task = asyncio.ensure_future(self.registry.watch(snapshot, change))
        await asyncio.wait_for(first, 5)

    async def _on_nats_message(self, msg: Any) -> None:
        self.bridge.deliver(self._on_message, msg.data)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self.bridge.connected or self.registry is None:
                continue
            try:
                lost = await self.registry.refresh()
            except Exception as exc:  # noqa: BLE001 - retried at the next turn; expiry is the net
                logger.debug("refreshing this hub's names failed: %s", exc)
                continue
            for name in lost:
                self.bridge.deliver(self._on_lost, name)

    # from the router (hub thread)

    def send(self, subject: str, envelope: Envelope) -> None:
        """Publish ``envelope`` to ``subject``: at most once, dropped while NATS is away.

        Raises:
            Undeliverable: it is larger than NATS takes (the router fails the request, or
                turns a reply into a failure, with `ErrorCode.PAYLOAD_TOO_LARGE`).
        """
        data = _encode_envelope(envelope)
        if len(data) > self.max_payload:
            raise Undeliverable(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"{len(data)} bytes cannot cross to another hub: the cluster's NATS server takes "
                f"{self.max_payload} at most",
            )
        direct = self.direct
        if direct is not None:
            direct.publish(subject, data)  # leaves at this turn's `flush`
        else:
            self.bridge.publish(subject, data)

    # the direct connection (hub thread)

    def flush(self) -> None:
        """Write what this turn of the hub's loop published, in one write. Hub thread."""
        direct = self.direct
        if direct is not None and direct.pending:
            try:
                direct.flush()
            except ConnectionLost as exc:
                self._direct_lost(exc)

    def service(self) -> None:
        """Read and route what arrived on the direct connection; write what waits. Hub thread."""
        direct = self.direct
        if direct is not None:
            try:
                direct.service()
            except ConnectionLost as exc:
                self._direct_lost(exc)

    def detach(self) -> None:
        """The hub's loop is shutting down: stop reading other hubs' frames (what goes to them
        still leaves, at `stop`). Hub thread."""
        self._stopping = True
        direct = self.direct
        if direct is not None and self._poller is not None:
            self._poller.unregister(direct.sock)

    def _open_direct_now(self, timeout: float) -> None:
        try:
            url = self.bridge.nc.connected_url
            if url is None:
                raise OSError("nats-py lost its connection meanwhile")
            opened = open_direct(url, self._direct_subjects(), self.bridge.name, timeout)
        except (Unsupported, OSError, ValueError) as exc:
            logger.info("hub-to-hub messages go through nats-py (no direct connection: %s)", exc)
            return
        self._adopt(opened)

    def _direct_subjects(self) -> list[str]:
        return [self.subject, all_subject(self.cluster)]

    def _adopt(self, opened: tuple[Any, bytes, int]) -> None:
        sock, rest, max_payload = opened
        self.max_payload = max_payload
        poller = self._poller
        self.direct = Direct(sock, rest, max_payload, self._on_message, lambda on: poller.watch_writes(sock, on))
        poller.register(sock)
        if rest:
            self.service()  # what came with the confirmation: the poller will not report it

    def _close_direct(self) -> None:
        direct, self.direct = self.direct, None
        if direct is not None:
            if self._poller is not None:
                self._poller.unregister(direct.sock)
            direct.close()

    def _direct_lost(self, why: BaseException) -> None:
        """The direct connection failed: open another (meanwhile, messages go through nats-py)."""
        if not self._stopping:
            logger.warning("the direct connection to NATS failed (%s); opening another", why)
        self._close_direct()
        self._reopen_direct()

    def _reopen_direct(self, delay: float = 0.0) -> None:
        if self._stopping or self._reopening:
            return
        self._reopening = True
        bridge = self.bridge
        subjects = self._direct_subjects()

        async def work() -> Any:
            await asyncio.sleep(delay)
            url = bridge.nc.connected_url if bridge.connected else None
            if url is None:
                raise ConnectionError(UNREACHABLE)  # nats-py reconnects by itself; then this
            return await asyncio.get_running_loop().run_in_executor(None, open_direct, url, subjects, bridge.name, 2.0)

        def done(result: Any) -> None:
            self._reopening = False
            if isinstance(result, Unsupported):
                logger.warning("hub-to-hub messages go through nats-py from now on (%s)", result)
                for subject in subjects:
                    bridge.subscribe(subject, self._on_message)
            elif isinstance(result, BaseException):
                if not self._stopping:
                    logger.debug("no direct connection to NATS yet: %s", result)
                    self._reopen_direct(0.2)
            elif self._stopping:
                result[0].close()
            else:
                self._adopt(result)

        bridge.submit(work, done)

    def claim(self, session: Session) -> None:
        """Claim ``session``'s name (or renew its routes); the answer comes to the router."""
        registry = self.registry
        record = NameRecord(self.hub_id, sorted(session.routes), session.routes_known)
        if registry is None or not self.bridge.connected:
            self.bridge.deliver(self._on_claimed, (session, ConnectionError(UNREACHABLE)))
            return

        def done(result: Any) -> None:
            self._on_claimed((session, result))

        async def work() -> None:
            await asyncio.wait_for(registry.claim(session.name, record), 3)

        self.bridge.submit(work, done)

    def release(self, name: str) -> None:
        """Give ``name`` up in the cluster."""
        self.claimed.discard(name)
        registry = self.registry
        if registry is not None:
            self.bridge.submit(lambda: registry.release(name))

    def retry_later(self, name: str, delay: float = 0.5) -> None:
        """Try to give ``name`` to a local client on hold again after ``delay``."""

        async def wait() -> None:
            await asyncio.sleep(delay)

        self.bridge.submit(wait, lambda _: self._locked(self.router.promote, name))

    def evict(self, session: Session) -> None:
        """Close a local client whose name another hub holds; it comes back and waits on hold.

        Done from the bridge's inbox, outside the hub's lock (closing takes it).
        """
        self.claimed.discard(session.name)
        self.bridge.deliver(lambda s: self._evict(s, "the name is held by another hub of the cluster"), session)

    def hubs_status(self) -> list[dict[str, Any]]:
        """Every hub of the cluster, this one first, with its ready clients."""
        by_hub: dict[str, list[str]] = collections.defaultdict(list)
        for name, session in self.router._by_name.items():
            by_hub[session.hub if isinstance(session, RemoteSession) else self.hub_id].append(name)
        hubs = [{"hub": self.hub_id, "address": self.address, "started": self.started, "this": True}]
        hubs += [
            {"hub": r.hub, "address": r.address, "started": r.started, "this": False}
            for r in sorted(self.hubs.values(), key=lambda r: r.address)
        ]
        for entry in hubs:
            entry["clients"] = sorted(by_hub.get(str(entry["hub"]), []))
        return hubs

    # from NATS (hub thread, through the bridge's inbox)

    def _locked(self, work: Callable[..., Output], *args: Any) -> None:
        with self._lock:
            out = work(*args)
        if out:
            self._deliver(out)

    def _on_claimed(self, answer: tuple[Session, Any]) -> None:
        session, result = answer
        error = result if isinstance(result, BaseException) else None
        if isinstance(error, asyncio.TimeoutError):
            error = ConnectionError("the cluster did not answer in time")
        self._locked(self.router.claimed, session, error)

    def _on_lost(self, name: str) -> None:
        with self._lock:
            session = self.router._by_name.get(name)
        if session is not None and not isinstance(session, RemoteSession):
            self.evict(session)

    def _on_message(self, data: bytes) -> None:
        try:
            envelope = _decode_envelope(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            logger.warning("dropped an undecodable message from the cluster: %s", exc)
            return
        if envelope.origin == self.hub_id:
            return
        self._locked(self._route, envelope)

    def _route(self, envelope: Envelope) -> Output:
        router = self.router
        frame = envelope.frame
        out: Output = []
        sender = router._by_name.get(envelope.source)
        if not isinstance(sender, RemoteSession) or sender.hub != envelope.origin:
            if sender is not None or type(frame) not in (Request, Ping, Inform):
                return out  # a stray answer, or a name this hub knows elsewhere: dropped
            # A client that became ready before this hub saw its key: it is a peer already.
            sender = self._add_remote(out, envelope.source, envelope.origin, None)
        kind = type(frame)
        if kind is Request or kind is Ping:
            target = router._by_name.get(frame.peer)  # type: ignore[union-attr]
            if isinstance(target, RemoteSession):
                # Never forwarded on: the two hubs' views differ for a moment.
                router._fail(
                    out,
                    sender,
                    frame.id,  # type: ignore[union-attr]
                    frame.peer,  # type: ignore[union-attr]
                    ErrorCode.DESTINATION_NOT_FOUND,
                    f"client {frame.peer!r} is not connected",  # type: ignore[union-attr]
                )
                return out
        elif kind is Inform:
            assert isinstance(frame, Inform)
            if frame.peers and isinstance(router._by_name.get(frame.peers[0]), RemoteSession):
                return out
        router._handlers[type(frame)](sender, frame, out)
        return out

    def _add_remote(self, out: Output, name: str, hub: str, record: NameRecord | None) -> RemoteSession:
        router = self.router
        session = RemoteSession(RemoteCodec(self, name, hub_subject(self.cluster, hub)), name, hub, record)
        router._by_name[name] = session
        router._presence(out, session, ready=True)
        return session

    def _on_snapshot(self, keys: dict[str, bytes]) -> None:
        with self._lock:
            out: Output = []
            names = {k for k in keys if k.startswith(NAME_PREFIX)}
            for name, session in list(self.router._by_name.items()):
                if isinstance(session, RemoteSession) and name_key(name) not in names:
                    out.extend(self.router.close(session))
            self.hubs = {}
            for key, value in keys.items():
                self._apply(out, key, value)
        if out:
            self._deliver(out)

    def _on_change(self, change: tuple[str, bytes | None]) -> None:
        with self._lock:
            out: Output = []
            self._apply(out, *change)
        if out:
            self._deliver(out)

    def _apply(self, out: Output, key: str, value: bytes | None) -> None:
        """One key of the bucket changed (``value`` None: deleted or expired)."""
        if key.startswith(HUB_PREFIX):
            self._apply_hub(key[len(HUB_PREFIX) :], value)
        elif key.startswith(NAME_PREFIX):
            name = decode_name(key[len(NAME_PREFIX) :])
            self._apply_name(out, name, decode_name_record(value) if value is not None else None)

    def _apply_hub(self, hub: str, value: bytes | None) -> None:
        if value is None:
            self.hubs.pop(hub, None)
        elif hub != self.hub_id:
            self.hubs[hub] = decode_hub_record(value)

    def _apply_name(self, out: Output, name: str, record: NameRecord | None) -> None:
        router = self.router
        current = router._by_name.get(name)
        if record is None and current is not None and name in self.claimed:
            if not isinstance(current, RemoteSession):
                self.claimed.discard(name)
                self.claim(current)  # ours expired (a slow refresh, a restarted server): claim again
            return
        if record is None or record.hub == self.hub_id:
            if isinstance(current, RemoteSession):
                out.extend(router.close(current))  # its holder left: the next on hold takes over
                router._promote(out, name)
            elif current is None and record is None:
                router._promote(out, name)
            return
        if isinstance(current, RemoteSession):
            if current.hub == record.hub:
                current.routes = set(record.routes)
                current.routes_known = record.routes_known
                return
            out.extend(router.close(current))
        elif current is not None:
            return  # ours on this hub; a conflict after an outage ends at this hub's next refresh
        self._add_remote(out, name, record.hub, record)

    def _on_down(self, _: Any) -> None:
        """NATS went away: calls to other hubs' clients end now; their clients leave."""
        if self.direct is not None:
            # Its server may be gone without a word (a partition), and nats-py may come back
            # through another: the direct connection follows nats-py's.
            self._direct_lost(ConnectionLost("nats-py lost its connection"))
        with self._lock:
            router = self.router
            out: Output = []
            for session in [s for s in router._by_name.values() if isinstance(s, RemoteSession)]:
                for requester, request_id in list(session.serving):
                    requester.awaiting.pop(request_id, None)
                    router._fail(out, requester, request_id, session.name, ErrorCode.PEER_DISCONNECTED, UNREACHABLE)
                session.serving.clear()
                # Clients on hold for its name stay on hold: its holder may well live on.
                waiting = router._held.pop(session.name, None)
                out.extend(router.close(session))
                if waiting:
                    router._held[session.name] = waiting
        if out:
            self._deliver(out)

    def _on_up(self, _: Any) -> None:
        """NATS is back: claim this hub's names again, and see the others' again."""
        with self._lock:
            local = [
                s
                for s in self.router._by_name.values()
                if not isinstance(s, RemoteSession) and s.state is SessionState.READY
            ]
        registry = self.registry

        async def heal() -> None:
            assert registry is not None
            await self._enter_registry()
            for session in local:
                try:
                    await registry.claim(
                        session.name, NameRecord(self.hub_id, sorted(session.routes), session.routes_known)
                    )
                except Taken as exc:
                    self.bridge.deliver(self._on_claimed, (session, exc))
                else:
                    self.bridge.deliver(self._mark_claimed, session.name)
            # Names whose holder has not come back: to the clients waiting for them, but only
            # after every hub had the time to claim its own again (a restarted NATS server may
            # have lost every key: a holder that lives on must keep its name).
            await asyncio.sleep(self.ttl)
            self.bridge.deliver(self._promote_waiting, None)

        def healed(result: Any) -> None:
            if isinstance(result, BaseException):
                logger.warning("rejoining the cluster failed (%s); retrying", result)
                self.retry_heal()

        self.bridge.submit(heal, healed)

    def retry_heal(self) -> None:
        async def wait() -> None:
            await asyncio.sleep(1.0)

        self.bridge.submit(wait, lambda _: self._on_up(None) if self.bridge.connected else None)

    def _promote_waiting(self, _: Any) -> None:
        """After the snapshot of a heal: names with local clients on hold and no holder go to them."""
        with self._lock:
            out: Output = []
            for name in list(self.router._held):
                self.router._promote(out, name)
        if out:
            self._deliver(out)

    def _mark_claimed(self, name: str) -> None:
        self.claimed.add(name)

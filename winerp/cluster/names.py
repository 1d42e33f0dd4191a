"""Names and presence in JetStream's key-value store.

One bucket per cluster holds a key per client name (``n.<name>``, the claim: which hub holds
it, with the client's routes) and a key per hub (``h.<hub id>``: its address and start time).
The bucket's entries live ``ttl`` seconds: a hub refreshes its own keys every ``ttl / 3``, so
the names of a hub that died vanish within ``ttl`` seconds, and the server places a delete
marker that every watcher sees (the leave event). Claiming is ``create``: it succeeds only if
the key holds nothing, so two hubs never both own a name.

Everything here runs on the bridge's NATS loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from .subjects import HUB_PREFIX, NAME_PREFIX, bucket_name, decode_name, hub_key, name_key

__all__ = ["NameRecord", "HubRecord", "Registry", "Taken", "decode_name_record", "decode_hub_record"]

logger = logging.getLogger("winerp.hub.cluster")


class NameRecord(msgspec.Struct, array_like=True):
    """The value of a name's key: who holds it, and the client's routes."""

    hub: str
    routes: list[str]
    routes_known: bool = True


class HubRecord(msgspec.Struct, array_like=True):
    """The value of a hub's key."""

    hub: str
    address: str
    started: float


_encode = msgspec.msgpack.Encoder().encode
decode_name_record = msgspec.msgpack.Decoder(NameRecord).decode
decode_hub_record = msgspec.msgpack.Decoder(HubRecord).decode


class Taken(Exception):
    """The name is held by another hub (``hub``)."""

    def __init__(self, hub: str) -> None:
        super().__init__(f"held by hub {hub}")
        self.hub = hub


class Registry:
    """This hub's claims on names, kept alive, and a watch on everyone's.

    Args:
        js: nats-py's JetStream context.
        cluster: The cluster's name.
        hub_id: This hub's id.
        ttl: Seconds an entry lives without a refresh.
    """

    def __init__(self, js: Any, cluster: str, hub_id: str, ttl: float = 4.5) -> None:
        self.js = js
        self.cluster = cluster
        self.hub_id = hub_id
        self.ttl = ttl
        self.kv: Any = None
        #: Keys this hub holds: key -> (value, revision).
        self.owned: dict[str, tuple[bytes, int]] = {}
        self._lock = asyncio.Lock()
        self._watcher: Any = None

    async def open(self) -> None:
        """Bind to the cluster's bucket, creating it if it is not there."""
        from nats.js.api import KeyValueConfig, StorageType

        config = KeyValueConfig(
            bucket=bucket_name(self.cluster),
            history=1,
            ttl=self.ttl,
            # The server places a delete marker when an entry ages out, so watchers see a
            # dead hub's names go (nats-server 2.11 or later).
            limit_marker_ttl=1.0,
            # Claims are leases: nothing in the bucket outlives its hub by more than `ttl`.
            storage=StorageType.MEMORY,
        )
        try:
            self.kv = await self.js.key_value(config.bucket)
        except Exception:  # noqa: BLE001 - not there yet (or gone with a restarted server)
            self.kv = await self.js.create_key_value(config)

    async def announce(self, record: HubRecord) -> None:
        """Put this hub's own key (its address and start time)."""
        value = _encode(record)
        async with self._lock:
            revision = await self.kv.put(hub_key(self.hub_id), value)
            self.owned[hub_key(self.hub_id)] = (value, revision)

    async def claim(self, name: str, record: NameRecord) -> None:
        """Take ``name`` for this hub, or keep it if it is ours already.

        Raises:
            Taken: another hub holds it.
        """
        from nats.js.errors import KeyWrongLastSequenceError

        key = name_key(name)
        value = _encode(record)
        async with self._lock:
            held = self.owned.pop(key, None)
            if held is not None:
                try:
                    self.owned[key] = (value, await self.kv.update(key, value, last=held[1]))
                    return
                except KeyWrongLastSequenceError:
                    pass  # gone meanwhile (expired, or a restarted server): claimed afresh below
            for _attempt in range(3):
                try:
                    self.owned[key] = (value, await self.kv.create(key, value))
                    return
                except KeyWrongLastSequenceError:
                    owner, revision = await self._owner(key)
                if owner is not None and owner != self.hub_id:
                    raise Taken(owner)
                # Free (a delete marker, or the server's marker of an entry that aged out),
                # or ours from before a lost connection: take it at that revision, if no one
                # else does first.
                try:
                    self.owned[key] = (value, await self.kv.update(key, value, last=revision))
                    return
                except KeyWrongLastSequenceError:
                    continue
            raise Taken("?")

    async def _owner(self, key: str) -> tuple[str | None, int]:
        """The hub holding ``key`` (None if free) and the key's last revision."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self.kv.get(key)
        except KeyDeletedError as exc:
            return None, int(exc.entry.revision)
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, int(entry.revision)
        if key.startswith(HUB_PREFIX):
            return key[len(HUB_PREFIX) :], int(entry.revision)
        return decode_name_record(entry.value).hub, int(entry.revision)

    async def release(self, name: str) -> None:
        """Give ``name`` up (its client left)."""
        key = name_key(name)
        async with self._lock:
            held = self.owned.pop(key, None)
            if held is not None:
                await self.kv.delete(key, last=held[1])

    async def release_all(self) -> None:
        """Give up every key this hub holds (it is stopping)."""
        async with self._lock:
            owned, self.owned = self.owned, {}
            await asyncio.gather(
                *(self.kv.delete(key, last=revision) for key, (_value, revision) in owned.items()),
                return_exceptions=True,
            )

    async def refresh(self) -> list[str]:
        """Renew every key this hub holds; return the names lost meanwhile to another hub."""
        from nats.js.errors import KeyWrongLastSequenceError

        lost: list[str] = []
        async with self._lock:
            keys = list(self.owned.items())

            async def renew(key: str, value: bytes, revision: int) -> None:
                try:
                    self.owned[key] = (value, await self.kv.update(key, value, last=revision))
                    return
                except KeyWrongLastSequenceError:
                    owner, latest = await self._owner(key)
                if owner is None or owner == self.hub_id:
                    # Aged out or gone with a restarted server, and no one took it: ours again.
                    try:
                        self.owned[key] = (value, await self.kv.update(key, value, last=latest))
                        return
                    except KeyWrongLastSequenceError:
                        pass
                self.owned.pop(key, None)
                if key.startswith(NAME_PREFIX):
                    lost.append(decode_name(key[len(NAME_PREFIX) :]))

            await asyncio.gather(*(renew(key, value, revision) for key, (value, revision) in keys))
        return lost

    async def reclaim(self) -> list[str]:
        """After NATS came back: claim every name held before again; return those lost."""
        lost: list[str] = []
        async with self._lock:
            owned, self.owned = self.owned, {}
        for key, (value, _revision) in owned.items():
            if key.startswith(HUB_PREFIX):
                await self.announce(msgspec.msgpack.decode(value, type=HubRecord))
                continue
            name = decode_name(key[len(NAME_PREFIX) :])
            try:
                await self.claim(name, msgspec.msgpack.decode(value, type=NameRecord))
            except Taken:
                lost.append(name)
        return lost

    async def watch(
        self, on_snapshot: Callable[[dict[str, bytes]], None], on_change: Callable[[str, bytes | None], None]
    ) -> None:
        """Watch the bucket: ``on_snapshot`` once with every key, then ``on_change`` per change.

        A deleted or expired key comes as ``on_change(key, None)``. Replaces a running watch.
        """
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # noqa: BLE001 - the old watch may be gone with the connection
                pass
        watcher = await self.kv.watchall()
        self._watcher = watcher
        snapshot: dict[str, bytes] = {}
        initial = True
        async for entry in watcher:
            if entry is None:
                if initial:
                    initial = False
                    on_snapshot(snapshot)
                continue
            value = None if entry.operation is not None or not entry.value else entry.value
            if initial:
                if value is None:
                    snapshot.pop(entry.key, None)
                else:
                    snapshot[entry.key] = value
            else:
                on_change(entry.key, value)

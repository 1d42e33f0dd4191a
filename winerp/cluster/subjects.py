"""Names on the NATS side: subjects, key-value keys and the bucket, all safe for NATS.

A client name may hold any printable character, but a NATS subject token cannot hold ``.``,
``*``, ``>`` or white space, and a key-value key allows ``[-/_=.a-zA-Z0-9]`` only. Client names
therefore cross as unpadded URL-safe base64 of their UTF-8 bytes, which uses neither.
"""

from __future__ import annotations

import base64
import re
import uuid

__all__ = [
    "check_cluster_name",
    "encode_name",
    "decode_name",
    "new_hub_id",
    "hub_subject",
    "all_subject",
    "bucket_name",
    "name_key",
    "hub_key",
    "NAME_PREFIX",
    "HUB_PREFIX",
]

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
NAME_PREFIX = "n."
HUB_PREFIX = "h."


def check_cluster_name(name: str) -> str:
    """Return ``name`` if it may name a cluster (letters, digits, ``_``, ``-``); else raise ValueError."""
    if not isinstance(name, str) or not _CLUSTER_NAME.match(name):
        raise ValueError(f"invalid cluster name {name!r}: 1 to 64 letters, digits, '_' or '-'")
    return name


def encode_name(name: str) -> str:
    """A client name as one token safe in a NATS subject and a key-value key."""
    return base64.urlsafe_b64encode(name.encode()).decode("ascii").rstrip("=")


def decode_name(token: str) -> str:
    """The client name that `encode_name` turned into ``token``."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def new_hub_id() -> str:
    """A fresh id for one hub process: a restarted hub is a new member of the cluster."""
    return uuid.uuid4().hex[:16]


def hub_subject(cluster: str, hub_id: str) -> str:
    """Where the hub ``hub_id`` receives what other hubs address to its clients."""
    return f"winerp.{cluster}.hub.{hub_id}"


def all_subject(cluster: str) -> str:
    """Where every hub of the cluster receives informs to all."""
    return f"winerp.{cluster}.all"


def bucket_name(cluster: str) -> str:
    """The key-value bucket that holds the cluster's names and hubs."""
    return f"winerp_{cluster}"


def name_key(name: str) -> str:
    """The key that holds the claim on client name ``name``."""
    return NAME_PREFIX + encode_name(name)


def hub_key(hub_id: str) -> str:
    """The key that holds hub ``hub_id``'s record (address, start time)."""
    return HUB_PREFIX + hub_id

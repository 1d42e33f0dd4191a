"""Hubs in a cluster over NATS: one namespace across hubs (see docs/cluster.md).

Imported only by a hub started with ``cluster=...``: a hub without it never loads NATS code.
Needs the ``cluster`` extra (``pip install 'winerp[cluster]'``), which brings ``nats-py``.
"""

from __future__ import annotations

__all__ = ["ClusterUnavailable"]


class ClusterUnavailable(RuntimeError):
    """The NATS client is missing, or the NATS server cannot be reached at start."""

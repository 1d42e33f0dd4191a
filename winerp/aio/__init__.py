"""The asyncio winerp client (also importable as ``winerp.Client``)."""

from .client import Client

__all__ = ["Client"]

"""The blocking, thread-safe winerp client."""

from .client import Client

__all__ = ["Client"]

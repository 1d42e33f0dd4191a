"""The hub: one event-loop thread (`hub`) around the sans-IO router, over a poller (`poller`)."""

from .hub import Hub

__all__ = ["Hub"]

"""Backends: where a simulation's workers run (docs/architecture.md, "A new backend").

`base.Backend` is the interface; the registry below maps the names `[simulation] backend`
accepts to implementations, imported only when used:

- "local": every worker a process on this machine (backends/local.py), the default;
- "inprocess": every worker in this process (backends/inprocess.py): tests, and tools that
  want the wire format without processes.

A new backend is a module subclassing `Backend` plus one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["REGISTRY", "create"]

# name -> "module:class", imported on first use (the local backend needs pyzmq, another may need more)
REGISTRY: dict[str, str] = {
    "local": "simsyft.backends.local:LocalBackend",
    "inprocess": "simsyft.backends.inprocess:InProcessBackend",
}


def create(kind: str, name: str, request_timeout_s: float, start: str | None = None) -> "Backend":
    """A new backend of kind `kind` for the simulation `name` (`start`: how a local one starts workers)."""
    try:
        module, cls = REGISTRY[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {kind!r} (known: {', '.join(sorted(REGISTRY))})") from None
    options = {} if start is None else {"start": start}  # only the local backend starts processes
    return getattr(importlib.import_module(module), cls)(name, request_timeout_s, **options)

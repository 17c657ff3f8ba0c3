"""Backends: where a simulation's workers run (docs/architecture.md, "A new backend").

`base.Backend` is the interface; the registry below maps the names `[simulation] backend`
accepts to implementations, imported only when used:

- "local": every worker a process on this machine (backends/local.py), the default;
- "inprocess": every worker in this process (backends/inprocess.py): tests, and tools that
  want the wire format without processes;
- "ray": every worker a Ray actor, on this machine or a Ray cluster (backends/ray.py; the
  optional extra `pip install -e ".[ray]"`).

A new backend is a module subclassing `Backend` plus one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["REGISTRY", "create"]

# name -> "module:class", imported on first use (the local backend needs pyzmq, another may need more)
REGISTRY: dict[str, str] = {
    "local": "simsyft.backends.local:LocalBackend",
    "inprocess": "simsyft.backends.inprocess:InProcessBackend",
    "ray": "simsyft.backends.ray:RayBackend",
}


def create(kind: str, name: str, request_timeout_s: float, start: str | None = None, config: Any = None) -> "Backend":
    """A new backend of kind `kind` for the simulation `name` (`start`: how a local one starts
    workers); a backend with keys of its own in the config (ray's `address`) reads them from
    `config` (a SimulationConfig) in `from_config`."""
    try:
        module, cls = REGISTRY[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {kind!r} (known: {', '.join(sorted(REGISTRY))})") from None
    backend_class = getattr(importlib.import_module(module), cls)
    if config is not None and hasattr(backend_class, "from_config"):
        return backend_class.from_config(config)
    options = {} if start is None else {"start": start}  # only the local backend starts processes
    return backend_class(name, request_timeout_s, **options)

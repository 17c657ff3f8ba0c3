"""Object ids: the one generator of the random 63-bit ids that name objects in workers' stores.

Ids are chosen by whoever creates an object (the client for results it asks for, a worker for
extra results of a multi-output op or data it loads), never by a round trip. They come from a
private generator seeded from os.urandom and reseeded after fork: user code and hypothesis
reseed the global `random`, and a repeated id would silently overwrite a live object.
Imports the standard library only.
"""

from __future__ import annotations

import os
import random

__all__ = ["new_id"]

_ids = random.Random(int.from_bytes(os.urandom(16), "little"))
os.register_at_fork(after_in_child=lambda: _ids.seed(int.from_bytes(os.urandom(16), "little")))
_bits = _ids.getrandbits


def new_id() -> int:
    """A random 63-bit object id (never 0)."""
    return _bits(63) or 1

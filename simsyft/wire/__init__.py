"""The wire: everything that crosses between two parties, and how.

One home for every vocabulary on the wire (docs/architecture.md):

- `messages`: the message kinds (one table, code <-> class) and the result kinds of an Ack;
- `codec`: message <-> frames (pickled headers, safely decoded; persistent-id tags);
- `compact`: fixed binary layouts for the hot messages (layout and argument tags);
- `tensors`: tensor descriptors and their data locations (inline, segment, empty, CUDA);
- `segments`: this process's pool of shared-memory segments (reuse, budget, receipts);
- `shm`: one shared-memory file (name, creation, mapping, safety checks, header);
- `ops`: the op allowlist and op names.

Imports torch, numpy and simsyft.errors only; nothing here knows sockets, processes or pointers.
"""

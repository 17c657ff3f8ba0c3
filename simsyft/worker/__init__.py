"""The worker side: what runs where the data lives (docs/architecture.md).

- `core`: WorkerCore, the store and one handler per message kind (no transport);
- `execute`: running an allowlisted op, keeping every view inside its storage;
- `peers`: how a worker reaches the other workers of its simulation;
- `limits`: memory_limit, enforced at allocation;
- `spec`: WorkerLaunch, what a worker process is started with;
- `main`: the local backend's worker process (a ZeroMQ ROUTER in front of a WorkerCore).

Never imports the user layer (pointer, handles, hook): a worker holds tensors, not pointers.
"""

"""Echo servers for the transport floors, run as their own process.

    python -m bench._servers reqrep  ipc:///tmp/xyz/ep
    python -m bench._servers router  ipc:///tmp/xyz/ep   # raw echo
    python -m bench._servers router-pickle ipc:///tmp/xyz/ep
    python -m bench._servers unix    /tmp/xyz/sock

Each binds, prints "ready" on stdout, serves until it gets b"stop" (or the
unix peer hangs up) or its parent dies, and exits. Imports only the standard
library and pyzmq, so it starts in well under a second.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys

STOP = b"stop"


def _parent_gone(ppid: int) -> bool:
    return os.getppid() != ppid


def serve_reqrep(endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 1000)   # blocking recv with a timeout, as DESIGN.md advises
    sock.bind(endpoint)
    ppid = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            msg = sock.recv(copy=True)
        except zmq.Again:
            if _parent_gone(ppid):
                break
            continue
        sock.send(msg)
        if msg == STOP:
            break
    sock.close()
    ctx.term()


def serve_router(endpoint: str, use_pickle: bool) -> None:
    """Answer every message with an ack; with pickle, decode and encode like an RPC would."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 1000)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    ppid = os.getppid()
    loads, dumps = pickle.loads, pickle.dumps
    print("ready", flush=True)
    while True:
        try:
            ident, payload = sock.recv_multipart()
        except zmq.Again:
            if _parent_gone(ppid):
                break
            continue
        if payload == STOP:
            sock.send_multipart([ident, STOP])
            break
        if use_pickle:
            cmd = loads(payload)
            reply = dumps(("ack", cmd[3], None), protocol=5)
        else:
            reply = payload
        sock.send_multipart([ident, reply])
    sock.close()
    ctx.term()


def serve_unix(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    while True:
        data = conn.recv(4096)
        if not data or data == STOP:
            break
        conn.sendall(data)
    conn.close()
    srv.close()


def main(argv: list[str]) -> int:
    kind, where = argv[0], argv[1]
    if kind == "reqrep":
        serve_reqrep(where)
    elif kind == "router":
        serve_router(where, use_pickle=False)
    elif kind == "router-pickle":
        serve_router(where, use_pickle=True)
    elif kind == "unix":
        serve_unix(where)
    else:
        print(f"unknown server kind {kind!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

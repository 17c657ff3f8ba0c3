"""Links: the one path every message between two parties takes (docs/architecture.md).

`link.Link` is transport-independent (requests, acks, frees, timeouts, crash -> error,
traffic per direction); `zmq.ZmqLink` is the ZeroMQ transport between processes.
"""

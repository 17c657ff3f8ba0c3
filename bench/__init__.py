"""simsyft's benchmark suite: every figure next to its physical floor, measured in the same run.

    python -m bench [--smoke | --quick] [--json PATH] [--only ROWS]

Layout (imports flow downward; nothing here imports torch at import time):
    cli.py           argument parsing, the row registry, running, output
    simsyft_rows.py  simsyft through its public PySyft-style API
    peers.py         the same work through torch.distributed.rpc and Ray
    floors.py        zmq, AF_UNIX, memcpy, share_memory_, mp Queue, import torch
    harness.py       Settings per mode, timing, Figure/Compare, ratios, table, JSON, plot
    _servers.py, _children.py, _cold_probe.py   code that runs in child processes

docs/benchmarks.md says what each row measures and holds the latest figures.
"""

"""One cold-transfer sample, in a process of its own (run by simsyft_rows.row_transfer_cold).

    python -m bench._cold_probe NBYTES            # simsyft
    python -m bench._cold_probe NBYTES --floor    # share_memory_(), the paired floor

Starts a fresh client (this process) and one fresh worker, then times the
very first `send` of a touched NBYTES float32 tensor and the very first `get`
of a tensor of that size the worker computed. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def floor(nbytes: int) -> dict:
    """`share_memory_()` of a fresh touched tensor, in a fresh process like the probe's: the
    paired floor, so a moment when the kernel is slow to hand out pages costs both alike."""
    import torch

    torch.set_num_threads(1)
    src = torch.empty(nbytes // 4, dtype=torch.float32)
    src.fill_(1.0)
    t0 = time.perf_counter()
    src.share_memory_()
    return {"nbytes": nbytes, "share_memory_s": time.perf_counter() - t0}


def main(argv: list[str]) -> int:
    nbytes = int(argv[0])
    if argv[1:] == ["--floor"]:
        print(json.dumps(floor(nbytes)))
        return 0
    import torch

    import simsyft as sy

    torch.set_num_threads(1)
    hook = sy.TorchHook(torch)
    try:
        bob = sy.VirtualWorker(hook, id="cold")
        torch.zeros(1).send(bob).get()          # the worker answers: start-up is not timed
        src = torch.empty(nbytes // 4, dtype=torch.float32)
        src.fill_(1.0)
        t0 = time.perf_counter()
        x_ptr = src.send(bob)
        send_s = time.perf_counter() - t0
        y_ptr = x_ptr * 2
        y_ptr.shape                              # noqa: B018 (metadata only, no round trip)
        t0 = time.perf_counter()
        y = y_ptr.get()
        get_s = time.perf_counter() - t0
        ok = bool(y[0] == 2.0 and y[-1] == 2.0)
        del x_ptr, y
    finally:
        sy.shutdown()
    print(json.dumps({"nbytes": nbytes, "send_s": send_s, "get_computed_s": get_s, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

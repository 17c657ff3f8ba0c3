"""A real worker process sent the decode-bounds review's hostile frames (tests/hostile_frames.py):
each is answered with a ProtocolError, and the worker keeps serving ordinary ops correctly.

Before the bounds, `set_range_bomb` blocked the worker for 24 s and took 8.1 GB, and
`deep_list_index` killed it with SIGSEGV (torch's indexing recursed 60,000 levels in C).
"""

from __future__ import annotations

import pytest
import torch

from simsyft.wire import codec, messages
from tests import hostile_frames as H


def exchange(worker, frames: list) -> messages.Message:
    """Send raw frames on the worker's own connection and decode the one reply."""
    connection = worker.connection
    with connection._lock:
        connection._transmit(frames)
        return codec.decode(connection._recv())


@pytest.mark.parametrize("name", list(H.worker_frames(1)))
def test_worker_process_refuses_a_hostile_frame_and_keeps_serving(process_bob, name):
    x = torch.arange(6.0).send(process_bob)
    frames, fragment = H.worker_frames(x.id_at_location)[name]
    reply = exchange(process_bob, frames)
    assert type(reply) is messages.ErrorReply and reply.type_name == "ProtocolError", reply
    assert fragment in reply.message, reply.message
    assert reply.worker == "bob"
    # The stored tensor is untouched (SETITEM and ADDITEMS used to run on it), and ops still work.
    assert torch.equal((x * 2).get(), torch.arange(6.0) * 2)
    y = torch.tensor([1.0, -2.0]).send(process_bob)
    assert torch.equal(torch.add(y, 1).get(), torch.tensor([2.0, -1.0]))
    assert torch.equal(y[[1, 0]].get(), torch.tensor([-2.0, 1.0]))

"""Gradients back to the origin, on WorkerCores driven with encoded frames (no sockets):
TrackOrigin, Grads and OriginGrads (worker/origins.py)."""

from __future__ import annotations

import gc
import os
import uuid

import pytest
import torch

from simsyft.wire import codec, messages, segments
from simsyft.wire.messages import Ack, Command, ErrorReply, Free, Grads, OriginGrads, Ref, Store, TrackOrigin, Value
from simsyft.worker.core import WorkerCore


@pytest.fixture
def core():
    namespace = f"{os.getpid()}-test{uuid.uuid4().hex}"
    worker = WorkerCore("bob", namespace)
    yield worker
    worker.store.clear()
    segments.close(namespace)
    segments.sweep(namespace)


def send(core: WorkerCore, msg: messages.Message):
    reply = core.handle(codec.encode(msg, core.namespace))
    return None if reply is None else codec.decode(reply, namespace=core.namespace)


def test_a_tracked_copy_sends_its_gradient_to_the_client(core):
    send(core, Store(1, 10, torch.tensor([1.0, 2.0])))
    ack = send(core, TrackOrigin(2, 10, "me", 77))
    assert ack == Ack(2, ("p", 10, "float32", (2,), True, "cpu"))
    send(core, Command(3, "torch.Tensor.sum", (Ref(10),), {}, 11))
    send(core, Command(4, "torch.Tensor.backward", (Ref(11),), {}, 12))
    reply = send(core, Grads(5))
    (origin_id, grad), = reply.value[0]
    assert origin_id == 77 and torch.equal(grad, torch.ones(2)) and reply.value[1:] == ((), ())
    assert send(core, Grads(6)).value == ((), (), ())  # delivered once


def test_the_release_comes_when_the_copy_is_gone_graph_included(core):
    send(core, Store(1, 10, torch.tensor([1.0])))
    send(core, TrackOrigin(2, 10, "me", 77))
    send(core, Command(3, "torch.mul", (Ref(10), 2), {}, 11))
    send(core, Free((10,)))
    gc.collect()
    assert send(core, Grads(4)).value == ((), (), ())  # the result's graph still holds the copy
    send(core, Free((11,)))
    gc.collect()
    assert send(core, Grads(5)).value == ((), (77,), ())


def test_integer_tensors_and_pointers_cannot_be_tracked(core):
    send(core, Store(1, 10, torch.tensor([1, 2])))
    reply = send(core, TrackOrigin(2, 10, "me", 77))
    assert type(reply) is ErrorReply and reply.type_name == "RuntimeError"
    assert "only Tensors of floating point" in reply.message
    reply = send(core, TrackOrigin(3, 404, "me", 77))
    assert type(reply) is ErrorReply and reply.type_name == "ObjectNotFoundError"


def test_origin_grads_run_backward_from_a_kept_origin(core):
    w = torch.tensor([3.0], requires_grad=True)
    kept = w * 2  # what a moved tensor was: the graph upstream of it is here
    core.origins.hold(5, kept)
    assert send(core, OriginGrads(1, ((5, torch.tensor([1.5])),), ())) == Value(1, None)
    assert w.grad.tolist() == [3.0]
    send(core, OriginGrads(2, (), (5,)))
    assert core.origins.held == {}
    reply = send(core, OriginGrads(3, ((5, torch.tensor([1.0])),), ()))
    assert type(reply) is ErrorReply and reply.type_name == "ObjectNotFoundError"
    reply = send(core, OriginGrads(4, (("x", 1),), ()))
    assert type(reply) is ErrorReply and reply.type_name == "ProtocolError"


def test_a_worker_cannot_be_its_own_origin(core):
    send(core, Store(1, 10, torch.tensor([1.0])))
    reply = send(core, TrackOrigin(2, 10, "bob", 77))
    assert type(reply) is ErrorReply and "its own copy" in reply.message

"""CUDA placement and CUDA IPC: run on a machine with a GPU, skipped cleanly elsewhere."""

from __future__ import annotations

import textwrap

import pytest
import torch

import simsyft as sy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture
def gpu_sim(tmp_path, hook):
    config = tmp_path / "gpu.toml"
    config.write_text(textwrap.dedent("""
        [simulation]
        name = "e2e-gpu"

        [workers.bob]
        device = "cuda:0"
        gpu_memory_fraction = 0.25

        [workers.alice]
        device = "cuda:0"
        gpu_memory_fraction = 0.25
    """))
    with sy.launch(str(config)) as sim:
        yield sim


def test_tensors_live_on_the_worker_gpu(gpu_sim):
    bob = gpu_sim["bob"]
    p = torch.arange(6.0).send(bob)  # from host memory
    assert p.device == torch.device("cuda:0")
    q = (p * 2).sum()
    assert q.device.type == "cuda"
    result = q.get()
    assert result.device.type == "cuda" and result.item() == 30.0


def test_cuda_tensor_crosses_with_ipc_and_is_owned(gpu_sim):
    bob = gpu_sim["bob"]
    local = torch.randn(1024, 1024, device="cuda")
    before = bob.traffic()
    p = local.send(bob)
    local.add_(1)  # the worker owns its copy
    back = (p - 1).get()
    after = bob.traffic()
    assert back.device.type == "cuda"
    assert torch.allclose(back + 2, local)  # back == original - 1, local == original + 1
    assert (after["bytes_sent"] - before["bytes_sent"]) < 4096  # a handle, not 4 MB of data
    assert (after["bytes_received"] - before["bytes_received"]) < 4096


def test_gpu_memory_fraction_is_applied(gpu_sim):
    info = gpu_sim["bob"].info()
    assert info["device"] == "cuda:0"

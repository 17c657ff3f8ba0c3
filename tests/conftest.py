"""Shared fixtures: a hard per-test timeout, worker backends, and a leak check for the session."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.wire import shm
from simsyft.testing import in_process_worker

@pytest.fixture
def test_timeout_s() -> int:
    """Seconds a test may run; tests/property/conftest.py overrides it."""
    return 120


@pytest.fixture(autouse=True)
def hard_timeout(test_timeout_s):
    """No test may hang (pyzmq's SIGALRM idea): a stuck call fails the test instead."""
    def expire(signum, frame):
        # pytest.fail raises a BaseException: hypothesis does not take it for a failing example
        # to shrink (which would run on and on), and no `except Exception` in the code swallows it.
        pytest.fail(f"test exceeded its hard timeout of {test_timeout_s}s", pytrace=True)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(test_timeout_s)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def worker_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("simsyft.worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def own_segments() -> list[str]:
    return [n for n in shm.list_segments() if n.startswith(f"simsyft_{os.getpid()}-")]


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_session():
    """Fail the run if any test left a worker process or a shared-memory segment behind."""
    yield
    sy.shutdown()
    leftovers = worker_children()
    left = own_segments()
    for proc in leftovers:
        proc.kill()
    for name in left:  # reported below, but never left on the machine
        try:
            os.unlink(os.path.join(shm.SHM_DIR, name))
        except FileNotFoundError:
            pass
    assert not leftovers, f"worker processes left running: {[p.pid for p in leftovers]}"
    assert not left, f"shared-memory segments left behind: {left}"


@pytest.fixture(scope="session")
def hook():
    return sy.TorchHook(torch)


@pytest.fixture(scope="session")
def process_bob(hook):
    return sy.VirtualWorker(hook, id="bob")


@pytest.fixture(scope="session")
def process_alice(hook):
    return sy.VirtualWorker(hook, id="alice")


@pytest.fixture(params=["inprocess", "process"])
def backend(request):
    return request.param


def _worker(name: str, backend: str, request):
    """Worker `name` on `backend`, with an empty store for the test and emptied afterwards."""
    if backend == "process":
        worker = request.getfixturevalue(f"process_{name}")
    else:
        worker = in_process_worker(name)
    worker.clear_objects()
    yield worker
    if backend == "process":
        worker.clear_objects()
    else:
        worker.shutdown()


@pytest.fixture
def bob(backend, hook, request):
    """Worker 'bob' on each backend; its store is empty at the start of the test."""
    yield from _worker("bob", backend, request)


@pytest.fixture
def alice(backend, hook, request):
    yield from _worker("alice", backend, request)

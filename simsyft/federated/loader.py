"""FederatedDataLoader: batches cut on the workers that hold a FederatedDataset.

Owns the iteration order of PySyft 0.2's loader (syft/frameworks/torch/fl/dataloader.py):
one torch BatchSampler per worker (so `shuffle` draws the same permutations from torch's
generator as PySyft did), a worker's batches in a row before the next worker's, and with
`iter_per_worker` (or `num_iterators` > 1) a dict of one batch per worker per step.

A batch never leaves its worker: the loader sends the batch's indices (a small int64
tensor) and the worker cuts data and targets with `index_select`. The client only ever
holds pointers. Imports federated/dataset.py and nothing of the worker.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

__all__ = ["FederatedDataLoader", "default_collate"]

logger = logging.getLogger(__name__)


def default_collate(batch: list) -> Any:
    """Stack a list of samples (PySyft's default); the loader cuts remote batches without calling it."""
    return torch.utils.data.default_collate(batch)


class _AcrossWorkers:
    """One pass over every worker's batches, a worker at a time (PySyft's `_DataLoaderIter`).

    When its worker runs out it takes the first remaining worker no sibling is on.
    """

    def __init__(self, workers: list, batches: dict, siblings: list, worker_idx: int) -> None:
        self.workers = dict(enumerate(workers))
        self.batches = {worker: iter(source) for worker, source in batches.items()}
        self.siblings = siblings
        self.worker_idx = worker_idx

    def next_indices(self) -> tuple[Any, list]:
        while self.worker_idx != -1 and self.workers:
            worker = self.workers[self.worker_idx]
            indices = next(self.batches[worker], None)
            if indices is not None:
                return worker, indices
            del self.workers[self.worker_idx]
            busy = {sibling.worker_idx for sibling in self.siblings}
            self.worker_idx = next((idx for idx in self.workers if idx not in busy), -1)
        self.worker_idx = -1
        raise StopIteration


class _OneWorker:
    """One pass over one worker's batches (PySyft's `_DataLoaderOneWorkerIter`)."""

    def __init__(self, workers: list, batches: dict, siblings: list, worker_idx: int) -> None:
        self.worker = workers[worker_idx]
        self.batches = iter(batches[self.worker])

    def next_indices(self) -> tuple[Any, list]:
        indices = None if self.worker is None else next(self.batches, None)
        if indices is None:
            self.worker = None
            raise StopIteration
        return self.worker, indices


class FederatedDataLoader:
    """Iterate a FederatedDataset in batches that stay on their workers (PySyft's loader).

    >>> loader = sy.FederatedDataLoader(fed_dataset, batch_size=32, shuffle=True)
    >>> for data, target in loader:        # pointers; data.location is the batch's worker
    ...     model.send(data.location)

    `len(loader)` is the number of steps an epoch really takes (PySyft returned
    len(dataset) / batch_size, which miscounts when a worker's share is not a multiple of
    `batch_size`). A custom `collate_fn` receives the remote (data, target) items, as in
    PySyft, and runs on pointers; the default cuts each batch with one `index_select`.
    """

    def __init__(self, federated_dataset: Any, batch_size: int = 8, shuffle: bool = False, num_iterators: int = 1,
                 drop_last: bool = False, collate_fn: Callable = default_collate, iter_per_worker: bool = False,
                 **kwargs: Any) -> None:
        if kwargs:
            options = ", ".join(f"{k}: {v}" for k, v in kwargs.items())
            logger.warning(f"The following options are not supported: {options}")
        try:
            self.workers = federated_dataset.workers
        except AttributeError:
            raise TypeError("Your dataset is not a FederatedDataset, please use torch.utils.data.DataLoader "
                            "instead.") from None
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size!r}")
        for worker in self.workers:
            dataset = federated_dataset[worker]
            if getattr(dataset, "transform_", None) is not None:
                dataset._refuse_transform()
        self.federated_dataset = federated_dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.iter_class = _OneWorker if iter_per_worker else _AcrossWorkers
        self.batch_samplers = {}
        for worker in self.workers:
            points = range(len(federated_dataset[worker]))
            sampler = RandomSampler(points) if shuffle else SequentialSampler(points)
            self.batch_samplers[worker] = BatchSampler(sampler, batch_size, drop_last)
        if iter_per_worker:
            self.num_iterators = len(self.workers)
        else:
            # A worker switch needs an idle worker, so at most len(workers) - 1 iterators (PySyft's rule).
            self.num_iterators = 1 if len(self.workers) == 1 else min(num_iterators, len(self.workers) - 1)
        self.iterators: list = []

    def __iter__(self) -> "FederatedDataLoader":
        self.iterators = self._iterators(self.batch_samplers)
        return self

    def _iterators(self, batches: dict) -> list:
        siblings: list = []
        siblings.extend(self.iter_class(self.workers, batches, siblings, idx) for idx in range(self.num_iterators))
        return siblings

    def __next__(self) -> Any:
        if not self.iterators:
            raise TypeError("call iter() on the FederatedDataLoader first (a for loop does)")
        if self.num_iterators > 1:
            batches = {}
            for iterator in self.iterators:
                data, target = self._cut(*iterator.next_indices())
                batches[data.location] = (data, target)
            return batches
        return self._cut(*self.iterators[0].next_indices())

    def _cut(self, worker: str, indices: list) -> tuple[Any, Any]:
        """The batch `indices` of `worker`'s dataset, cut on the worker."""
        dataset = self.federated_dataset[worker]
        if self.collate_fn is not default_collate:
            return self.collate_fn([dataset[i] for i in indices])
        index = torch.tensor(indices, dtype=torch.long).send(dataset.location)
        return dataset.data.index_select(0, index), dataset.targets.index_select(0, index)

    def __len__(self) -> int:
        # Run the same schedule over batch counts only: no data is touched, no generator drawn.
        # Lists, not generators: each sibling iterator starts its own pass, as over a BatchSampler.
        iterators = self._iterators({w: [[0]] * len(s) for w, s in self.batch_samplers.items()})
        steps = 0
        try:
            while True:
                for iterator in iterators:
                    iterator.next_indices()
                steps += 1
        except StopIteration:
            return steps

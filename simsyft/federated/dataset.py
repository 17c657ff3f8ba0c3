"""Datasets on workers: `BaseDataset`, `PointerDataset`, `FederatedDataset`, `dataset_federate`.

Owns PySyft 0.2's dataset objects (syft/frameworks/torch/fl/dataset.py). A worker stores
tensors only, so a dataset "on" a worker is a pair of pointers, data and targets, held here.
Imports pointer.py and ids.py; never the worker, never hook.py (hook.py imports this module
to install `Dataset.federate`).

Note [Dataset tags on the worker]
    A sent dataset is two tensors on the worker. Both carry the dataset's tags and a pair
    tag `#dataset-<id>` (<id>: the PointerDataset's, new for every send); the data also carries "#data" and the targets "#target" (the
    names PySyft's sandbox used, so `bob.search("#boston", "#data")` finds the data).
    `search_datasets` pairs them back through the pair tag.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.utils.data import Dataset

from ..ids import new_id
from ..pointer import PointerTensor

__all__ = ["BaseDataset", "FederatedDataset", "PointerDataset", "dataset_federate", "search_datasets"]

DATA_TAG, TARGET_TAG, PAIR_PREFIX = "#data", "#target", "#dataset-"


def _is_remote(value: Any) -> bool:
    return isinstance(value, PointerTensor)


def _length(value: Any) -> int:
    shape = getattr(value, "shape", None)  # a pointer knows its shape without a round trip
    return int(shape[0]) if shape is not None and len(shape) else len(value)


class BaseDataset(Dataset):
    """Inputs `data` and labels `targets`, local or on a worker (PySyft's `sy.BaseDataset`).

    >>> ds = sy.BaseDataset(torch.randn(8, 3), torch.arange(8.)).tag("#toy")
    >>> ptr = ds.send(bob)             # a PointerDataset: the tensors now live on bob
    >>> ptr[0]                         # (data pointer, target pointer), indexed on bob
    >>> ptr.get()                      # a local BaseDataset again
    """

    def __init__(self, data: Any, targets: Any, transform: Any = None, owner: Any = None, id: int | None = None,
                 tags: Iterable[str] | None = None, description: str | None = None) -> None:
        if _is_remote(data) != _is_remote(targets):
            raise ValueError("BaseDataset: data and targets must both be local or both be pointers")
        if _is_remote(data) and data.location is not targets.location:
            raise ValueError(f"BaseDataset: data is on {data.location.id!r} but targets are on "
                             f"{targets.location.id!r}; move one of them first")
        if _length(data) != _length(targets):
            raise ValueError(f"BaseDataset: {_length(data)} data points but {_length(targets)} targets")
        self.data = data
        self.targets = targets
        self.transform_ = transform
        self.owner = owner
        self.id = new_id() if id is None else id
        self.tags = set(tags or ())
        self.description = description
        self.federated = False  # set while a FederatedDataset holds it

    # -- what a torch Dataset answers -------------------------------------------------
    def __len__(self) -> int:
        return _length(self.data)

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        data_elem = self.data[index]
        if self.transform_ is not None:
            if _is_remote(data_elem):
                self._refuse_transform()
            # PySyft handed the transform a numpy array and made a tensor of its answer.
            data_elem = torch.as_tensor(self.transform_(data_elem.numpy()))
        return data_elem, self.targets[index]

    def _refuse_transform(self) -> None:
        raise TypeError(
            f"BaseDataset: the transform {self.transform_!r} is local Python code and cannot run on worker "
            f"{self.location.id!r}, where the data is; apply it before sending (dataset.transform(fn), or "
            "federate(), which applies it here), or .get() the dataset")

    def transform(self, transform: Any) -> None:
        """Apply `transform` to the whole data tensor now (local data only, as in PySyft)."""
        if type(self.data) is not torch.Tensor:
            raise TypeError("Transforms can be applied only on torch tensors (this dataset's data is "
                            f"{type(self.data).__name__}; .get() it first)")
        self.data = transform(self.data)

    @property
    def location(self) -> Any:
        """The worker holding the data (None when local)."""
        return getattr(self.data, "location", None)

    def get_data(self) -> Any:
        return self.data

    def get_targets(self) -> Any:
        return self.targets

    # -- metadata that travels ----------------------------------------------------------
    def tag(self, *tags: str) -> "BaseDataset":
        """Add tags; `send` stores them with the tensors (Note [Dataset tags on the worker])."""
        self._check_local("tag")
        self.tags.update(tags)
        return self

    def describe(self, description: str) -> "BaseDataset":
        self._check_local("describe")
        self.description = description
        return self

    def _check_local(self, what: str) -> None:
        if _is_remote(self.data):
            raise ValueError(f"{what}() on a dataset already on worker {self.location.id!r}: the worker keeps "
                             "the tags it was sent with; tag the dataset before sending it")

    # -- moving ---------------------------------------------------------------------------
    def send(self, worker: Any, **kwargs: Any) -> "PointerDataset":
        """Send data and targets to `worker`; returns a PointerDataset to them."""
        if _is_remote(self.data):
            raise ValueError(f"this dataset is already on worker {self.location.id!r}; .get() it first")
        if self.transform_ is not None:
            raise TypeError(
                f"BaseDataset: cannot send a dataset with a transform ({self.transform_!r}): it is local Python "
                f"code that cannot run on worker {getattr(worker, 'id', worker)!r}; apply it first with "
                "dataset.transform(fn), or use dataset.federate(workers), which applies it before sending")
        sent_id = new_id()  # one pair tag per send: the same dataset may go to a worker twice
        pair = f"{PAIR_PREFIX}{sent_id}"
        data = _tagged(self.data, [*sorted(self.tags), DATA_TAG, pair], self.description).send(worker, **kwargs)
        targets = _tagged(self.targets, [*sorted(self.tags), TARGET_TAG, pair], self.description).send(
            worker, **kwargs)
        return PointerDataset(data, targets, id=sent_id, tags=self.tags, description=self.description)

    def get(self) -> "BaseDataset":
        """Bring data and targets home, in place (PySyft's `get_`); returns self."""
        if self.federated:
            raise ValueError("this dataset belongs to a FederatedDataset: use .get_dataset(worker) to get it")
        if _is_remote(self.data):
            self.data, self.targets = self.data.get(), self.targets.get()
        return self

    def federate(self, *workers: Any, **kwargs: Any) -> "FederatedDataset":
        return dataset_federate(self, *workers, **kwargs)

    def __repr__(self) -> str:
        out = f"BaseDataset\n\tData: {self.data}\n\ttargets: {self.targets}"
        return out + _meta_lines(self.tags, self.description)


class PointerDataset(BaseDataset):
    """What `dataset.send(bob)` returns: data and targets pointers on one worker.

    `len`, indexing and the loaders work through it; `get()` returns a new local
    BaseDataset and empties this pointer.
    """

    def get(self) -> BaseDataset:
        if self.federated:
            raise ValueError("use .get_dataset(worker) to get this dataset")
        data, targets = self.data.get(), self.targets.get()
        return BaseDataset(data, targets, id=self.id, tags=self.tags, description=self.description)

    def __repr__(self) -> str:
        out = (f"[PointerDataset | me:{self.id} -> {self.location.id}:"
               f"(data {self.data.id_at_location}, targets {self.targets.id_at_location})]")
        out += _meta_lines(self.tags, None)
        if self.tags:  # PySyft showed the shape under a tagged pointer
            out += f"\n\tShape: {tuple(self.data.shape)}"
        return out + _meta_lines((), self.description)


def _tagged(tensor: Any, tags: list[str], description: str | None) -> torch.Tensor:
    """A new tensor object over the same storage, carrying `tags` (the caller's tensor keeps its own)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"only tensors can be sent, got {type(tensor).__name__}")
    alias = tensor.detach().requires_grad_(tensor.requires_grad)
    alias.tags = list(dict.fromkeys([*(getattr(tensor, "tags", None) or ()), *tags]))
    alias.description = description if description is not None else getattr(tensor, "description", None)
    return alias


def _meta_lines(tags: set, description: str | None) -> str:
    out = ""
    if tags:
        out += "\n\tTags: " + "".join(f"{tag} " for tag in sorted(tags))
    if description is not None:
        out += "\n\tDescription: " + str(description).split("\n")[0] + "..."
    return out


def search_datasets(workers: Any, *query: str) -> list[PointerDataset]:
    """The datasets on `workers` (a worker or a list) tagged with every tag in `query`.

    Like `worker.search`, what it finds only observes: dropping it never frees the data.
    """
    found = []
    for worker in workers if isinstance(workers, (list, tuple)) else [workers]:
        for data in worker.search(*query, DATA_TAG):
            pairs = [tag for tag in data.tags if tag.startswith(PAIR_PREFIX) and tag[len(PAIR_PREFIX):].isdigit()]
            if len(pairs) != 1:
                continue  # tagged "#data" by hand, not sent as a dataset
            targets = worker.search(pairs[0], TARGET_TAG)
            if len(targets) != 1:
                raise LookupError(f"worker {worker.id!r} holds the data of dataset {pairs[0]!r} but "
                                  f"{len(targets)} target tensors for it")
            tags = (set(data.tags) & set(targets[0].tags)) - {pairs[0]}
            found.append(PointerDataset(data, targets[0], id=int(pairs[0][len(PAIR_PREFIX):]), tags=tags,
                                        description=data.description))
    return found


def dataset_federate(dataset: Any, *workers: Any, **kwargs: Any) -> "FederatedDataset":
    """Split `dataset` into len(workers) parts, send part i to workers[i], return a FederatedDataset.

    As in PySyft, parts have ceil(len / len(workers)) items (the last may be shorter, and a
    worker may get none), and items go through the dataset's own `__getitem__`, so its
    transform runs here, before sending. `kwargs` go to each `tensor.send`.
    """
    if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
        workers = tuple(workers[0])  # PySyft's older signature: federate((bob, alice))
    if not workers:
        raise ValueError("federate() needs at least one worker")
    if isinstance(dataset, BaseDataset) and _is_remote(dataset.data):
        raise ValueError(f"this dataset is already on worker {dataset.location.id!r}; .get() it first")
    size = math.ceil(len(dataset) / len(workers))
    if size == 0:
        raise ValueError("federate() of an empty dataset")
    if isinstance(dataset, BaseDataset) and dataset.transform_ is None and isinstance(dataset.data, torch.Tensor):
        # The same parts torch's DataLoader would collate, without a round through every item.
        parts = [(dataset.data[i:i + size], dataset.targets[i:i + size]) for i in range(0, len(dataset), size)]
    else:
        parts = torch.utils.data.DataLoader(dataset, batch_size=size)
    datasets = []
    for index, (data, targets) in enumerate(parts):
        worker = workers[index % len(workers)]
        datasets.append(BaseDataset(data.send(worker, **kwargs), targets.send(worker, **kwargs)))
    return FederatedDataset(datasets)


BaseDataset.federate.__doc__ = dataset_federate.__doc__


class FederatedDataset:
    """Datasets already on workers, by worker id; the input of FederatedDataLoader.

    >>> fed = sy.FederatedDataset([ds_bob, ds_alice])   # each sent to its worker
    >>> fed.workers
    ['bob', 'alice']
    """

    def __init__(self, datasets: Iterable[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        for number, dataset in enumerate(datasets):
            location = getattr(getattr(dataset, "data", None), "location", None)
            if location is None:
                raise ValueError(f"FederatedDataset: dataset {number} is not on a worker; send it first "
                                 "(dataset.send(worker)) or use dataset.federate(workers)")
            if location.id in self.datasets:
                # PySyft kept only the last one, silently; refuse instead of dropping data.
                raise ValueError(f"FederatedDataset: two datasets on worker {location.id!r}; give one "
                                 "dataset per worker")
            self.datasets[location.id] = dataset
        for dataset in self.datasets.values():
            dataset.federated = True

    @property
    def workers(self) -> list[str]:
        """The ids of the workers holding the datasets."""
        return list(self.datasets.keys())

    locations = workers

    def get_dataset(self, worker: Any) -> BaseDataset:
        """Bring worker `worker`'s dataset home and remove it from this FederatedDataset."""
        dataset = self[worker]
        dataset.federated = False
        local = dataset.get()
        del self.datasets[getattr(worker, "id", worker)]
        return local

    def __getitem__(self, worker_id: Any) -> BaseDataset:
        key = getattr(worker_id, "id", worker_id)
        if key not in self.datasets:
            raise KeyError(f"no dataset on worker {key!r}; this FederatedDataset has {self.workers}")
        return self.datasets[key]

    def __len__(self) -> int:
        return sum(len(dataset) for dataset in self.datasets.values())

    def __repr__(self) -> str:
        return (f"FederatedDataset\n    Distributed accross: {', '.join(str(x) for x in self.workers)}\n"
                f"    Number of datapoints: {len(self)}\n")

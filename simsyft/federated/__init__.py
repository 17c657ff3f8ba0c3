"""Federated datasets, their loader and per-worker optimizers (PySyft 0.2's Parts 6-7).

`sy.BaseDataset`, `sy.FederatedDataset`, `sy.FederatedDataLoader` are re-exported by
simsyft/__init__.py; `simsyft.federated.floptimizer.Optims` keeps PySyft's import path.
"""

from . import floptimizer
from .dataset import BaseDataset, FederatedDataset, PointerDataset, dataset_federate, search_datasets
from .floptimizer import Optims
from .loader import FederatedDataLoader, default_collate

__all__ = ["BaseDataset", "FederatedDataLoader", "FederatedDataset", "Optims", "PointerDataset",
           "dataset_federate", "default_collate", "floptimizer", "search_datasets"]

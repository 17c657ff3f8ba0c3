"""PySyft 0.2's exception names (`syft.exceptions`), so `except sy.exceptions.X` keeps working.

Aliases of the classes in errors.py, where the real hierarchy lives.
"""

from .errors import InvalidTensorForRemoteGet, LocationMismatchError, ObjectNotFoundError

__all__ = ["InvalidTensorForRemoteGet", "ObjectNotFoundError", "TensorsNotCollocatedException"]

# PySyft raised this when one op got tensors on different workers.
TensorsNotCollocatedException = LocationMismatchError

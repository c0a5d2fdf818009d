"""Federated datasets (per-client train/test splits) and partitioners."""

from fedsim.data.federated import (
    ArrayFederatedData,
    ClientArrays,
    FederatedData,
    LazyFederatedData,
    held_out_sizes,
)
from fedsim.data.partition import PARTITIONERS, Partitioner, make_partition

__all__ = [
    "FederatedData",
    "ArrayFederatedData",
    "LazyFederatedData",
    "ClientArrays",
    "held_out_sizes",
    "PARTITIONERS",
    "Partitioner",
    "make_partition",
]

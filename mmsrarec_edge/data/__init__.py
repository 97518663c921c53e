"""Datasets: the canonical on-disk format, its validation, generators and importers, and the evaluation protocol."""

from .schema import Dataset, Item, load_dataset, save_dataset

__all__ = ["Dataset", "Item", "load_dataset", "save_dataset"]

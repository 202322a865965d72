"""Data: built-in datasets, real-dataset adapters and the transforms of every stage.

Public API (docs/ARCHITECTURE.md): :func:`load_meta`, :func:`build_dataset`, :func:`build_detection_dataset`,
:func:`build_segmentation_dataset`; transforms in :mod:`mae.data.transforms`.
"""

from mae.data.datasets import (
    FOLDER_KINDS,
    IN_MEMORY_KINDS,
    KINDS,
    build_dataset,
    build_detection_dataset,
    build_segmentation_dataset,
    load_meta,
    load_train_images,
)
from mae.data.dense_adapters import detection_collate

__all__ = [
    "FOLDER_KINDS",
    "IN_MEMORY_KINDS",
    "KINDS",
    "build_dataset",
    "build_detection_dataset",
    "build_segmentation_dataset",
    "detection_collate",
    "load_meta",
    "load_train_images",
]

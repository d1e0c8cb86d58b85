"""Offline dataset pipeline: embedded sources, corruptions, four splits, batch order."""

from reducr_jax.data.corruption import imbalance_class
from reducr_jax.data.corruption import imbalance_mask
from reducr_jax.data.corruption import symmetric_label_noise
from reducr_jax.data.embedded import CLASS_NAMES
from reducr_jax.data.embedded import load_arrays
from reducr_jax.data.embedded import NUM_CLASSES
from reducr_jax.data.sampling import batch_indices
from reducr_jax.data.sampling import epoch_of
from reducr_jax.data.sampling import iterate_batches
from reducr_jax.data.splits import make_splits
from reducr_jax.data.splits import Split
from reducr_jax.data.splits import SPLIT_NAMES
from reducr_jax.data.splits import Splits
from reducr_jax.data.splits import validate_dataset_config

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "SPLIT_NAMES",
    "Split",
    "Splits",
    "batch_indices",
    "epoch_of",
    "imbalance_class",
    "imbalance_mask",
    "iterate_batches",
    "load_arrays",
    "make_splits",
    "symmetric_label_noise",
    "validate_dataset_config",
]

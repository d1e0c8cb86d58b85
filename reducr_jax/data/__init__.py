"""Dataset pipeline: embedded and real (TFDS) sources, corruptions, four splits, batch order."""

from reducr_jax.data.corruption import imbalance_class
from reducr_jax.data.corruption import imbalance_mask
from reducr_jax.data.corruption import symmetric_label_noise
from reducr_jax.data.embedded import CLASS_NAMES
from reducr_jax.data.embedded import load_arrays
from reducr_jax.data.embedded import NUM_CLASSES
from reducr_jax.data.random_access import LazyArray
from reducr_jax.data.real_specs import REAL_DATASETS
from reducr_jax.data.real_specs import validate_real_dataset_config
from reducr_jax.data.sampling import batch_indices
from reducr_jax.data.sampling import epoch_of
from reducr_jax.data.sampling import iterate_batches
from reducr_jax.data.splits import class_names
from reducr_jax.data.splits import dataset_config
from reducr_jax.data.splits import make_splits
from reducr_jax.data.splits import num_classes
from reducr_jax.data.splits import Split
from reducr_jax.data.splits import SPLIT_NAMES
from reducr_jax.data.splits import Splits
from reducr_jax.data.splits import validate_dataset_config
from reducr_jax.data.streams import class_holdout_split, train_batch

__all__ = [
    "CLASS_NAMES",
    "LazyArray",
    "NUM_CLASSES",
    "REAL_DATASETS",
    "SPLIT_NAMES",
    "Split",
    "Splits",
    "batch_indices",
    "class_holdout_split",
    "class_names",
    "epoch_of",
    "imbalance_class",
    "imbalance_mask",
    "iterate_batches",
    "load_arrays",
    "dataset_config",
    "make_splits",
    "num_classes",
    "symmetric_label_noise",
    "train_batch",
    "validate_dataset_config",
    "validate_real_dataset_config",
]

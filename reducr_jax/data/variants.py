"""The ``config.dataset`` fields choosing between this project's and the official REDUCR
code's data behaviour (issue #17), and their one-line validation.

Every field's default (``DEFAULTS``, part of the complete dataset configs of
``data.dataset_config``) is this project's behaviour; the official value is noted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reducr_jax.data import corruption
from reducr_jax.core import groups as groups_lib

# field -> (default = this project's behaviour, allowed values)
DEFAULTS = {
    # §5.3 imbalance: 'subsample' drops rows of the rare class; 'weighted_sampler' (official,
    # src/datamodules/datasets/imbalanced_dataloader.py) keeps every row and draws batches
    # with replacement with class weights (fraction for the rare class, (1-fraction)/(C-1)).
    "imbalance_mode": "subsample",
    # 'different' (a flip is a different class) | 'any' (official _corrupt_dataset:
    # int(N*rate) rows relabelled uniformly over all C classes) | 'structured' (official
  # structured_noise: the first int(n_c*rate) rows of class 3 -> 5, then 9 -> 7, 4 -> 9).
    "label_noise_mode": "different",
    # 'random' (seeded stratified / random cuts) | 'official' (CIFAR: even train indices =
    # train, odd = holdout; QQP, MNLI: official train_test_val_split, see real.py).
    "split_mode": "random",
    # () = one group per class | C group ids | 'cifar100_superclasses' (official CIFAR-100).
    "groups": (),
}
# dataset.cinic10_relevance (real_specs.DEFAULTS; official CINIC10RelevanceDataModule,
# src/datamodules/datamodules.py): the valid (= holdout = val) and test splits keep the
# rows with `targets < 4.5`, classes 0-4 (airplane … deer); train keeps all ten classes, so
# half of it is "irrelevant" to the evaluation task (RHO-LOSS relevance experiment).
RELEVANT_CLASSES = (0, 1, 2, 3, 4)
IMBALANCE_MODES = ("subsample", "weighted_sampler")
SPLIT_MODES = ("random", "official")
OFFICIAL_SPLIT_DATASETS = ("cifar10", "cifar100", "mnli", "qqp")


def validate_variants(cfg: Any, num_classes: int) -> None:
  """Raises a one-line ``ValueError`` naming the first bad field of ``DEFAULTS``."""
  mode = cfg.imbalance_mode
  if mode not in IMBALANCE_MODES:
    raise ValueError(f"config.dataset.imbalance_mode must be one of {list(IMBALANCE_MODES)}, "
                     f"got {mode!r}")
  if mode == "weighted_sampler" and "val" in tuple(cfg.imbalance_splits):
    raise ValueError("config.dataset.imbalance_splits must be a subset of ('train', "
                     "'holdout') with imbalance_mode='weighted_sampler' (val is evaluated "
                     f"whole, not sampled), got {tuple(cfg.imbalance_splits)!r}")
  noise = cfg.label_noise_mode
  if noise not in corruption.LABEL_NOISE_MODES:
    raise ValueError(f"config.dataset.label_noise_mode must be one of "
                     f"{list(corruption.LABEL_NOISE_MODES)}, got {noise!r}")
  if noise == "structured" and num_classes < 10:
    raise ValueError(f"config.dataset.label_noise_mode='structured' flips classes 3, 4, 9 "
                     f"into 5, 9, 7 and needs >= 10 classes, got {num_classes}")
  split = cfg.split_mode
  if split not in SPLIT_MODES:
    raise ValueError(f"config.dataset.split_mode must be one of {list(SPLIT_MODES)}, "
                     f"got {split!r}")
  if split == "official" and cfg.name not in OFFICIAL_SPLIT_DATASETS:
    raise ValueError(f"config.dataset.split_mode must be 'random' for {cfg.name!r} "
                     f"('official' exists for {list(OFFICIAL_SPLIT_DATASETS)})")
  relevance = cfg.get("cinic10_relevance", False)
  if not isinstance(relevance, bool) or (relevance and cfg.name != "cinic10"):
    raise ValueError(f"config.dataset.cinic10_relevance must be True or False (True only "
                     f"for 'cinic10'), got {relevance!r} for {cfg.name!r}")
  groups_lib.validate_groups(cfg.groups, num_classes)


def relevant_rows(part: tuple) -> tuple:
  """``(x, y, index)`` cut to the rows of :data:`RELEVANT_CLASSES` (row order kept)."""
  x, y, index = part
  rows = np.flatnonzero(np.isin(y, RELEVANT_CLASSES))
  return x[rows], y[rows], index[rows]

"""Checks of config sizes against the data's sizes, once the splits are known.

:func:`check_batch_sizes` runs right after the splits are built and before any model is
compiled or trained, so a batch larger than the split it is drawn from is a one-line
:class:`~reducr_jax.core.errors.ConfigError` that says the largest value that works, not
minutes of training on a batch that repeats its examples. (Sizes that are known before
preparing the data, e.g. Clothing1M's ``clothing1m_holdout_extra``, are checked earlier,
by the data code.)
"""

from __future__ import annotations

import math

from typing import Any, Optional

import numpy as np

from reducr_jax.config import config_validation
from reducr_jax.core import errors
from reducr_jax import reweighters
from reducr_jax import selectors
from reducr_jax.core import groups as groups_lib
from reducr_jax.data import split_types


def _largest_batch(n: int, num_devices: int, percent_selected: float | None,
                   k_rounding: str = "round") -> int:
  """The largest B <= n that splits over the devices (and whose k does)."""
  for b in range(n - n % num_devices, 0, -num_devices):
    if percent_selected is None or config_validation.splits_over_devices(
        b, num_devices, percent_selected, k_rounding):
      return b
  return 0


def _rules(config: Any, rules: Optional[config_validation.Rules]) -> config_validation.Rules:
  """The run's rule and reweighter: ``rules`` as the trainer built them, else built here."""
  return rules or config_validation.build_rules(config)


def check_batch_sizes(config: Any, splits: split_types.Splits, num_devices: int,
                      rules: Optional[config_validation.Rules] = None) -> None:
  """Raises a one-line ``ConfigError`` when a batch is larger than the split it samples.

  * ``config.batch_size`` (the large batch B, drawn from ``train``; B and k split over
    ``num_devices``);
  * ``config.experts.batch_size`` (drawn from ``holdout``) when the method trains
    reference models;
  * ``config.meta.val_batch_size`` (drawn from the clean ``holdout``) when the reweighter
    needs a validation batch (``config.reweight='meta'``);
  * ``config.batch_size`` against the holdout for the EMA class-holdout loss;
  * ``config.pruning.batch_size`` (score-based pruning), and a pruning density that keeps
    fewer examples than one batch or than there are classes.
  """
  selector, reweighter = _rules(config, rules)
  n_train, n_holdout = len(splits.train), len(splits.holdout)
  checks = [("config.batch_size", config.batch_size, "train", n_train,
             num_devices, config.selection.percent_selected)]
  if selectors.reference_kind(selector.needs) is not None:   # trains reference models
    checks.append(("config.experts.batch_size", config.experts.batch_size, "holdout",
                   n_holdout, 1, None))
  if (selectors.CLASS_HOLDOUT_LOSS in selector.needs and
      config.selection.holdout_loss == "ema"):
    checks.append(("config.batch_size", config.batch_size, "holdout (holdout_loss='ema')",
                   n_holdout, num_devices, None))
  if reweighters.VALIDATION_BATCH in reweighter.needs:
    checks.append(("config.meta.val_batch_size", config.meta.val_batch_size, "holdout",
                   n_holdout, num_devices, None))
  p = config.pruning
  if p.strategy not in ("none", "random"):
    checks.append(("config.pruning.batch_size", p.batch_size, "train", n_train, 1, None))
  for field, value, split, n, devices, percent in checks:
    if value > n:
      largest = _largest_batch(n, devices, percent, config.selection.k_rounding)
      works = (f"the largest value that works is {largest}" if largest else
               "no value works")
      per_device = f" on {devices} devices" if devices > 1 else ""
      raise errors.ConfigError(f"{field}={value} exceeds the {n} examples of the {split} "
                               f"split; {works}{per_device}")
  if p.strategy != "none":
    kept = int(math.floor(p.density * n_train + 0.5))
    if kept < max(splits.num_classes, config.batch_size):
      raise errors.ConfigError(
          f"config.pruning.density={p.density} keeps {kept} of {n_train} train examples, "
          f"fewer than config.batch_size ({config.batch_size}) or the {splits.num_classes} "
          "classes")


def check_pruned(config: Any, unpruned: split_types.Splits,
                 splits: split_types.Splits) -> None:
  """After pruning: every class that had training examples keeps at least one."""
  if config.pruning.strategy == "none":
    return
  before = np.bincount(np.asarray(unpruned.train.y), minlength=splits.num_classes)
  counts = np.bincount(np.asarray(splits.train.y), minlength=splits.num_classes)
  empty = [splits.class_names[c] if splits.class_names else str(c)
           for c in np.flatnonzero((counts == 0) & (before > 0))]
  if empty:
    raise errors.ConfigError(f"config.pruning (strategy {config.pruning.strategy!r}, density "
                             f"{config.pruning.density}) leaves no training example of class "
                             f"{', '.join(map(str, empty))}; raise config.pruning.density")


def check_against_data(config: Any, splits: split_types.Splits,
                       rules: Optional[config_validation.Rules] = None) -> None:
  """Config fields that only the data can check, before anything is compiled: an image
  augmentation (``config.dataset.augment``) needs image examples ``[H, W, C]``, and the
  selection rule's and reweighter's per-class fields (e.g. ``config.selection.class_weights``)
  must match the number of classes (groups with ``config.dataset.groups``). ``rules``:
  the run's rule and reweighter when already built (:func:`check_batch_sizes` too)."""
  augment = config.dataset.augment
  shape = tuple(np.shape(splits.train.x)[1:])
  if augment != "none" and len(shape) != 3:
    raise errors.ConfigError(
        f"config.dataset.augment={augment!r} needs image examples [H, W, C], but dataset "
        f"{config.dataset.name!r} has examples of shape {shape}; use 'none'")
  units = groups_lib.num_groups(config.dataset.groups, splits.num_classes)
  selector, reweighter = _rules(config, rules)
  try:
    selector.init(units)
    reweighter.init(units)
  except ValueError as e:
    raise errors.ConfigError(str(e).splitlines()[0]) from None

"""Checks of config sizes against the data's sizes, once the splits are known.

:func:`check_batch_sizes` runs right after the splits are built and before any model is
compiled or trained, so a batch larger than the split it is drawn from is a one-line
:class:`~reducr_jax.errors.ConfigError` that says the largest value that works, not
minutes of training on a batch that repeats its examples. (Sizes that are known before
preparing the data, e.g. Clothing1M's ``clothing1m_holdout_extra``, are checked earlier,
by the data code.)
"""

from __future__ import annotations

import ml_collections

from reducr_jax import errors
from reducr_jax import reweighters
from reducr_jax import train_experts
from reducr_jax.data import split_types


def _largest_batch(n: int, num_devices: int, percent_selected: float | None) -> int:
  """The largest B <= n that splits over the devices (and whose k = round(p·B) does)."""
  for b in range(n - n % num_devices, 0, -num_devices):
    k = round(percent_selected * b) if percent_selected is not None else num_devices
    if k >= 1 and k % num_devices == 0:
      return b
  return 0


def check_batch_sizes(config: ml_collections.ConfigDict, splits: split_types.Splits,
                      num_devices: int) -> None:
  """Raises a one-line ``ConfigError`` when a batch is larger than the split it samples.

  * ``config.batch_size`` (the large batch B, drawn from ``train``; B and k split over
    ``num_devices``);
  * ``config.experts.batch_size`` (drawn from ``holdout``) when the method trains
    reference models;
  * ``config.meta.val_batch_size`` (drawn from the clean ``holdout``) when the reweighter
    needs a validation batch (``config.reweight='meta'``).
  """
  checks = [("config.batch_size", config.batch_size, "train", len(splits.train),
             num_devices, config.selection.percent_selected)]
  if train_experts.reference_kind(config) is not None:
    checks.append(("config.experts.batch_size", config.experts.batch_size, "holdout",
                   len(splits.holdout), 1, None))
  if reweighters.VALIDATION_BATCH in reweighters.get(config).needs:
    checks.append(("config.meta.val_batch_size", config.meta.val_batch_size, "holdout",
                   len(splits.holdout), num_devices, None))
  for field, value, split, n, devices, percent in checks:
    if value > n:
      largest = _largest_batch(n, devices, percent)
      works = (f"the largest value that works is {largest}" if largest else
               "no value works")
      per_device = f" on {devices} devices" if devices > 1 else ""
      raise errors.ConfigError(f"{field}={value} exceeds the {n} examples of the {split} "
                               f"split; {works}{per_device}")

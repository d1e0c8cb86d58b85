"""The batch streams of one training step, as a pure function of (config, step)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from reducr_jax.core import rng_streams
from reducr_jax.data import corruption
from reducr_jax.data.sampling import batch_indices
from reducr_jax.data.sampling import process_rows
from reducr_jax.data.sampling import weighted_batch_indices
from reducr_jax.data.split_types import Split
from reducr_jax.data.splits import Splits


def split_batch_indices(dataset_config: Any, split: Split,
                        split_name: str, seed: int | tuple[int, ...], step: int,
                        batch_size: int,
                        num_classes: int) -> np.ndarray:
  """int64 [batch_size]: the batch of ``split`` at ``step``: epochs of
  :func:`batch_indices`, or with ``imbalance_mode='weighted_sampler'`` on an
  ``imbalance_splits`` split, :func:`weighted_batch_indices` (with replacement). Pure
  function of its arguments.

  Official: ``src/datamodules/datasets/imbalanced_dataloader.py`` (the train and the
  validation loaders get the sampler; our ``holdout`` is the paper's validation set)."""
  cfg = dataset_config
  cls = int(cfg.imbalance_class)
  if (cfg.imbalance_mode == "weighted_sampler" and cls != -1 and
      split_name in tuple(cfg.imbalance_splits)):
    p = corruption.sampler_probabilities(split.y, cls, float(cfg.imbalance_fraction),
                                         num_classes)
    return weighted_batch_indices(seed, step, p, batch_size)
  return batch_indices(seed, step, len(split), batch_size)


def corrupted_labels_known(config: Any) -> bool:
  """Whether the train split's clean labels are known apart from its seen labels: label
  noise was added by this project (``config.dataset.label_noise > 0``). Clothing1M's pool
  labels are noisy by nature and its loader keeps no clean label for them (the images that
  ``clean_label_kv.txt`` also annotates are not matched), so it logs no share."""
  return float(config.dataset.label_noise) > 0


def train_batch(config: Any, splits: Splits,
                table: Optional[np.ndarray], step: int, *, holdout: bool = False,
                validation: bool = False, num_processes: int = 1,
                process_index: int = 0) -> dict:
  """This process's rows of the global batch of training step ``step``.

  A pure function of config and step, so the data position to resume from is the step
  alone. Streams (each a named :mod:`reducr_jax.core.rng_streams` order):

  * ``x``/``y``: the large batch of ``config.batch_size`` train points (``train_order``);
  * ``corrupted`` bool [B] (when :func:`corrupted_labels_known`): the label differs from
    the clean label, for the corrupted-label share of the selected points;
  * ``ref_losses``: its rows of the precomputed reference-loss ``table`` (when given);
  * ``holdout_x``/``holdout_y`` (``holdout``): a holdout batch for the EMA class-holdout
    loss (``holdout_order``);
  * ``meta_x``/``meta_y`` (``validation``): ``config.meta.val_batch_size`` clean holdout
    points for a reweighter that needs a validation batch (``validation_order``).

  Indices are cut to this process's contiguous share
  (:func:`reducr_jax.data.sampling.process_rows`) *before* any input is read, so each host
  reads and decodes only its own rows.
  """
  rows = lambda idx: process_rows(idx, num_processes, process_index)  # noqa: E731
  order = lambda name: rng_streams.order_seed(config.seed, name)  # noqa: E731
  pick = lambda split, name, stream, b: split_batch_indices(  # noqa: E731
      config.dataset, split, name, order(stream), step, b, splits.num_classes)
  idx = rows(pick(splits.train, "train", "train_order", config.batch_size))
  batch = {"x": splits.train.x[idx], "y": splits.train.y[idx]}
  if corrupted_labels_known(config):
    batch["corrupted"] = splits.train.y[idx] != splits.train.y_clean[idx]
  if table is not None:
    batch["ref_losses"] = table[idx]
  if holdout:     # the EMA class-holdout loss reads config.selection.holdout_source's split
    h_split = class_holdout_split(config, splits)
    hidx = rows(pick(h_split, config.selection.holdout_source, "holdout_order",
                     config.batch_size))
    batch["holdout_x"], batch["holdout_y"] = h_split.x[hidx], h_split.y[hidx]
  if validation:
    vidx = rows(pick(splits.holdout, "holdout", "validation_order",
                     config.meta.val_batch_size))
    batch["meta_x"], batch["meta_y"] = splits.holdout.x[vidx], splits.holdout.y[vidx]
  return batch


def class_holdout_split(config, splits: Splits) -> Split:
  """The split the class-holdout loss h is measured on (``config.selection.holdout_source``):
  ``"holdout"`` (the split the experts train on) or ``"val"`` (the validation split; the
  official Clothing1M main robust run, ``clean_val_mode: 'val'``: the clean val set only)."""
  return splits.val if config.selection.holdout_source == "val" else splits.holdout

"""The batch streams of one training step, as a pure function of (config, step)."""

from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from reducr_jax import sharding
from reducr_jax.data.sampling import batch_indices
from reducr_jax.data.splits import Split, Splits


def train_batch(config: ml_collections.ConfigDict, splits: Splits,
                table: Optional[np.ndarray], step: int, *, holdout: bool = False,
                validation: bool = False, num_processes: int = 1,
                process_index: int = 0) -> dict:
  """This process's rows of the global batch of training step ``step``.

  A pure function of config and step, so the data position to resume from is the step
  alone. Streams (each with its own seed offset):

  * ``x``/``y``: the large batch of ``config.batch_size`` train points;
  * ``ref_losses``: its rows of the precomputed reference-loss ``table`` (when given);
  * ``holdout_x``/``holdout_y`` (``holdout``): a holdout batch for the EMA class-holdout
    loss;
  * ``meta_x``/``meta_y`` (``validation``): ``config.meta.val_batch_size`` clean holdout
    points for a reweighter that needs a validation batch.

  Indices are cut to this process's contiguous share
  (:func:`reducr_jax.sharding.process_rows`) *before* any input is read, so each host
  reads and decodes only its own rows.
  """
  rows = lambda idx: sharding.process_rows(idx, num_processes, process_index)  # noqa: E731
  idx = rows(batch_indices(config.seed, step, len(splits.train), config.batch_size))
  batch = {"x": splits.train.x[idx], "y": splits.train.y[idx]}
  if table is not None:
    batch["ref_losses"] = table[idx]
  if holdout:     # the EMA class-holdout loss reads config.selection.holdout_source's split
    h_split = class_holdout_split(config, splits)
    hidx = rows(batch_indices(config.seed + 1, step, len(h_split), config.batch_size))
    batch["holdout_x"], batch["holdout_y"] = h_split.x[hidx], h_split.y[hidx]
  if validation:
    vidx = rows(batch_indices(config.seed + 2, step, len(splits.holdout),
                              config.meta.val_batch_size))
    batch["meta_x"], batch["meta_y"] = splits.holdout.x[vidx], splits.holdout.y[vidx]
  return batch


def class_holdout_split(config, splits: Splits) -> Split:
  """The split the class-holdout loss h is measured on (``config.selection.holdout_source``):
  ``"holdout"`` (the split the experts train on) or ``"val"`` (the validation split; the
  official Clothing1M main robust run, ``clean_val_mode: 'val'``: the clean val set only)."""
  return splits.val if config.selection.get("holdout_source", "holdout") == "val" else splits.holdout

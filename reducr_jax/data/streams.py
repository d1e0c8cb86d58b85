"""The batch streams of one training step, as a pure function of (config, step)."""

from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from reducr_jax import rng_streams
from reducr_jax import sharding
from reducr_jax.data.sampling import batch_indices
from reducr_jax.data.splits import Splits


def train_batch(config: ml_collections.ConfigDict, splits: Splits,
                table: Optional[np.ndarray], step: int, *, holdout: bool = False,
                validation: bool = False, num_processes: int = 1,
                process_index: int = 0) -> dict:
  """This process's rows of the global batch of training step ``step``.

  A pure function of config and step, so the data position to resume from is the step
  alone. Streams (each a named :mod:`reducr_jax.rng_streams` order):

  * ``x``/``y``: the large batch of ``config.batch_size`` train points (``train_order``);
  * ``ref_losses``: its rows of the precomputed reference-loss ``table`` (when given);
  * ``holdout_x``/``holdout_y`` (``holdout``): a holdout batch for the EMA class-holdout
    loss (``holdout_order``);
  * ``meta_x``/``meta_y`` (``validation``): ``config.meta.val_batch_size`` clean holdout
    points for a reweighter that needs a validation batch (``validation_order``).

  Indices are cut to this process's contiguous share
  (:func:`reducr_jax.sharding.process_rows`) *before* any input is read, so each host
  reads and decodes only its own rows.
  """
  rows = lambda idx: sharding.process_rows(idx, num_processes, process_index)  # noqa: E731
  order = lambda name: rng_streams.order_seed(config.seed, name)  # noqa: E731
  idx = rows(batch_indices(order("train_order"), step, len(splits.train), config.batch_size))
  batch = {"x": splits.train.x[idx], "y": splits.train.y[idx]}
  if table is not None:
    batch["ref_losses"] = table[idx]
  if holdout:
    hidx = rows(batch_indices(order("holdout_order"), step, len(splits.holdout),
                              config.batch_size))
    batch["holdout_x"], batch["holdout_y"] = splits.holdout.x[hidx], splits.holdout.y[hidx]
  if validation:
    vidx = rows(batch_indices(order("validation_order"), step, len(splits.holdout),
                              config.meta.val_batch_size))
    batch["meta_x"], batch["meta_y"] = splits.holdout.x[vidx], splits.holdout.y[vidx]
  return batch

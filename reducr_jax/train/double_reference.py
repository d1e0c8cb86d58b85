"""Double irreducible training (``config.experts.double_irreducible``): reference losses
of the train split from models that never saw the row, trained on the train split itself.

Official: ``src/train_double_irreducible.py`` with ``datamodule.setup(double_irlomo=True)``
(``src/datamodules/datamodules.py``; ``configs/double_irreducible_training.yaml``, RHO-LOSS
repository and REDUCR commit 0d904f5). The train set (labels as corrupted) is cut per
class into two halves — each class's rows permuted by a fresh ``np.random.default_rng(1)``,
the first ``int(n_c / 2)`` to half 1, the rest to half 2 —, one irreducible-loss model is
trained on each half (checkpoint on the validation loss), and the precomputed loss table
holds, for every row of half 1, the loss of the model trained on half 2 and vice versa. No
holdout data is needed: the official note says the result serves only as precomputed
losses (not updated online).

Here the reference models of the selection rule (one RHO-LOSS model, or REDUCR's C class
experts, γ-weighted as usual) are trained by :mod:`reducr_jax.train.stage1_trainer` with the
train half in place of the holdout split (checkpoint on ``config.experts.select_on`` as
usual; cached per half), then each half's rows are scored by the other half's models.
Needs ``config.experts.losses='precomputed'`` (checked by
:func:`reducr_jax.config.configuration.validate_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from reducr_jax.train import references as references_lib
from reducr_jax.data import random_access
from reducr_jax.data import split_types

SEED = 1          # the official np.random.default_rng(1), fresh for every class


def halves(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The official class-balanced halves of the rows of ``y`` → ``(rows_1, rows_2)``,
  int64 and sorted (each class: ``int(n_c / 2)`` rows in half 1, the rest in half 2)."""
  y = np.asarray(y)
  one, two = [], []
  for t in np.unique(y):
    rows = np.random.default_rng(SEED).permutation(np.flatnonzero(y == t))
    one.append(rows[:int(len(rows) / 2)])
    two.append(rows[int(len(rows) / 2):])
  cat = lambda parts: np.sort(np.concatenate(parts or [np.zeros(0, np.int64)]))  # noqa: E731
  return cat(one).astype(np.int64), cat(two).astype(np.int64)


def subset(split: split_types.Split, rows: np.ndarray) -> split_types.Split:
  """The rows ``rows`` of ``split`` (a view for lazy images)."""
  return split_types.Split(x=random_access.take(split.x, rows), y=split.y[rows],
                           y_clean=split.y_clean[rows], index=split.index[rows])


def references(config: Any, splits: split_types.Splits, workdir: str,
               selector=None) -> references_lib.References:
  """Stage 1 with double training: :class:`~reducr_jax.train.references.References` with the
  cross-fitted ``[N, C']`` table of the train split (no reference models: empty).
  ``selector``: the run's rule when already built (built from ``config`` otherwise)."""
  if references_lib.reference_kind_for_config(config, selector) is None:
    return references_lib.References()
  rows = halves(splits.train.y)
  parts = [subset(splits.train, r) for r in rows]
  refs = [references_lib.get_reference_models(
      config, dataclasses.replace(splits, holdout=part), workdir, tag=f"-half{h + 1}",
      selector=selector)
          for h, part in enumerate(parts)]
  table = None
  for h, (r, part) in enumerate(zip(rows, parts)):
    if not len(r):
      continue
    scores = references_lib.precompute_loss_table(refs[1 - h], part, config.eval_batch_size,
                                                  config)
    if table is None:
      table = np.zeros((len(splits.train),) + scores.shape[1:], np.float32)
    table[r] = scores
  return references_lib.References("table", table=table)

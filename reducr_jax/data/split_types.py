"""The ``Split`` / ``Splits`` containers and the stratified cut, shared by every data source.

A leaf module (NumPy only): :mod:`reducr_jax.data.splits` (embedded data) and
:mod:`reducr_jax.data.real` (the paper's datasets) both build these, and ``splits``
dispatches to ``real``, so the containers live here to keep the imports acyclic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLIT_NAMES = ("train", "holdout", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split; row i of every field describes the same example.

  Attributes:
    x: features float32 [n, D], standardised with the train split's statistics (embedded
      data); real data (``real.py``): images uint8 [n, H, W, 3] in 0..255 (a lazy
      ``random_access.LazyArray`` for Clothing1M) or text int32 [n, 2, L].
    y: labels int32 [n] as seen by training (noisy for ``train``).
    y_clean: labels int32 [n] before label noise (equals ``y`` except in ``train``).
    index: int64 [n], row of the example in ``embedded.load_arrays(name)`` (real data:
      its row in the source split, see ``real.py``).
  """
  x: np.ndarray
  y: np.ndarray
  y_clean: np.ndarray
  index: np.ndarray

  def __len__(self) -> int:
    return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
  """The four splits of one dataset plus its class metadata."""
  train: Split
  holdout: Split
  val: Split
  test: Split
  num_classes: int
  class_names: list[str]


def stratified_parts(y: np.ndarray, fractions, rng: np.random.Generator) -> list[np.ndarray]:
  """Row indices of the 4 parts: every class cut in ``fractions`` (cumulative rounding)."""
  cum = np.cumsum(fractions)
  cum[-1] = 1.0
  parts = [[] for _ in fractions]
  for c in np.unique(y):
    rows = rng.permutation(np.flatnonzero(y == c))
    bounds = np.concatenate([[0], np.floor(cum * rows.size + 0.5).astype(np.int64)])
    for p in range(len(fractions)):
      parts[p].append(rows[bounds[p]:bounds[p + 1]])
  return [rng.permutation(np.concatenate(p)) for p in parts]

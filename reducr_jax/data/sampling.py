"""Stateless batch order for training, and fixed-shape batches for evaluation.

Training order is a pure function of ``(seed, step)``: the example stream is the
concatenation of independent permutations of ``range(num_examples)``, permutation ``e``
drawn from ``np.random.default_rng([*seed, e])`` (``seed`` an int or a tuple of ints, e.g.
a named stream's :func:`reducr_jax.core.rng_streams.order_seed`), and the batch at ``step`` is the slice
``[step * B, (step + 1) * B)`` of that stream. Resuming from a checkpoint therefore needs
only the step; no iterator state is saved.

With ``config.dataset.imbalance_mode='weighted_sampler'`` (the official REDUCR weighted
sampler, ``src/datamodules/datasets/imbalanced_dataloader.py``) the batch at ``step`` is
instead drawn *with replacement* with per-example probabilities
(:func:`weighted_batch_indices`), from ``np.random.default_rng([seed, step, 1])``: still
a pure function of ``(seed, step)``.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import numpy as np


def _check_positive_int(name: str, v, minimum: int) -> None:
  if (not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or
      v < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def _seeds(seed) -> tuple[int, ...]:
  """``seed`` (an int or a non-empty tuple of non-negative ints) as a tuple of ints."""
  seeds = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
  if not seeds:
    raise ValueError("seed must be a non-negative int or a non-empty tuple of them, got ()")
  for s in seeds:
    _check_positive_int("seed", s, 0)
  return tuple(int(s) for s in seeds)


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: tuple[int, ...], epoch: int, num_examples: int) -> np.ndarray:
  """Read-only int64 [num_examples]: the order of epoch ``epoch``."""
  perm = np.random.default_rng([*seed, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def batch_indices(seed: int | tuple[int, ...], step: int, num_examples: int,
                  batch_size: int) -> np.ndarray:
  """Indices of the training batch at ``step``; see the module docstring.

  Only the permutations of the epochs the batch overlaps are drawn (one or two, more
  only when ``batch_size > num_examples``), so any step costs O(num_examples).

  Args:
    seed: a non-negative int, or a tuple of them (a named stream's
      :func:`reducr_jax.core.rng_streams.order_seed`); ``s`` and ``(s,)`` are the same stream.
    step: non-negative int (Python ints, so no overflow for large steps).
    num_examples: size N of the split, >= 1.
    batch_size: B >= 1; may exceed N, then the batch spans several epochs.

  Returns:
    int64 [batch_size], values in [0, N).
  """
  seeds = _seeds(seed)
  _check_positive_int("step", step, 0)
  _check_positive_int("num_examples", num_examples, 1)
  _check_positive_int("batch_size", batch_size, 1)
  step, n, b = int(step), int(num_examples), int(batch_size)
  start, stop = step * b, (step + 1) * b
  pieces = []
  for epoch in range(start // n, (stop - 1) // n + 1):
    lo = max(start - epoch * n, 0)
    hi = min(stop - epoch * n, n)
    pieces.append(_epoch_permutation(seeds, epoch, n)[lo:hi])
  return np.concatenate(pieces).astype(np.int64)


_WEIGHTED_TAG = 1     # keeps the weighted stream apart from the epoch permutations


def weighted_batch_indices(seed: int | tuple[int, ...], step: int, probabilities: np.ndarray,
                           batch_size: int) -> np.ndarray:
  """Indices of the batch at ``step`` drawn with replacement, ``P(i) = probabilities[i]``.

  Args:
    seed, step: non-negative ints (``seed`` also a tuple of them, as in
      :func:`batch_indices`); the batch is a pure function of them (and the probabilities).
    probabilities: float [N], non-negative, summing to 1 (e.g.
      ``corruption.sampler_probabilities``).
    batch_size: B >= 1.

  Returns:
    int64 [batch_size], values in [0, N).
  """
  seeds = _seeds(seed)
  _check_positive_int("step", step, 0)
  _check_positive_int("batch_size", batch_size, 1)
  p = np.asarray(probabilities, np.float64)
  rng = np.random.default_rng([*seeds, int(step), _WEIGHTED_TAG])
  cdf = np.cumsum(p)
  u = rng.random(int(batch_size)) * cdf[-1]
  return np.minimum(np.searchsorted(cdf, u, side="right"), p.size - 1).astype(np.int64)


def epoch_of(step: int, num_examples: int, batch_size: int) -> int:
  """The epoch containing the first example of the batch at ``step``."""
  _check_positive_int("step", step, 0)
  _check_positive_int("num_examples", num_examples, 1)
  _check_positive_int("batch_size", batch_size, 1)
  return int(step) * int(batch_size) // int(num_examples)


def iterate_batches(split, batch_size: int, num_parts: int = 1,
                    part: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields every example of ``split`` once, in order, in fixed-shape batches.

  Args:
    split: anything with ``x`` [n, ...] and ``y`` [n] (e.g. a ``Split``). ``x`` is sliced
      batch by batch, never converted whole, so a lazy ``random_access.LazyArray`` only
      decodes one batch at a time.
    batch_size: B >= 1, the global batch.
    num_parts, part: yield only contiguous part ``part`` of ``num_parts`` of every
      batch (B/num_parts rows; B must divide evenly): what process ``part`` of
      ``num_parts`` feeds, reading only its own rows.

  Yields:
    ``(x, y, mask)``: x [B/num_parts, ...] with ``split.x``'s dtype, y with ``split.y``'s
    dtype, mask bool. The last batch is zero-padded with ``mask`` False on the padding,
    so a jitted evaluation step compiles once. ``ceil(n / B)`` batches.
  """
  _check_positive_int("batch_size", batch_size, 1)
  _check_positive_int("num_parts", num_parts, 1)
  if batch_size % num_parts or not 0 <= part < num_parts:
    raise ValueError(f"part must be in [0, {num_parts}) and num_parts must divide "
                     f"batch_size={batch_size}, got part={part!r}, num_parts={num_parts}")
  x = split.x if hasattr(split.x, "shape") and hasattr(split.x, "dtype") else np.asarray(
      split.x)
  y = np.asarray(split.y)
  n = y.shape[0]
  size = batch_size // num_parts
  for start in range(0, n, batch_size):
    lo = min(start + part * size, n)
    stop = min(lo + size, n)
    if stop - lo == size:
      yield x[lo:stop], y[lo:stop], np.ones(size, dtype=bool)
      continue
    xb = np.zeros((size,) + x.shape[1:], dtype=x.dtype)
    yb = np.zeros((size,), dtype=y.dtype)
    if stop > lo:
      xb[:stop - lo], yb[:stop - lo] = x[lo:stop], y[lo:stop]
    mask = np.zeros(size, dtype=bool)
    mask[:stop - lo] = True
    yield xb, yb, mask


def process_range(n: int, num_processes: int, process_index: int) -> tuple[int, int]:
  """Rows ``[lo, hi)`` of ``n`` that process ``process_index`` owns: contiguous blocks of
  ``ceil(n / num_processes)`` (the last ones shorter, possibly empty)."""
  per = -(-n // num_processes)
  lo = min(process_index * per, n)
  return lo, min(lo + per, n)


def process_rows(tree, num_processes: int, process_index: int):
  """This process's contiguous share of a global batch (leading axis split in order)."""
  if num_processes == 1:
    return tree
  def rows(a):
    per = a.shape[0] // num_processes
    return a[process_index * per:(process_index + 1) * per]
  return jax.tree.map(rows, tree)

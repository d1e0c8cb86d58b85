"""Paired comparisons of two methods over runs: gains, bootstrap intervals, win rates.

A pair is two runs that share everything but the method: the same protocol (dataset,
rare class) and seed, hence the same data splits, imbalance, label noise and reference
models. ``diffs[i] = metric(REDUCR run i) − metric(baseline run i)``.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(diffs, num_resamples: int,
                     rng: np.random.Generator) -> tuple[float, float, float]:
  """Mean paired difference and its percentile-bootstrap 95 % interval.

  Resamples the n pairs with replacement ``num_resamples`` times (``idx ~ U{0..n−1}^n``),
  takes each resample's mean ``m_b = mean(diffs[idx_b])``, and returns
  ``(mean(diffs), q_2.5(m), q_97.5(m))`` (``np.percentile``, linear interpolation).
  Pairs are resampled whole, so what the two runs of a pair share (data, seed) cancels.

  Args:
    diffs: ``[n]`` paired differences, n ≥ 1, finite.
    num_resamples: B ≥ 1.
    rng: the generator (results are reproducible from its seed).

  Returns:
    ``(mean, lo, hi)``; e.g. ``diffs = [0, 1]``: resample means are 0, ½, 1 with
    probabilities ¼, ½, ¼, so ``(0.5, 0.0, 1.0)``; equal diffs d give ``(d, d, d)``.
  """
  d = np.asarray(diffs, np.float64).reshape(-1)
  if d.size == 0 or not np.all(np.isfinite(d)):
    raise ValueError(f"diffs must be >= 1 finite numbers, got {diffs!r}")
  if isinstance(num_resamples, bool) or int(num_resamples) != num_resamples or num_resamples < 1:
    raise ValueError(f"num_resamples must be an int >= 1, got {num_resamples!r}")
  idx = rng.integers(0, d.size, size=(int(num_resamples), d.size))
  means = d[idx].mean(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return float(d.mean()), float(lo), float(hi)


def win_rate(diffs) -> float:
  """Share of pairs the first method wins: ``mean(1[d > 0] + ½ · 1[d = 0])`` in [0, 1]."""
  d = np.asarray(diffs, np.float64).reshape(-1)
  if d.size == 0:
    raise ValueError("win_rate needs at least one pair")
  return float(np.mean((d > 0) + 0.5 * (d == 0)))


def paired_summary(diffs, num_resamples: int, rng: np.random.Generator) -> dict:
  """``{"mean", "median", "lo", "hi", "win_rate", "num_pairs"}`` of paired differences."""
  mean, lo, hi = paired_bootstrap(diffs, num_resamples, rng)
  return {"mean": mean, "median": float(np.median(diffs)), "lo": lo, "hi": hi,
          "win_rate": win_rate(diffs), "num_pairs": int(np.size(diffs))}

"""Per-class statistics and class-robustness metrics, accumulated from batches.

Everything per class starts from :class:`ClassSums` — per-class sums of a per-example
quantity and per-class example counts. Sums and counts add, so batches merge with
``jax.tree.map(jnp.add, a, b)`` and devices with ``jax.lax.psum(stats, axis_name)``; the
per-class mean is taken once at the end. The same accumulator gives per-class accuracy
(the quantity is "prediction is correct") and the class-holdout loss of
:mod:`reducr_jax.core.mwu` (the quantity is the loss).

Robustness metrics (REDUCR reports worst-class accuracy; DRoP also the max−min gap and the
std across classes) are computed over the classes that have at least one example, so a
class absent from an evaluation split never turns a metric into NaN or 0.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks


class ClassSums(NamedTuple):
  """Per-class sums of a per-example quantity, with per-class counts.

  Attributes:
    sums: ``float32[C]``.
    counts: ``float32[C]`` number of (unmasked) examples of each class.
  """
  sums: jax.Array
  counts: jax.Array


def class_sums(values: jax.Array, labels: jax.Array, num_classes: int,
               mask: Optional[jax.Array] = None) -> ClassSums:
  """Per-class sums and counts of ``values`` over a batch.

  Args:
    values: ``[n]`` per-example quantity (loss, 0/1 correctness, ...), float or int (not
      bool).
    labels: ``int[n]`` classes in ``[0, C)``: a float array is a one-line ``ValueError``
      (a float one-hot index would count nothing); a concrete label outside ``[0, C)``,
      e.g. −1, too (a traced one cannot be checked and counts for no class).
    num_classes: C, a static int (a traced one is a one-line ``ValueError``).
    mask: optional ``bool[n]``; False rows (e.g. padding) are ignored, even if NaN.

  Returns:
    :class:`ClassSums` with ``[C]`` fields.
  """
  checks.check_shape("values", values, (None,), "[n]")
  n = np.shape(values)[0]
  if checks.dtype_of(values) == np.bool_:
    raise ValueError("values must be a float or int array, got dtype bool (use "
                     ".astype(jnp.float32) for 0/1 counts)")
  num_classes = checks.check_num_classes(num_classes)
  if mask is not None:
    checks.check_shape("mask", mask, (n,), f"[n={n}]")
  checks.check_labels("labels", labels, n, num_classes, where=mask)
  keep = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * keep[:, None]
  safe = jnp.where(keep, values, 0.0).astype(jnp.float32)
  return ClassSums(sums=safe @ one_hot, counts=jnp.sum(one_hot, axis=0))


def class_means(stats: ClassSums, default=jnp.nan) -> jax.Array:
  """``sums / counts`` per class; ``default`` for classes without examples → ``[C]``."""
  present = stats.counts > 0
  return jnp.where(present, stats.sums / jnp.where(present, stats.counts, 1.0), default)


def correct_sums(logits: jax.Array, labels: jax.Array,
                 mask: Optional[jax.Array] = None) -> ClassSums:
  """Per-class number of correct argmax predictions, and counts.

  Args:
    logits: ``[n, C]``.
    labels: ``int[n]``.
    mask: optional ``bool[n]``.

  Returns:
    :class:`ClassSums`: ``sums`` = correct predictions per class. A row with a NaN
    logit is never correct (``argmax`` would pick the NaN's index, e.g. class 0).
  """
  checks.check_shape("logits", logits, (None, None), "[n, C]")
  n, c = np.shape(logits)
  checks.check_labels("labels", labels, n)
  correct = ((jnp.argmax(logits, axis=-1) == labels) &
             ~jnp.any(jnp.isnan(logits), axis=-1)).astype(jnp.float32)
  return class_sums(correct, labels, c, mask)


def per_class_accuracy(stats: ClassSums) -> jax.Array:
  """Accuracy of each class → ``[C]``; NaN for a class with no example."""
  return class_means(stats, jnp.nan)


def _present(stats: ClassSums):
  return stats.counts > 0


def average_accuracy(stats: ClassSums) -> jax.Array:
  """Overall accuracy ``Σ correct / Σ examples`` (every example counts once)."""
  return jnp.sum(stats.sums) / jnp.maximum(jnp.sum(stats.counts), 1.0)


def worst_class_accuracy(stats: ClassSums) -> jax.Array:
  """Minimum per-class accuracy over classes with examples (REDUCR's headline metric)."""
  acc = per_class_accuracy(stats)
  return jnp.min(jnp.where(_present(stats), acc, jnp.inf))


def best_class_accuracy(stats: ClassSums) -> jax.Array:
  """Maximum per-class accuracy over classes with examples."""
  acc = per_class_accuracy(stats)
  return jnp.max(jnp.where(_present(stats), acc, -jnp.inf))


def accuracy_gap(stats: ClassSums) -> jax.Array:
  """Max − min per-class accuracy over classes with examples (DRoP)."""
  return best_class_accuracy(stats) - worst_class_accuracy(stats)


def balanced_accuracy(stats: ClassSums) -> jax.Array:
  """Mean of per-class accuracies over classes with examples."""
  present = _present(stats)
  acc = jnp.where(present, per_class_accuracy(stats), 0.0)
  return jnp.sum(acc) / jnp.maximum(jnp.sum(present), 1)


def accuracy_std(stats: ClassSums) -> jax.Array:
  """Population std of per-class accuracies over classes with examples (DRoP)."""
  present = _present(stats)
  mean = balanced_accuracy(stats)
  acc = jnp.where(present, per_class_accuracy(stats), mean)
  return jnp.sqrt(jnp.sum(jnp.square(acc - mean)) / jnp.maximum(jnp.sum(present), 1))


def group_sums(stats: ClassSums, group_of: Optional[np.ndarray]) -> ClassSums:
  """Per-class sums added up per group (``config.dataset.groups``) → ``[G]`` fields.

  Sums and counts add, so the group's statistic is exact (a group's accuracy is its
  correct predictions over its examples). ``group_of`` int [C] class → group; ``None``
  returns ``stats`` unchanged.
  """
  if group_of is None:
    return stats
  g = np.asarray(group_of)
  one_hot = jax.nn.one_hot(g, int(g.max()) + 1, dtype=jnp.float32)   # [C, G]
  return ClassSums(sums=jnp.asarray(stats.sums, jnp.float32) @ one_hot,
                   counts=jnp.asarray(stats.counts, jnp.float32) @ one_hot)


def group_summary(stats: ClassSums, group_of: np.ndarray) -> dict:
  """``{"worst_group_accuracy", "per_group_accuracy": [G], "group_counts": [G]}``."""
  g = group_sums(stats, group_of)
  return {"worst_group_accuracy": float(worst_class_accuracy(g)),
          "per_group_accuracy": [float(a) for a in np.asarray(per_class_accuracy(g))],
          "group_counts": [int(c) for c in np.asarray(g.counts)]}


def summary(stats: ClassSums) -> dict:
  """All accuracy metrics as plain Python floats (host side; for logs and results.json).

  Returns:
    ``{"accuracy", "worst_class_accuracy", "balanced_accuracy", "accuracy_gap",
    "accuracy_std", "per_class_accuracy": [C floats, NaN for absent classes],
    "class_counts": [C ints]}``.

  Raises:
    ValueError: ``stats`` holds no example (every count 0: the worst-class accuracy would
      be inf), or a class's correct count is negative or exceeds its example count
      (accuracy > 1: not accuracy sums, e.g. loss sums).
  """
  sums, counts = np.asarray(stats.sums, np.float64), np.asarray(stats.counts, np.float64)
  if sums.shape != counts.shape or sums.ndim != 1:
    raise ValueError(f"stats.sums and stats.counts must both have shape [C], got "
                     f"{sums.shape} and {counts.shape}")
  if not np.any(counts > 0):
    raise ValueError(f"stats must count at least one example, got counts {counts.tolist()}")
  bad = np.flatnonzero(~((sums >= 0) & (sums <= counts)))
  if bad.size:
    c = bad[0]
    raise ValueError(f"stats.sums must be correct-prediction counts in [0, stats.counts], "
                     f"got class {c}: {sums[c]:g} correct of {counts[c]:g}")
  return {
      "accuracy": float(average_accuracy(stats)),
      "worst_class_accuracy": float(worst_class_accuracy(stats)),
      "balanced_accuracy": float(balanced_accuracy(stats)),
      "accuracy_gap": float(accuracy_gap(stats)),
      "accuracy_std": float(accuracy_std(stats)),
      "per_class_accuracy": [float(a) for a in np.asarray(per_class_accuracy(stats))],
      "class_counts": [int(c) for c in np.asarray(stats.counts)],
  }

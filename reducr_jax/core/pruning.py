"""Static data pruning: DRoP class quotas and per-example difficulty scores.

Shapes: ``N`` training examples, ``C`` classes, ``K`` logits per example, ``S`` independent
runs (initialisations / parameter sets), ``T`` training checkpoints.

Data pruning keeps a fraction ``density`` of the training set, chosen once before training
(Vysogorets, Ahuja & Kempe, "DRoP: Distributionally Robust Data Pruning", ICLR 2025).

**DRoP class quotas** (DRoP Algorithm 1). Given each class's size ``N_k`` and the recall
``r_k`` of a query model trained on the full data (validation accuracy on class k), class k
keeps the fraction

    d_k = min(1, λ · (1 − r_k)),   λ such that Σ_k d_k N_k = density · Σ_k N_k,

i.e. quotas ``∝ (1 − r_k)`` water-filled: a class whose proportional share exceeds its
size is capped at its size and the surplus is redistributed over the others ``∝ (1 − r_k)``,
repeatedly. This is the fixed point of the paper's Algorithm 1. Examples are then drawn
uniformly at random inside each class (:func:`random_class_prune`; "Random + DRoP").

**Scores** (one per example; higher = harder = kept first by ``keep="hardest"``), in
:mod:`reducr_jax.core.pruning_scores`:
  * EL2N (Paul, Ganguli & Dziugaite, NeurIPS 2021): ``‖softmax(f(x)) − e_y‖₂``, averaged
    over initialisations — :func:`el2n_scores`.
  * GraNd (same paper): ``‖∇_θ ℓ(f_θ(x), y)‖₂``, averaged over initialisations —
    :func:`grand_scores`, :func:`grand_scores_stacked`.
  * Forgetting events (Toneva et al., ICLR 2019): the number of times an example goes from
    correctly to incorrectly classified during training — :class:`ForgettingState`,
    :func:`forgetting_init`, :func:`forgetting_update`, :func:`forgetting_scores`.
  * Dynamic uncertainty (He et al., "Large-scale Dataset Pruning with Dynamic Uncertainty",
    CVPR 2024; arXiv 2306.05175): the std of the true-label probability over a
    sliding window of checkpoints, averaged over windows — :func:`dynamic_uncertainty`.

:func:`prune_by_score` keeps the top (or bottom) ``density`` fraction by score, globally or
with the same density in every class.

Where things run: the scores (:mod:`reducr_jax.core.pruning_scores`) are pure ``jnp`` and
jit-able (static shapes); the quotas and
index selection (:func:`drop_class_densities`, :func:`drop_class_counts`,
:func:`proportional_class_counts`, :func:`random_class_prune`, :func:`prune_by_score`,
:func:`drop_prune`) are tiny host-side NumPy computations run once before training: they
take concrete arrays (NumPy or JAX), return NumPy arrays, and cannot be traced.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from reducr_jax.core import checks

# ---------------------------------------------------------------------------------------
# Host-side helpers.


def _host_density(density) -> float:
  v = checks.concrete_value(density)
  if v is None:
    raise ValueError("density must be a concrete Python float in (0, 1], got a tracer")
  checks.check_in_range("density", v, 0.0, 1.0, low_inclusive=False)
  return v


def _host_int_vector(name: str, x, described: str) -> np.ndarray:
  """``x`` as an int64 vector after checking it is 1-D with non-negative integer values."""
  arr = np.asarray(x)
  checks.check_shape(name, arr, (None,), described)
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"{name} must hold non-negative integers, got dtype {arr.dtype}")
  as_float = arr.astype(np.float64)
  bad = ~np.isfinite(as_float) | (as_float < 0) | (as_float != np.round(as_float))
  if bad.any():
    k = int(np.argmax(bad))
    raise ValueError(f"{name} must hold non-negative integers, got {arr[k]} at position {k}")
  return as_float.astype(np.int64)


def _round_half_up(x: float) -> int:
  """``round`` with halves rounded up (Python's ``round`` rounds halves to even)."""
  return int(np.floor(x + 0.5))


def _largest_remainder(exact: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
  """Integers ``c_k ≤ caps_k`` summing to ``total`` from real targets ``exact_k ≤ caps_k``.

  Largest-remainder (Hamilton) apportionment: every class gets ``floor(exact_k)``; the
  ``total − Σ floor`` units left go one each to the classes with the largest fractional
  parts (ties → lower class index), never to a class already at its cap. A 1e-9 slack
  absorbs float error, so a target of 78.9999999999 counts as 79.
  """
  exact = np.clip(exact, 0.0, caps)
  counts = np.minimum(np.floor(exact + 1e-9), caps).astype(np.int64)
  frac = exact - counts
  short = total - int(counts.sum())
  if short > 0:
    order = np.argsort(-frac, kind="stable")
    order = order[counts[order] < caps[order]]
    if short > order.size:
      raise AssertionError(f"cannot place {short} units: only {order.size} classes below cap")
    counts[order[:short]] += 1
  elif short < 0:       # only through the float slack: take back the smallest fractions
    order = np.argsort(frac, kind="stable")
    order = order[counts[order] > 0]
    counts[order[:-short]] -= 1
  return counts


# ---------------------------------------------------------------------------------------
# DRoP quotas.


def _check_sizes_and_recalls(class_sizes, class_recalls):
  sizes = _host_int_vector("class_sizes", class_sizes, "[C]")
  c = sizes.shape[0]
  if c == 0:
    raise ValueError("class_sizes must have at least one class, got shape (0,)")
  if sizes.sum() == 0:
    raise ValueError("class_sizes must not be all 0")
  recalls = np.asarray(class_recalls, dtype=np.float64)
  checks.check_shape("class_recalls", recalls, (c,), f"[C={c}] (C from class_sizes)")
  bad = ~((recalls >= 0.0) & (recalls <= 1.0))         # NaN is bad too
  if bad.any():
    k = int(np.argmax(bad))
    raise ValueError(f"class_recalls must be in [0, 1], got {recalls[k]} for class {k}")
  return sizes, recalls


def smoothed_recalls(correct, count, prior: float = 0.0) -> np.ndarray:
  """Per-class recall ``(correct + a) / (count + 2a)`` with a Beta(a, a) prior → ``float64[C]``.

  ``a = 0`` is the raw recall of the DRoP slides (0 for a class without validation
  example). With a small validation split an easy class is often measured at recall
  exactly 1, which gives it a DRoP quota of 0 and removes it from the training set (seen on
  the default config: 2 of 3 seeds lost a class); ``a > 0`` (Laplace for a = 1) pulls
  every recall towards 1/2 by ``a`` pseudo-examples each way, keeping such classes small
  but present. E.g. 10 of 10 correct: 1.0 at a = 0, 11/12 = 0.916667 at a = 1.
  Host-side NumPy.

  Args:
    correct: ``[C]`` correct validation predictions per class (summed over query models).
    count: ``[C]`` validation examples per class (same sum), ``correct ≤ count``.
    prior: ``a ≥ 0``, finite.

  Returns:
    ``[C]`` in ``[0, 1]``, in the inputs' float dtype (``float64`` for integer counts).
  """
  correct, count = np.asarray(correct), np.asarray(count)   # float32 sums stay float32
  checks.check_shape("correct", correct, (None,), "[C]")
  checks.check_shape("count", count, correct.shape, f"[C={correct.shape[0]}] (from correct)")
  a = checks.concrete_value(prior)
  if a is None or not (np.isfinite(a) and a >= 0):
    raise ValueError(f"prior must be a finite number >= 0, got {prior!r}")
  bad = np.flatnonzero(~((correct >= 0) & (correct <= count)))
  if bad.size:
    c = bad[0]
    raise ValueError(f"correct must be in [0, count], got {correct[c]:g} of {count[c]:g} "
                     f"for class {c}")
  if not np.issubdtype(np.result_type(correct, count), np.floating):
    correct, count = correct.astype(np.float64), count.astype(np.float64)
  return (correct + a) / np.maximum(count + 2 * a, 1e-12)


def _prior_recalls(class_recalls, recall_prior: float, recall_counts) -> np.ndarray:
  """``class_recalls`` smoothed by :func:`smoothed_recalls` when ``recall_prior > 0``."""
  if checks.concrete_value(recall_prior) == 0.0:
    return class_recalls
  if recall_counts is None:
    raise ValueError("recall_counts must be given ([C] validation examples behind each "
                     f"recall) when recall_prior > 0, got recall_prior={recall_prior!r}")
  counts = np.asarray(recall_counts, np.float64)
  recalls = np.asarray(class_recalls, np.float64)
  checks.check_shape("recall_counts", counts, np.shape(recalls),
                     f"[C={np.shape(recalls)[0]}] (C from class_recalls)")
  return smoothed_recalls(np.clip(recalls * counts, 0.0, counts), counts, recall_prior)


def drop_class_densities(class_sizes, class_recalls, density: float, *,
                         recall_prior: float = 0.0, recall_counts=None) -> np.ndarray:
  """DRoP per-class kept fractions ``d_k = min(1, λ (1 − r_k))`` (water-filled quotas).

  DRoP (Vysogorets et al., 2025, Algorithm 1) keeps class k with density ``∝ (1 − r_k)``,
  the error rate of a query model trained on the full data, scaled so the kept total is
  ``density · N`` with ``N = Σ_k N_k``. A class whose share would exceed its size keeps
  all of its examples (``d_k = 1``) and the surplus is redistributed over the unsaturated
  classes ``∝ (1 − r_k)``, repeatedly. The result is the water-filling solution

      d_k = min(1, λ (1 − r_k)),   Σ_k N_k d_k = density · N,

  found exactly in at most C rounds (λ only grows as classes saturate, so every class that
  saturates at the current λ stays saturated).

  Degenerate cases:
    * A class with ``r_k = 1`` (no error) gets ``d_k = 0`` unless every class with
      ``r_j < 1`` is fully kept and examples are still missing; the remainder is then
      spread over the ``r = 1`` classes with equal density (uniformly).
    * All recalls equal to 1 (no signal): every class gets ``d_k = density``, uniform
      (i.e. stratified random) pruning. All recalls equal to any common value gives the
      same result.
    * A class of size 0 gets ``d_k = 0``.

  Host-side NumPy (a tiny computation done once before training); not traceable.

  Args:
    class_sizes: ``int[C]`` number of training examples per class, ``N_k ≥ 0``, not all 0.
    class_recalls: ``float[C]`` validation recall (per-class accuracy) of the query model,
      each in ``[0, 1]`` (e.g. ``metrics.per_class_accuracy``).
    density: fraction of the whole dataset to keep, in ``(0, 1]``.
    recall_prior: ``a ≥ 0``: use :func:`smoothed_recalls` ``(r_k n_k + a) / (n_k + 2a)``
      instead of ``r_k`` (0: the raw recalls, the default). The smoothing decides whether
      an easy class measured at recall 1 on a small validation split keeps any example.
    recall_counts: ``[C]`` validation examples ``n_k`` behind each recall; required when
      ``recall_prior > 0``.

  Returns:
    ``float64[C]`` per-class kept fractions in ``[0, 1]`` with
    ``Σ_k d_k N_k = density · N`` (up to float rounding).

  Raises:
    ValueError: on a bad shape, size, recall or density.
  """
  sizes, recalls = _check_sizes_and_recalls(class_sizes, class_recalls)
  recalls = _prior_recalls(recalls, recall_prior, recall_counts)
  d = _host_density(density)
  n = sizes.astype(np.float64)
  target = d * n.sum()
  dens = np.zeros_like(n)
  open_ = n > 0                              # classes that may still receive examples
  error = 1.0 - recalls
  # Phase 1 water-fills ∝ (1 − r); phase 2 (only if phase 1 saturates every class with an
  # error and examples are still missing) fills the r = 1 classes with equal density.
  for weight in (error, np.ones_like(error)):
    while True:
      active = open_ & (weight > 0)
      mass = float(np.sum(n[active] * weight[active]))
      if not active.any() or mass <= 0.0:
        break
      remaining = target - float(np.sum(n[dens >= 1.0]))
      lam = remaining / mass
      prop = lam * weight
      full = active & (prop >= 1.0)
      if not full.any():
        dens[active] = prop[active]
        open_ &= ~active
        break
      dens[full] = 1.0
      open_ &= ~full
    if not open_.any() or target - float(np.sum(n * dens)) <= 1e-9 * target:
      break
  return np.clip(dens, 0.0, 1.0)


def drop_class_counts(class_sizes, class_recalls, density: float, *,
                      recall_prior: float = 0.0, recall_counts=None) -> np.ndarray:
  """DRoP quotas as integer per-class counts summing exactly to ``round(density · N)``.

  The real targets ``d_k N_k`` of :func:`drop_class_densities` are rounded by the
  largest-remainder method: each class gets ``floor(d_k N_k)`` and the units still missing
  to reach ``round(density · N)`` (halves rounded up) go one each to the classes with the
  largest fractional parts (ties → lower class index). No count exceeds its class size, and
  a class with a zero target never gets a unit while another class has a positive
  fractional part.

  Host-side NumPy; not traceable.

  Args:
    class_sizes: ``int[C]``.
    class_recalls: ``float[C]`` in ``[0, 1]``.
    density: in ``(0, 1]``.
    recall_prior, recall_counts: as :func:`drop_class_densities`.

  Returns:
    ``int64[C]`` with ``0 ≤ counts ≤ class_sizes`` and
    ``counts.sum() == floor(density · N + 0.5)``.
  """
  dens = drop_class_densities(class_sizes, class_recalls, density,
                              recall_prior=recall_prior, recall_counts=recall_counts)
  sizes = _host_int_vector("class_sizes", class_sizes, "[C]")
  total = _round_half_up(float(density) * int(sizes.sum()))
  return _largest_remainder(dens * sizes, total, sizes)


def proportional_class_counts(class_sizes, density: float) -> np.ndarray:
  """Same density in every class: ``≈ density · N_k`` per class, summing to round(density·N).

  The stratified random-pruning baseline (and the per-class budget of
  :func:`prune_by_score`): targets ``density · N_k``, rounded by largest remainder (see
  :func:`drop_class_counts`). Host-side NumPy.

  Args:
    class_sizes: ``int[C]``.
    density: in ``(0, 1]``.

  Returns:
    ``int64[C]`` summing to ``floor(density · N + 0.5)``.
  """
  sizes = _host_int_vector("class_sizes", class_sizes, "[C]")
  d = _host_density(density)
  total = _round_half_up(d * int(sizes.sum()))
  return _largest_remainder(d * sizes, total, sizes)


def _check_labels(labels, num_classes: Optional[int] = None) -> np.ndarray:
  labels = _host_int_vector("labels", labels, "[N]")
  if num_classes is not None and labels.size and labels.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}) (C from class_counts), "
                     f"got {labels.max()}")
  return labels


def random_class_prune(rng: jax.Array, labels, class_counts) -> np.ndarray:
  """Random in-class pruning: ``class_counts[c]`` examples of each class c, uniformly.

  Each class keeps a uniformly random subset of the requested size (without
  replacement). The randomness comes from one ``jax.random.permutation(rng, N)``, so the
  result is a deterministic function of the key; the grouping by class is host-side NumPy.

  Args:
    rng: a JAX PRNG key.
    labels: ``int[N]`` class of each example, in ``[0, C)``.
    class_counts: ``int[C]`` examples to keep per class, ``≤`` the class sizes (e.g.
      :func:`drop_class_counts`).

  Returns:
    ``int64[Σ class_counts]`` indices into ``labels``, sorted ascending, no duplicates.

  Raises:
    ValueError: on a bad shape, a label outside ``[0, C)`` or a count above its class size.
  """
  counts = _host_int_vector("class_counts", class_counts, "[C]")
  c = counts.shape[0]
  labels = _check_labels(labels, c)
  sizes = np.bincount(labels, minlength=c)
  over = counts > sizes
  if over.any():
    k = int(np.argmax(over))
    raise ValueError(f"class_counts must not exceed the class sizes, got {counts[k]} for "
                     f"class {k} of size {sizes[k]}")
  perm = np.asarray(jax.random.permutation(rng, labels.shape[0]))
  grouped = perm[np.argsort(labels[perm], kind="stable")]   # by class, random inside
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  kept = [grouped[s:s + k] for s, k in zip(starts, counts)]
  return np.sort(np.concatenate(kept)).astype(np.int64)


def drop_prune(rng: jax.Array, labels, class_recalls, density: float, *,
               recall_prior: float = 0.0, recall_counts=None) -> np.ndarray:
  """Random + DRoP: DRoP quotas from recalls, then random pruning inside each class.

  ``random_class_prune(rng, labels, drop_class_counts(sizes, class_recalls, density))``
  with ``sizes`` counted from ``labels`` (``C = len(class_recalls)``). Host-side NumPy.

  Args:
    rng: a JAX PRNG key.
    labels: ``int[N]`` in ``[0, C)``.
    class_recalls: ``float[C]`` in ``[0, 1]`` (query model's validation recalls).
    density: in ``(0, 1]``.
    recall_prior, recall_counts: as :func:`drop_class_densities`.

  Returns:
    ``int64[round(density · N)]`` sorted kept indices.
  """
  checks.check_shape("class_recalls", class_recalls, (None,), "[C]")
  c = np.shape(class_recalls)[0]
  labels = _check_labels(labels, c)
  sizes = np.bincount(labels, minlength=c)
  return random_class_prune(rng, labels, drop_class_counts(
      sizes, class_recalls, density, recall_prior=recall_prior, recall_counts=recall_counts))


# ---------------------------------------------------------------------------------------
# Score-based pruning (host side).


def prune_by_score(scores, labels, density: float, keep: str = "hardest",
                   per_class: bool = False) -> np.ndarray:
  """Keeps the ``density`` fraction of examples with the highest (or lowest) scores.

  Globally: the ``round(density · N)`` examples with the largest scores (``"hardest"``) or
  the smallest (``"easiest"``). Per class: every class c keeps its own top
  ``≈ density · N_c`` with the counts of :func:`proportional_class_counts` (largest
  remainder), so the total is still ``round(density · N)``. Ties go to the lower index;
  ``+inf`` (never-learned forgetting scores) sorts above every finite score. Host-side
  NumPy.

  Args:
    scores: ``float[N]``, no NaN.
    labels: ``int[N]`` (only read when ``per_class``; may be ``None`` otherwise).
    density: in ``(0, 1]``.
    keep: ``"hardest"`` (largest scores) or ``"easiest"`` (smallest).
    per_class: the same density in every class instead of one global cut.

  Returns:
    ``int64[round(density · N)]`` kept indices, sorted ascending.
  """
  scores = np.asarray(scores)
  checks.check_shape("scores", scores, (None,), "[N]")
  n = scores.shape[0]
  if keep not in ("hardest", "easiest"):
    raise ValueError(f"keep must be 'hardest' or 'easiest', got {keep!r}")
  if np.isnan(scores).any():
    k = int(np.argmax(np.isnan(scores)))
    raise ValueError(f"scores must not be NaN, got NaN at position {k}")
  d = _host_density(density)
  order = np.argsort(-scores if keep == "hardest" else scores, kind="stable")
  if not per_class:
    return np.sort(order[:_round_half_up(d * n)]).astype(np.int64)
  if labels is None:
    raise ValueError("labels must be given when per_class=True")
  labels = _check_labels(labels)
  checks.check_shape("labels", labels, (n,), f"[N={n}] (N from scores)")
  sizes = np.bincount(labels)
  counts = proportional_class_counts(sizes, d)
  grouped = order[np.argsort(labels[order], kind="stable")]   # by class, best first
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  kept = [grouped[s:s + k] for s, k in zip(starts, counts)]
  return np.sort(np.concatenate(kept)).astype(np.int64)

"""Group DRO over classes (Sagawa et al., 2020, online algorithm), a REDUCR baseline.

The groups are the C classes. Group DRO keeps a distribution ``q`` over them, moves it
towards the classes with high training loss by exponentiated-gradient ascent, and trains
the model on the ``q``-weighted loss (Sagawa, Koh, Hashimoto & Liang, "Distributionally
Robust Neural Networks for Group Shifts", ICLR 2020, Algorithm 1, with the mini-batch
form of their released code):

    q_1      = 1/C · 1
    L_c      = mean_{i ∈ batch, y_i = c} ℓ_i                (per-class mean training loss)
    q'_c     = q_c · exp(η · L_c)    for classes in the batch; q'_c = q_c otherwise
    q_{t+1}  = q' / Σ_c q'_c
    loss     = Σ_c q_{t+1,c} · L_c                           (q held constant)

As in :mod:`reducr_jax.core.mwu` the state is ``log q``, updated as
``log_softmax(log_q + η · L · present)``, so it never under/overflows. A class absent
from the batch gets the factor ``exp(0) = 1`` (only the renormalisation moves it), and
contributes 0 to the loss. Sagawa et al. update ``q`` first and use the new ``q`` in the
same step's loss: :func:`robust_loss` does both in that order. (Their optional
generalisation adjustment ``C/sqrt(n_g)`` is not included; add it to ``L`` before
:func:`ascent_step` if wanted.)

:func:`example_weights` gives the same loss as per-example weights, ``w_i = q_{y_i} /
n_{y_i}`` with ``Σ_i w_i ℓ_i = Σ_c q_c L_c``, so a trainer can use one weighted-loss
interface (:func:`reducr_jax.core.meta_reweight.weighted_loss`) for Group DRO and
meta-reweighting alike.

Shapes: ``n`` examples in the batch, ``C`` classes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks
from reducr_jax.core import metrics
from reducr_jax.core import mwu


def _check_batch(per_example_losses, labels, mask):
  checks.check_shape("per_example_losses", per_example_losses, (None,), "[n]")
  n = np.shape(per_example_losses)[0]
  checks.check_shape("labels", labels, (n,), f"[n={n}] (n from per_example_losses)")
  if mask is not None:
    checks.check_shape("mask", mask, (n,), f"[n={n}] (n from per_example_losses)")


def per_class_losses(per_example_losses: jax.Array, labels: jax.Array, num_classes: int,
                     mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Per-class mean losses ``L_c`` over a batch, and which classes are present.

  Args:
    per_example_losses: ``[n]``.
    labels: ``int[n]`` in ``[0, C)``.
    num_classes: C.
    mask: optional ``bool[n]``; False rows (padding) are ignored, even if NaN.

  Returns:
    ``(L [C], present bool[C])``; ``L_c = 0`` for a class without (unmasked) examples.
  """
  _check_batch(per_example_losses, labels, mask)
  stats = metrics.class_sums(per_example_losses, labels, num_classes, mask)
  return metrics.class_means(stats, 0.0), stats.counts > 0


def ascent_step(log_q: jax.Array, class_losses: jax.Array, present: jax.Array,
                eta) -> jax.Array:
  """One exponentiated-gradient ascent step: ``log_softmax(log_q + η · L · present)``.

  :func:`reducr_jax.core.mwu.update` with ``α = −L · present`` (Hedge descends on ``α``,
  Group DRO ascends on the class losses); the state is MWU's, so :func:`mwu.init
  <reducr_jax.core.mwu.init>` and :func:`mwu.weights <reducr_jax.core.mwu.weights>` start
  and read it.

  Args:
    log_q: ``[C]`` current log-weights, normalised (``logsumexp = 0``).
    class_losses: ``[C]`` per-class mean losses ``L`` (:func:`per_class_losses`).
    present: ``bool[C]``, classes with at least one example in the batch; the others get
      no multiplicative factor (their ``L`` is ignored, even if NaN).
    eta: step size η > 0.

  Returns:
    ``[C]`` new log-weights, normalised (``logsumexp == 0``).
  """
  checks.check_shape("log_q", log_q, (None,), "[C]")
  c = np.shape(log_q)[0]
  checks.check_shape("class_losses", class_losses, (c,), f"[C={c}] (C from log_q)")
  checks.check_shape("present", present, (c,), f"[C={c}] (C from log_q)")
  return mwu.update(log_q, -jnp.where(present.astype(bool), class_losses, 0.0), eta)


def loss(per_example_losses: jax.Array, labels: jax.Array, log_q: jax.Array,
         num_classes: int, mask: Optional[jax.Array] = None) -> jax.Array:
  """Group DRO training loss ``Σ_c q_c · L_c`` with ``q`` held constant → scalar.

  Args:
    per_example_losses: ``[n]`` (differentiable w.r.t. the model).
    labels: ``int[n]``.
    log_q: ``[C]`` log-weights, used as given (``stop_gradient``); pass the updated ones
      to follow Sagawa et al.'s order (or use :func:`robust_loss`).
    num_classes: C.
    mask: optional ``bool[n]``.

  Returns:
    the q-weighted sum of per-class mean losses; absent classes contribute 0.
  """
  checks.check_shape("log_q", log_q, (num_classes,), f"[C={num_classes}] (num_classes)")
  class_losses, _ = per_class_losses(per_example_losses, labels, num_classes, mask)
  return jnp.dot(jax.lax.stop_gradient(mwu.weights(log_q)), class_losses)


def robust_loss(per_example_losses: jax.Array, labels: jax.Array, log_q: jax.Array, eta,
                num_classes: int,
                mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """One Group DRO step in Sagawa et al.'s order: update ``q``, then the loss with it.

  The update sees the losses under ``stop_gradient``; the returned loss is differentiable
  w.r.t. the model through ``per_example_losses`` only.

  Returns:
    ``(loss scalar, new log_q [C])``.
  """
  checks.check_shape("log_q", log_q, (num_classes,), f"[C={num_classes}] (num_classes)")
  class_losses, present = per_class_losses(per_example_losses, labels, num_classes, mask)
  new_log_q = ascent_step(log_q, jax.lax.stop_gradient(class_losses), present, eta)
  return jnp.dot(jax.lax.stop_gradient(mwu.weights(new_log_q)), class_losses), new_log_q


def example_weights(labels: jax.Array, log_q: jax.Array, class_counts: jax.Array,
                    mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-example weights ``w_i = q_{y_i} / n_{y_i}`` with ``Σ_i w_i ℓ_i = Σ_c q_c L_c``.

  Args:
    labels: ``int[n]`` in ``[0, C)`` (checked when concrete: ``class_counts[−1]`` would
      silently read class C−1).
    log_q: ``[C]`` log-weights.
    class_counts: ``[C]`` number of (unmasked) batch examples per class, e.g.
      ``metrics.class_sums(losses, labels, C, mask).counts``.
    mask: optional ``bool[n]``; False rows get weight 0 (they must also be left out of
      ``class_counts``).

  Returns:
    ``[n]`` non-negative weights under ``stop_gradient``; they sum to the total ``q`` of
    the classes present (1 when every class is present).
  """
  checks.check_shape("log_q", log_q, (None,), "[C]")
  c = np.shape(log_q)[0]
  checks.check_shape("class_counts", class_counts, (c,), f"[C={c}] (C from log_q)")
  checks.check_shape("labels", labels, (None,), "[n]")
  n = np.shape(labels)[0]
  if mask is not None:
    checks.check_shape("mask", mask, (n,), f"[n={n}] (n from labels)")
  checks.check_labels("labels", labels, n, c, where=mask)   # −1 would index class C−1
  counts = class_counts[labels]
  w = jnp.where(counts > 0, mwu.weights(log_q)[labels] / jnp.where(counts > 0, counts, 1.0), 0.0)
  if mask is not None:
    w = jnp.where(mask.astype(bool), w, 0.0)
  return jax.lax.stop_gradient(w)

"""REDUCR's class-weighted losses (eq. 8): pure functions of losses, labels and γ.

Expert ``c`` is trained once, on the holdout set, with the class-``c`` examples
up-weighted by ``γ``:

    φ_c = argmin_φ Σ_{(x, y) ∈ D_ho} (1 + γ · 1[y = c]) · L[y | x, φ]                (eq. 8)

(γ = 9 for vision and 4 for text in the paper; the official code's per-example weight is
``1 + γ = 10``). With ``γ = 0`` and a single expert this is RHO-LOSS's irreducible-loss
model trained on all the holdout data.

This module holds the math only (no models, no training loop), so selection rules and
reweighters can import :func:`cross_entropy` without the trainer: the per-example
cross-entropy, the eq.-8 weights, their batch averages (``config.experts.
loss_normalisation``), the multi-head model's losses and the eq.-8 sums stage 1 picks
checkpoints with. The stacked experts are in :mod:`reducr_jax.core.stacked_experts`, their
training step in :mod:`reducr_jax.train.experts_step`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax.core import checks
from reducr_jax.core import groups as groups_lib

# How a batch's γ-weighted losses are averaged (``config.experts.loss_normalisation``).
NORMALISATIONS = ("mean", "weight_sum")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``[..., K], int[...] → [...]``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def class_weights_for(labels: jax.Array, expert_class, gamma) -> jax.Array:
  """Per-example weights ``1 + γ · 1[y = c]`` of eq. 8 → ``[B]``."""
  checks.check_in_range("gamma", gamma, 0.0)
  return 1.0 + gamma * (labels == expert_class).astype(jnp.float32)


def class_weight_matrix(labels: jax.Array, num_experts: int, gamma) -> jax.Array:
  """Eq. 8 weights of every example for every expert: ``W[i, c] = 1 + γ · 1[y_i = c]``.

  Returns:
    ``[B, num_experts]``, column c for expert c.
  """
  checks.check_in_range("gamma", gamma, 0.0)
  return 1.0 + gamma * (labels[:, None] == jnp.arange(num_experts)[None, :]).astype(jnp.float32)


def weighted_average(per_example_loss: jax.Array, weights: jax.Array,
                     normalisation: str = "mean", axis=None) -> jax.Array:
  """Average of ``weights · per_example_loss`` over ``axis`` (all axes when ``None``).

  ``"mean"``: ``Σ_i w_i ℓ_i / n`` (n = the number of terms, this project's original
  loss); ``"weight_sum"``: ``Σ_i w_i ℓ_i / Σ_i w_i`` — PyTorch's
  ``nn.CrossEntropyLoss(weight=…)`` with ``reduction='mean'``, which the official expert
  training uses (``src/models/OneModel.py``). With weights ``1 + γ·1[y = c]`` the two
  differ by the batch-dependent factor ``n / Σ w = 1 / (1 + γ · share of class c)``.

  Args:
    per_example_loss: ``[...]`` losses; weights: same shape (or broadcastable).
    normalisation: ``"mean"`` or ``"weight_sum"``.
    axis: reduction axis (``None``: all).

  Returns:
    the reduced array (scalar for ``axis=None``).
  """
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got "
                     f"{normalisation!r}")
  weighted = weights * per_example_loss
  if normalisation == "mean":
    return jnp.mean(weighted, axis=axis)
  return jnp.sum(weighted, axis=axis) / jnp.sum(jnp.broadcast_to(weights, weighted.shape),
                                                 axis=axis)


def class_weighted_loss(per_example_loss: jax.Array, labels: jax.Array, expert_class,
                        gamma, normalisation: str = "mean") -> jax.Array:
  """Batch estimate of eq. 8 → scalar: ``mean_i (1 + γ · 1[y_i = c]) · ℓ_i``, or with
  ``normalisation="weight_sum"`` ``Σ_i w_i ℓ_i / Σ_i w_i`` (:func:`weighted_average`).

  Args:
    per_example_loss: ``[B]``.
    labels: ``int[B]``.
    expert_class: c, the class the expert is for (int or traced int scalar).
    gamma: γ ≥ 0.
    normalisation: ``"mean"`` | ``"weight_sum"`` (official).
  """
  checks.check_shape("per_example_loss", per_example_loss, (None,), "[B]")
  b = np.shape(per_example_loss)[0]
  checks.check_shape("labels", labels, (b,), f"[B={b}]")
  return weighted_average(per_example_loss, class_weights_for(labels, expert_class, gamma),
                          normalisation)


def multihead_expert_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-head cross-entropy ``[B, C, K], int[B] → [B, C]`` (same interface as the others)."""
  checks.check_shape("logits", logits, (None, None, None), "[B, C, K]")
  b = np.shape(logits)[0]
  checks.check_shape("labels", labels, (b,), f"[B={b}]")
  return cross_entropy(logits, labels[:, None])


def multihead_loss(logits: jax.Array, labels: jax.Array, gamma, group_of=None,
                   normalisation: str = "mean",
                   axis_name: Optional[str] = None) -> jax.Array:
  """Training loss of a :class:`MultiHead`: mean over heads of head c's eq. 8 loss.

  Head ``c`` gets ``mean_i (1 + γ · 1[y_i = c]) · ℓ_{i,c}`` (``"weight_sum"``:
  ``Σ_i w_ic ℓ_ic / Σ_i w_ic``, :func:`weighted_average`); each head's gradient reaches
  only its own weights and the shared trunk.

  Args:
    logits: ``[B, C, K]``; labels: ``int[B]``; gamma: γ ≥ 0.
    group_of: ``None``, or int [K] class → group: head ``g`` (C = G heads) up-weights the
      classes of group g.
    normalisation: ``"mean"`` | ``"weight_sum"``.
    axis_name: data parallel (``"weight_sum"`` only): each head's Σ_i w_ic is ``pmean``-ed
      over the devices, so the ``pmean`` of the devices' losses is the whole batch's
      Σwℓ / Σw, as on one device.

  Returns:
    scalar.
  """
  losses = multihead_expert_losses(logits, labels)                  # [B, C]
  weights = class_weight_matrix(groups_lib.group_labels(labels, group_of), losses.shape[1],
                                gamma)                              # [B, C]
  if normalisation == "mean":      # one mean over [B, C] (= mean over heads of head means)
    return jnp.mean(weights * losses)
  if axis_name is None:
    return jnp.mean(weighted_average(losses, weights, normalisation, axis=0))
  w_sum = jax.lax.pmean(jnp.sum(weights, axis=0), axis_name)        # [C]
  return jnp.mean(jnp.sum(weights * losses, axis=0) / w_sum)


def weighted_loss_sums(table: jax.Array, y: jax.Array, mask: jax.Array, gamma,
                        group_of=None) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e]) table[i, e]`` per column e → ``[E]`` (eq. 8 on val);
  with ``group_of`` (int [C]) ``y_i`` is replaced by its group."""
  w = class_weight_matrix(groups_lib.group_labels(y, group_of), table.shape[1],
                          gamma)
  return jnp.sum(w * table * mask[:, None], axis=0)


def weight_sums(y: jax.Array, mask: jax.Array, num: int, gamma,
                 group_of=None) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e])`` per column e → ``[num]`` (``"weight_sum"``; with
  ``group_of`` ``y_i`` is replaced by its group)."""
  w = class_weight_matrix(groups_lib.group_labels(y, group_of), num, gamma)
  return jnp.sum(w * mask[:, None], axis=0)

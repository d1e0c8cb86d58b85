"""Selection scores: what online batch selection ranks, as pure, jit-able functions.

Shapes: ``B`` is the large batch, ``C`` the number of classes (one amortised
class-irreducible "expert" per class). The rules that turn scores into ``k`` indices are
in :mod:`reducr_jax.core.selection`.

REDUCR (Algorithm 1 of Bankes et al., "REDUCR: Robust Data Downsampling Using Class
Priority Reweighting", line 6) ranks the points of the large batch by

    score_i = Σ_c w_c · max(0, L[y_i|x_i, θ_t] − L[y_i|x_i, φ_c])          (eq. 7, A.4 eq. 9)

where ``L[y|x, θ_t]`` is the target model's loss ("model loss"), ``L[y|x, φ_c]`` the loss
of the class-``c`` irreducible-loss model ("expert loss") and ``w`` the class weights kept
by :mod:`reducr_jax.core.mwu` (:func:`reducr_scores`). The class-holdout loss does not
depend on the candidate point, so it only enters the weight update (App. A.4).

Ablations (REDUCR Fig. 4a) are arguments of :func:`reducible_losses`: ``clip=False``
(no clipping), ``use_expert=False`` (R = model loss), ``use_model_loss=False``
(R = −expert loss). The no-holdout ablation is ``use_holdout`` in
:func:`reducr_jax.core.mwu.class_objective`.

Baselines' scores: RHO-LOSS (Mindermann et al., 2022), ``model_loss − irreducible_loss``
of one model trained on all the holdout data (:func:`rho_loss_scores`); the official REDUCR
code's max-min payoff (:func:`payoff_scores`); the gradient-norm bound of Katharopoulos &
Fleuret (2018) and the predictive entropy (RHO-LOSS's baselines).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks


def _check_model_and_expert(model_loss, expert_losses):
  checks.check_shape("model_loss", model_loss, (None,), "[B]")
  b = np.shape(model_loss)[0]
  checks.check_shape("expert_losses", expert_losses, (b, None), f"[B={b}, C]")
  checks.check_float("model_loss", model_loss)
  checks.check_float("expert_losses", expert_losses)


def reducible_losses(model_loss: jax.Array, expert_losses: jax.Array, *,
                     clip: bool = True, use_expert: bool = True,
                     use_model_loss: bool = True) -> jax.Array:
  """Per-class reducible loss ``R[i, c]`` with REDUCR's ablation switches.

  Args:
    model_loss: ``[B]`` target-model loss of each point.
    expert_losses: ``[B, C]`` loss of each point under each class-irreducible model.
    clip: clip ``R`` below at 0 (Algorithm 1). ``clip=False`` is the "no clip" ablation.
      ``clip``, ``use_expert`` and ``use_model_loss`` are static Python bools (a traced
      one is a one-line ``ValueError``); the losses must be float arrays.
    use_expert: keep the expert term; ``False`` gives ``R = model_loss`` for every class
      (the "no class-irreducible loss" ablation).
    use_model_loss: keep the model-loss term; ``False`` gives ``R = −expert_loss`` (the
      "no model loss" ablation). It is never positive, so with ``clip=True`` every ``R``
      is exactly ``0`` — the official code's behaviour (``robust_reducible_loss_selection``
      with ``model_loss=False``, ``clipped=True``, ``src/curricula/selection_methods.py``):
      all scores tie and :func:`reducr_jax.core.selection.top_k` takes the first k points of the large batch (lowest
      indices). The official ``torch.argsort(descending=True)`` is not stable: on ties it
      returns a fixed, implementation-defined set of positions (torch 2.13 CPU, B = 320:
      210, 219, 218, …; CUDA differs again). The large batch is a uniform random draw, so
      any fixed set of k positions — ours or torch's — is a uniform random subset of it:
      the same selection in distribution, not index for index. Exact ``+0.0`` here (not
      ``max(−0.0, 0)``) so an expert loss of exactly 0 cannot reorder the tie. ``clip=False`` keeps the
      signal: ``R = −expert_loss`` (the points the experts find easiest).

  Returns:
    ``[B, C]`` float array.

  Raises:
    ValueError: on shape mismatches or an ablation combination that leaves no signal.
  """
  _check_model_and_expert(model_loss, expert_losses)
  clip = checks.check_static_bool("clip", clip)
  use_expert = checks.check_static_bool("use_expert", use_expert)
  use_model_loss = checks.check_static_bool("use_model_loss", use_model_loss)
  if not (use_expert or use_model_loss):
    raise ValueError("use_expert and use_model_loss cannot both be False: the score would be 0")
  if clip and not use_model_loss:
    return jnp.zeros(jnp.shape(expert_losses), jnp.result_type(expert_losses, jnp.float32))
  if use_model_loss and use_expert:
    r = model_loss[:, None] - expert_losses
  elif use_model_loss:
    r = jnp.broadcast_to(model_loss[:, None], expert_losses.shape)
  else:
    r = -expert_losses
  return jnp.maximum(r, 0.0) if clip else r


def excess_losses(model_loss: jax.Array, expert_losses: jax.Array,
                  clip: bool = True) -> jax.Array:
  """Excess loss ``model_loss[:, None] − expert_losses``, clipped below at 0 if ``clip``.

  Args:
    model_loss: ``[B]``.
    expert_losses: ``[B, C]``.
    clip: apply ``max(0, ·)`` (Algorithm 1, line 6).

  Returns:
    ``[B, C]``.
  """
  return reducible_losses(model_loss, expert_losses, clip=clip)


def weighted_scores(reducible: jax.Array, class_weights: jax.Array) -> jax.Array:
  """``Σ_c w_c · R[:, c]`` for a precomputed ``[B, C]`` reducible-loss matrix → ``[B]``.

  Both must be float arrays (bool weights are a one-line ``ValueError``).
  ``class_weights`` must be >= 0 (a negative weight would rank points *down* for the
  excess loss of its class): checked when they are concrete, not when traced (inside a
  jitted function; the MWU weights the selectors pass are a softmax, >= 0 by construction).
  """
  checks.check_shape("reducible", reducible, (None, None), "[B, C]")
  c = np.shape(reducible)[1]
  checks.check_shape("class_weights", class_weights, (c,), f"[C={c}] (C from the losses)")
  checks.check_float("reducible", reducible)
  checks.check_float("class_weights", class_weights)
  checks.check_non_negative("class_weights", class_weights)
  return reducible @ class_weights


def reducr_scores(model_loss: jax.Array, expert_losses: jax.Array,
                  class_weights: jax.Array, clip: bool = True) -> jax.Array:
  """REDUCR selection score ``Σ_c w_c · max(0, model_loss − expert_losses[:, c])``.

  Paper eq. 7 / Algorithm 1 line 6 (the class-holdout term is constant in the candidate
  and is left out, App. A.4).

  Args:
    model_loss: ``[B]`` target-model loss.
    expert_losses: ``[B, C]`` class-irreducible losses.
    class_weights: ``[C]`` weights on the simplex (``mwu.weights(log_w)``).
    clip: clip the excess loss at 0.

  Returns:
    ``[B]`` scores; select the top k.
  """
  return weighted_scores(excess_losses(model_loss, expert_losses, clip), class_weights)


def rho_loss_scores(model_loss: jax.Array, irreducible_loss: jax.Array) -> jax.Array:
  """RHO-LOSS reducible holdout loss ``model_loss − irreducible_loss`` (Mindermann et al.).

  Args:
    model_loss: ``[B]`` target-model loss.
    irreducible_loss: ``[B]`` loss under one model trained on all the holdout data.

  Returns:
    ``[B]`` scores; select the top k.
  """
  checks.check_shape("model_loss", model_loss, (None,), "[B]")
  b = np.shape(model_loss)[0]
  checks.check_shape("irreducible_loss", irreducible_loss, (b,), f"[B={b}]")
  checks.check_float("model_loss", model_loss)
  checks.check_float("irreducible_loss", irreducible_loss)
  return model_loss - irreducible_loss


def payoff_scores(model_loss: jax.Array, expert_losses: jax.Array,
                  class_holdout_loss: jax.Array) -> jax.Array:
  """Max-min "payoff" score ``min_c (model_loss − expert_losses[:, c] − h_c)`` → ``[B]``.

  The official REDUCR code's ``robust_payoff_reducible_loss_selection``: the unclipped
  excess loss minus the class-holdout loss, minimised over classes, no class weights; the
  k points with the largest minimum are selected (:func:`reducr_jax.core.selection.top_k`).

  Args:
    model_loss: ``[B]``; expert_losses: ``[B, C]``; class_holdout_loss: ``[C]``.
  """
  _check_model_and_expert(model_loss, expert_losses)
  c = np.shape(expert_losses)[1]
  checks.check_shape("class_holdout_loss", class_holdout_loss, (c,), f"[C={c}]")
  checks.check_float("class_holdout_loss", class_holdout_loss)
  return jnp.min(model_loss[:, None] - expert_losses - class_holdout_loss[None, :], axis=1)


def grad_norm_upper_bound(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``‖softmax(logits) − onehot(y)‖₂`` per point → ``[B]``.

  The upper bound (up to a per-batch constant) on the norm of the loss gradient used for
  importance sampling by Katharopoulos & Fleuret (2018), a baseline of RHO-LOSS.

  Args:
    logits: ``[B, C]``; labels: ``int[B]``.
  """
  checks.check_shape("logits", logits, (None, None), "[B, C]")
  b, c = np.shape(logits)
  checks.check_shape("labels", labels, (b,), f"[B={b}]")
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.linalg.norm(probs - jax.nn.one_hot(labels, c, dtype=jnp.float32), axis=-1)


def predictive_entropy(logits: jax.Array) -> jax.Array:
  """Entropy ``−Σ_c p_c log p_c`` of the predictive distribution per point → ``[B]``."""
  checks.check_shape("logits", logits, (None, None), "[B, C]")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

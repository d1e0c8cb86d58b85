"""Online batch selection: selection scores and rules as pure, jit-able functions.

Shapes: ``B`` is the large batch, ``k`` the number of points selected from it, ``C`` the
number of classes (one amortised class-irreducible "expert" per class).

REDUCR (Algorithm 1 of Bankes et al., "REDUCR: Robust Data Downsampling Using Class
Priority Reweighting", line 6) selects the ``k`` points of the large batch with the largest

    score_i = Σ_c w_c · max(0, L[y_i|x_i, θ_t] − L[y_i|x_i, φ_c])          (eq. 7, A.4 eq. 9)

where ``L[y|x, θ_t]`` is the target model's loss ("model loss"), ``L[y|x, φ_c]`` the loss
of the class-``c`` irreducible-loss model ("expert loss") and ``w`` the class weights kept
by :mod:`reducr_jax.mwu`. The class-holdout loss does not depend on the candidate point, so
it only enters the weight update (App. A.4).

Baselines:
  * RHO-LOSS (Mindermann et al., 2022): ``model_loss − irreducible_loss`` of one model
    trained on all the holdout data, top-k.
  * Train loss (Loshchilov & Hutter, 2016): rank-based sampling, the i-th highest loss
    drawn with probability ``∝ exp(−i · log(s) / B)``, s = 100 (REDUCR App. A.5, eq. 10).
  * Uniform: k of the B points without replacement.

Ablations (REDUCR Fig. 4a) are arguments of :func:`reducible_losses`: ``clip=False``
(no clipping), ``use_expert=False`` (R = model loss), ``use_model_loss=False``
(R = −expert loss). The no-holdout ablation is ``use_holdout`` in
:func:`reducr_jax.mwu.class_objective`.

Beyond the reference implementations, :func:`soft_top_k` samples k points without
replacement with probability ∝ exp(score/τ) (Gumbel top-k), the soft selection that REDUCR
App. A.9.3 suggests; τ → 0 recovers :func:`top_k`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax import checks

#: Loshchilov & Hutter's selection pressure used by REDUCR's TRAIN LOSS baseline.
DEFAULT_SELECTION_PRESSURE = 100.0


def _check_model_and_expert(model_loss, expert_losses):
  checks.check_shape("model_loss", model_loss, (None,), "[B]")
  b = np.shape(model_loss)[0]
  checks.check_shape("expert_losses", expert_losses, (b, None), f"[B={b}, C]")


def reducible_losses(model_loss: jax.Array, expert_losses: jax.Array, *,
                     clip: bool = True, use_expert: bool = True,
                     use_model_loss: bool = True) -> jax.Array:
  """Per-class reducible loss ``R[i, c]`` with REDUCR's ablation switches.

  Args:
    model_loss: ``[B]`` target-model loss of each point.
    expert_losses: ``[B, C]`` loss of each point under each class-irreducible model.
    clip: clip ``R`` below at 0 (Algorithm 1). ``clip=False`` is the "no clip" ablation.
    use_expert: keep the expert term; ``False`` gives ``R = model_loss`` for every class
      (the "no class-irreducible loss" ablation).
    use_model_loss: keep the model-loss term; ``False`` gives ``R = −expert_loss`` (the
      "no model loss" ablation). It is never positive, so clipping would zero every score:
      this ablation requires ``clip=False``.

  Returns:
    ``[B, C]`` float array.

  Raises:
    ValueError: on shape mismatches or an ablation combination that leaves no signal.
  """
  _check_model_and_expert(model_loss, expert_losses)
  if not (use_expert or use_model_loss):
    raise ValueError("use_expert and use_model_loss cannot both be False: the score would be 0")
  if clip and not use_model_loss:
    raise ValueError("clip must be False when use_model_loss=False: R = -expert_loss <= 0 "
                     "is clipped to 0 for every point")
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
  """``Σ_c w_c · R[:, c]`` for a precomputed ``[B, C]`` reducible-loss matrix → ``[B]``."""
  checks.check_shape("reducible", reducible, (None, None), "[B, C]")
  c = np.shape(reducible)[1]
  checks.check_shape("class_weights", class_weights, (c,), f"[C={c}] (C from the losses)")
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
  return model_loss - irreducible_loss


def top_k(scores: jax.Array, k: int) -> jax.Array:
  """Indices of the ``k`` largest scores, largest first.

  On CPU a partial selection (:func:`_top_k_host`: ``np.partition`` finds the k-th largest
  key, one pass keeps the k above it, only those k are sorted) runs as a host callback:
  XLA:CPU's ``lax.top_k`` fully sorts (at B = 32 768, k = 10 % about 2.3× ``torch.topk``,
  ``benchmarks/README.md``). Elsewhere ``lax.top_k``. Both give the same indices.

  NaN scores are never selected while k non-NaN scores exist (they rank below ``-inf``);
  scores are ordered by value with ``-0.0`` below ``+0.0``.

  Args:
    scores: ``[B]``.
    k: static Python int in ``[1, B]``.

  Returns:
    ``int32[k]`` indices into ``scores``; ties resolved towards the lower index.
  """
  checks.check_shape("scores", scores, (None,), "[B]")
  k = checks.check_k(k, np.shape(scores)[0])
  key = _monotone_key(scores)

  def on_cpu(key):
    return jax.pure_callback(lambda a: _top_k_host(np.asarray(a), k),
                             jax.ShapeDtypeStruct((k,), jnp.int32), key,
                             vmap_method="sequential")

  def elsewhere(key):      # lax.top_k on the order-preserving signed view of the key
    signed = jax.lax.bitcast_convert_type(key ^ jnp.uint32(1 << 31), jnp.int32)
    return jax.lax.top_k(signed, k)[1].astype(jnp.int32)

  return jax.lax.platform_dependent(key, cpu=on_cpu, default=elsewhere)


def _monotone_key(scores: jax.Array) -> jax.Array:
  """``uint32[B]`` keys ordered as the float32 scores (NaN → 0, below every number)."""
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
  key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))
  return jnp.where(jnp.isnan(scores), jnp.uint32(0), key)


def _top_k_host(key: np.ndarray, k: int) -> np.ndarray:
  """``uint32[B]`` keys → ``int32[k]`` indices of the k largest, largest first, ties to
  the lower index: the k-th largest key by ``np.partition`` (introselect), then a sort of
  the k kept ``(key desc, index asc)`` pairs packed into one ``uint64``."""
  n = key.shape[0]
  kth = np.partition(key, n - k)[n - k]
  above = np.flatnonzero(key > kth)
  at = np.flatnonzero(key == kth)[:k - above.size]
  sel = np.concatenate([above, at])
  packed = (np.uint64(0xFFFFFFFF) - key[sel].astype(np.uint64)) << np.uint64(32)
  return (np.sort(packed | sel.astype(np.uint64)) & np.uint64(0xFFFFFFFF)).astype(np.int32)


def gumbel_top_k(rng: jax.Array, logits: jax.Array, k: int) -> jax.Array:
  """Samples ``k`` distinct indices with probability ∝ ``exp(logits)`` (Gumbel top-k).

  Adding i.i.d. Gumbel(0, 1) noise to ``logits`` and taking the top k draws k items
  without replacement, each successive draw ∝ ``exp(logits)`` over the items left
  (Kool et al., 2019, "Stochastic Beams and Where to Find Them").

  Args:
    rng: a PRNG key.
    logits: ``[B]`` unnormalised log-probabilities (``-inf`` never drawn unless needed).
    k: static int in ``[1, B]``.

  Returns:
    ``int32[k]``.
  """
  checks.check_shape("logits", logits, (None,), "[B]")
  k = checks.check_k(k, np.shape(logits)[0])
  noise = jax.random.gumbel(rng, logits.shape, dtype=jnp.result_type(logits, jnp.float32))
  return top_k(logits + noise, k)


def soft_top_k(rng: jax.Array, scores: jax.Array, k: int,
               temperature: float) -> jax.Array:
  """Soft selection: k points without replacement, each draw ∝ ``exp(score / τ)``.

  The soft alternative to top-k suggested by REDUCR App. A.9.3. ``temperature == 0``
  (a static Python number) returns exactly :func:`top_k`; as τ → 0 the sample converges to
  the top k.

  Args:
    rng: a PRNG key.
    scores: ``[B]``.
    k: static int in ``[1, B]``.
    temperature: τ ≥ 0.

  Returns:
    ``int32[k]``.
  """
  checks.check_in_range("temperature", temperature, 0.0)
  if checks.concrete_value(temperature) == 0.0:
    return top_k(scores, k)
  return gumbel_top_k(rng, scores / temperature, k)


def train_loss_logits(model_loss: jax.Array,
                      selection_pressure: float = DEFAULT_SELECTION_PRESSURE) -> jax.Array:
  """Log-probabilities of Loshchilov & Hutter's rank-based selection (REDUCR eq. 10).

  The point with the i-th highest loss (i = 0 for the highest) gets
  ``log p_i = −i · log(s) / B`` (unnormalised): the highest-loss point is
  ``s^((B−1)/B) ≈ s`` times as likely to be drawn as the lowest-loss one.

  Args:
    model_loss: ``[B]``.
    selection_pressure: ``s > 1`` (paper: 100).

  Returns:
    ``[B]`` unnormalised log-probabilities, aligned with ``model_loss``.
  """
  checks.check_shape("model_loss", model_loss, (None,), "[B]")
  checks.check_in_range("selection_pressure", selection_pressure, 1.0, low_inclusive=False)
  b = np.shape(model_loss)[0]
  order = jnp.argsort(-model_loss)                      # order[rank] = index
  rank = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(b, dtype=jnp.int32))
  return -rank.astype(jnp.float32) * (jnp.log(selection_pressure) / b)


def train_loss_select(rng: jax.Array, model_loss: jax.Array, k: int,
                      selection_pressure: float = DEFAULT_SELECTION_PRESSURE) -> jax.Array:
  """TRAIN LOSS baseline: k points without replacement by loss rank (Loshchilov & Hutter).

  Args:
    rng: a PRNG key.
    model_loss: ``[B]``.
    k: static int in ``[1, B]``.
    selection_pressure: ``s`` (paper: 100).

  Returns:
    ``int32[k]``.
  """
  return gumbel_top_k(rng, train_loss_logits(model_loss, selection_pressure), k)


def uniform_select(rng: jax.Array, batch_size: int, k: int) -> jax.Array:
  """UNIFORM baseline: k of ``batch_size`` indices uniformly without replacement.

  Returns:
    ``int32[k]``.
  """
  k = checks.check_k(k, batch_size)
  return jax.random.permutation(rng, batch_size)[:k].astype(jnp.int32)

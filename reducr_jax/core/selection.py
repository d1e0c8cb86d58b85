"""Online batch selection rules: from scores to the ``k`` indices a step trains on.

Pure, jit-able functions. Shapes: ``B`` is the large batch, ``k`` the number of points
selected from it. The scores these rules rank (REDUCR's eq. 7, RHO-LOSS, …) are in
:mod:`reducr_jax.core.selection_scores`.

  * :func:`top_k`: REDUCR and RHO-LOSS take the k largest scores (Algorithm 1, line 6);
    with ``axis_name`` the k are global over the devices of a ``pmap``
    (:func:`local_mask` tells each device which of its rows were picked).
  * Train loss (Loshchilov & Hutter, 2016): rank-based sampling, the i-th highest loss
    drawn with probability ``∝ exp(−i · log(s) / B)``, s = 100 (REDUCR App. A.5, eq. 10):
    :func:`train_loss_select`.
  * Uniform: k of the B points without replacement (:func:`uniform_select`).
  * The official code's sampling variants: :func:`power_sample`, :func:`softmax_sample`,
    :func:`rank_sample`.

Beyond the reference implementations, :func:`soft_top_k` samples k points without
replacement with probability ∝ exp(score/τ) (Gumbel top-k), the soft selection that REDUCR
App. A.9.3 suggests; τ → 0 recovers :func:`top_k`. :func:`k_for` is the one rule for k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks
from reducr_jax.core import collectives

#: Loshchilov & Hutter's selection pressure used by REDUCR's TRAIN LOSS baseline.
DEFAULT_SELECTION_PRESSURE = 100.0


def local_mask(indices: jax.Array, local_size: int, axis_name) -> jax.Array:
  """Which of this device's ``local_size`` rows a global selection picked → ``bool[b]``.

  ``indices`` are the ``int32[k]`` global indices that :func:`top_k`, :func:`soft_top_k`
  and :func:`gumbel_top_k` return with ``axis_name`` (device d's local row i is global
  row ``d·b + i``); ``axis_name=None`` is one device (d = 0). Summed over devices the
  masks have exactly k True entries (the indices are distinct)."""
  checks.check_shape("indices", indices, (None,), "[k]")
  start = collectives.device_index(axis_name) * local_size
  local = indices - start
  inside = (local >= 0) & (local < local_size)
  hits = jnp.zeros((local_size,), jnp.int32).at[jnp.where(inside, local, local_size)].add(
      1, mode="drop")
  return hits > 0


#: From this large-batch size on, :func:`top_k` on CPU uses the partial host selection;
#: below it ``lax.top_k`` (a host callback costs ~0.4 ms, more than sorting a few thousand).
HOST_TOP_K_MIN_BATCH = 8192


def top_k(scores: jax.Array, k: int, *, axis_name=None) -> jax.Array:
  """Indices of the ``k`` largest scores, largest first.

  With ``axis_name`` (inside ``pmap`` / ``shard_map`` over that axis) the selection is
  *global*: ``scores`` is this device's ``[b]`` share, the n shares are all-gathered
  device-major into ``[n·b]`` and the k largest of all n·b are taken. Every device returns
  the same ``int32[k]`` indices into that concatenation (device d's row i is ``d·b + i``),
  exactly what the single-device call on the concatenated scores returns;
  :func:`local_mask` gives each device its own selected rows. k is checked against n·b.

  ``lax.top_k``, except on CPU for ``B >= HOST_TOP_K_MIN_BATCH``: there a partial selection
  (:func:`_top_k_host`: ``np.partition`` finds the k-th largest key, one pass keeps the k
  above it, only those k are sorted) runs as a host callback, since XLA:CPU's ``lax.top_k``
  fully sorts (at B = 32 768, k = 10 % about 2.3× ``torch.topk``, ``benchmarks/README.md``).
  Both give the same indices (``-0.0`` ranks below ``+0.0`` in both).

  Args:
    scores: ``[B]`` (``[b]`` per device with ``axis_name``).
    k: static Python int in ``[1, B]``.
    axis_name: the mapped axis to select across, or ``None`` (this array only).

  Returns:
    ``int32[k]`` indices into ``scores`` (into the gathered ``[n·b]`` with ``axis_name``);
    ties resolved towards the lower index.

  NaN scores (a non-finite loss) rank below every number, ``-inf`` included: they are
  never selected while at least ``k`` scores are not NaN; otherwise the lowest-index NaN
  points fill the selection.
  """
  checks.check_shape("scores", scores, (None,), "[B]")
  scores = collectives.gather_rows(scores, axis_name)
  k = checks.check_k(k, np.shape(scores)[0])
  key = _monotone_key(scores)

  def on_device(key):      # lax.top_k on the order-preserving signed view of the key
    signed = jax.lax.bitcast_convert_type(key ^ jnp.uint32(1 << 31), jnp.int32)
    return jax.lax.top_k(signed, k)[1].astype(jnp.int32)

  if np.shape(scores)[0] < HOST_TOP_K_MIN_BATCH:
    return on_device(key)

  def on_cpu(key):
    return jax.pure_callback(lambda a: _top_k_host(np.asarray(a), k),
                             jax.ShapeDtypeStruct((k,), jnp.int32), key,
                             vmap_method="sequential")

  return jax.lax.platform_dependent(key, cpu=on_cpu, default=on_device)


def _monotone_key(scores: jax.Array) -> jax.Array:
  """``uint32[B]`` keys in the float32 scores' total order (``-0.0`` below ``+0.0``, as
  ``lax.top_k`` orders them); NaN → 0, below every number including ``-inf``."""
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
  key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))
  return jnp.where(jnp.isnan(scores), jnp.uint32(0), key)


def _nan_to_neg_inf(scores: jax.Array) -> jax.Array:
  """NaN → ``-inf`` (never drawn by the Gumbel top-k of :func:`soft_top_k`)."""
  return jnp.where(jnp.isnan(scores), -jnp.inf, scores)


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


def gumbel_top_k(rng: jax.Array, logits: jax.Array, k: int, *, axis_name=None) -> jax.Array:
  """Samples ``k`` distinct indices with probability ∝ ``exp(logits)`` (Gumbel top-k).

  Adding i.i.d. Gumbel(0, 1) noise to ``logits`` and taking the top k draws k items
  without replacement, each successive draw ∝ ``exp(logits)`` over the items left
  (Kool et al., 2019, "Stochastic Beams and Where to Find Them").

  Args:
    rng: a PRNG key (with ``axis_name``: the same key on every device).
    logits: ``[B]`` unnormalised log-probabilities (``-inf`` never drawn unless needed).
    k: static int in ``[1, B]``.
    axis_name: as :func:`top_k`: ``logits`` is this device's ``[b]`` share, the draw is
      over all n·b points (the noise is drawn for the gathered ``[n·b]`` from ``rng``), so
      every device returns the same global indices, equal to the one-device draw.

  Returns:
    ``int32[k]``.
  """
  checks.check_key("rng", rng)
  checks.check_shape("logits", logits, (None,), "[B]")
  logits = collectives.gather_rows(logits, axis_name)
  k = checks.check_k(k, np.shape(logits)[0])
  noise = jax.random.gumbel(rng, logits.shape, dtype=jnp.result_type(logits, jnp.float32))
  return top_k(logits + noise, k)


def soft_top_k(rng: jax.Array, scores: jax.Array, k: int, temperature: float, *,
               axis_name=None) -> jax.Array:
  """Soft selection: k points without replacement, each draw ∝ ``exp(score / τ)``.

  The soft alternative to top-k suggested by REDUCR App. A.9.3. ``temperature == 0``
  returns exactly :func:`top_k`: a concrete 0 without drawing noise, a traced one (e.g. τ
  swept under ``jit`` / ``vmap``) through ``lax.cond`` (never ``score / 0``); as τ → 0 the
  sample converges to the top k.

  Args:
    rng: a PRNG key (with ``axis_name``: the same key on every device).
    scores: ``[B]`` (``[b]`` per device with ``axis_name``).
    k: static int in ``[1, B]``.
    temperature: τ ≥ 0 (checked when concrete).
    axis_name: global selection over the mapped axis, as :func:`top_k` (same indices).

  Returns:
    ``int32[k]``.

  NaN scores are treated as ``-inf`` (never drawn while ``k`` other points remain), as in
  :func:`top_k`.
  """
  checks.check_in_range("temperature", temperature, 0.0)
  checks.check_shape("scores", scores, (None,), "[B]")
  scores = collectives.gather_rows(scores, axis_name)
  value = checks.concrete_value(temperature)
  if value == 0.0:
    return top_k(scores, k)
  if value is not None:
    return gumbel_top_k(rng, _nan_to_neg_inf(scores) / temperature, k)
  checks.check_key("rng", rng)
  k = checks.check_k(k, np.shape(scores)[0])
  zero = temperature == 0
  safe = jnp.where(zero, 1.0, temperature)
  return jax.lax.cond(zero, lambda: top_k(scores, k),
                      lambda: gumbel_top_k(rng, _nan_to_neg_inf(scores) / safe, k))


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
  checks.check_float("model_loss", model_loss)
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


# ---------------------------------------------------------------------------------------
# Further sampling rules of the official REDUCR code.


def power_sample(rng: jax.Array, scores: jax.Array, k: int, beta) -> jax.Array:
  """k points without replacement, each draw ∝ ``(score + |min score|)^β``.

  The official code's ``power_random_indices`` (its shift adds ``|min|`` whatever the
  sign of the minimum). Points of probability 0 are drawn only when fewer than k others
  are left (then by index).

  Args:
    rng: a PRNG key; scores: ``[B]``; k: static int; beta: β ≥ 0.

  Returns:
    ``int32[k]``.
  """
  checks.check_in_range("beta", beta, 0.0)
  shifted = scores + jnp.abs(jnp.min(scores))
  return gumbel_top_k(rng, beta * jnp.log(shifted), k)


def softmax_sample(rng: jax.Array, scores: jax.Array, k: int, beta) -> jax.Array:
  """k points without replacement, each draw ∝ ``exp(β · score)`` (``softmax_random_indices``).

  Returns:
    ``int32[k]``.
  """
  checks.check_in_range("beta", beta, 0.0)
  return gumbel_top_k(rng, beta * scores, k)


def rank_sample(rng: jax.Array, scores: jax.Array, k: int, beta) -> jax.Array:
  """k points without replacement, the point of rank r (0 = highest score) drawn
  ∝ ``(r + 1)^(−β)`` (the official code's ``rank_random_indices``).

  Returns:
    ``int32[k]``.
  """
  checks.check_in_range("beta", beta, 0.0)
  checks.check_shape("scores", scores, (None,), "[B]")
  b = np.shape(scores)[0]
  order = jnp.argsort(-scores)                          # order[rank] = index
  rank = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(b, dtype=jnp.int32))
  return gumbel_top_k(rng, -beta * jnp.log1p(rank.astype(jnp.float32)), k)


def k_for(batch_size: int, percent_selected: float, k_rounding: str = "round") -> int:
  """The one rule for k, the points selected per large batch of B = ``batch_size``:
  ``round(percent_selected · B)``, or for ``k_rounding='floor'`` (the official
  ``int(B · percent_train)`` of ``src/models/MultiModels.py``) int() truncation. May be
  0: :func:`reducr_jax.config.configuration.validate_config` refuses that (the official code's
  ``max(1, ·)`` would silently select one point); nothing else computes k."""
  k = percent_selected * batch_size
  return int(k) if k_rounding == "floor" else int(round(k))

"""Per-example difficulty scores for static data pruning (jit-able).

Shapes: ``N`` training examples, ``K`` logits per example, ``S`` independent runs
(initialisations / parameter sets), ``T`` training checkpoints. Higher = harder = kept
first by :func:`reducr_jax.core.pruning.prune_by_score` with ``keep="hardest"``; the DRoP class
quotas and index selection are in :mod:`reducr_jax.core.pruning` (host-side NumPy).

  * EL2N (Paul, Ganguli & Dziugaite, NeurIPS 2021) — :func:`el2n_scores`.
  * GraNd (same paper) — :func:`grand_scores`, :func:`grand_scores_stacked`.
  * Forgetting events (Toneva et al., ICLR 2019) — :class:`ForgettingState`,
    :func:`forgetting_init`, :func:`forgetting_update`, :func:`forgetting_scores`.
  * Dynamic uncertainty (He et al., CVPR 2024; arXiv 2306.05175) —
    :func:`dynamic_uncertainty`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks



def el2n_scores(logits: jax.Array, labels: jax.Array, *, from_probs: bool = False) -> jax.Array:
  """EL2N score ``‖softmax(f(x)) − e_y‖₂`` (Paul et al., 2021), averaged over runs.

  The error-L2-norm of an example early in training; Paul et al. average it over several
  independent initialisations: pass their logits stacked as ``[S, N, K]`` and the mean of
  the S norms (not the norm of the mean) is returned. Jit-able.

  Args:
    logits: ``[N, K]`` logits of one model, or ``[S, N, K]`` of S models (runs).
    labels: ``int[N]`` in ``[0, K)``.
    from_probs: ``logits`` already holds probabilities (no softmax).

  Returns:
    ``float[N]`` in ``[0, √2]``; higher = harder.
  """
  ndim = np.ndim(logits)
  if ndim not in (2, 3):
    raise ValueError(f"logits must have shape [N, K] or [S, N, K], got {tuple(np.shape(logits))}")
  n, k = np.shape(logits)[-2:]
  checks.check_shape("labels", labels, (n,), f"[N={n}] (N from logits)")
  probs = logits if from_probs else jax.nn.softmax(logits, axis=-1)
  err = jnp.linalg.norm(probs - jax.nn.one_hot(labels, k, dtype=probs.dtype), axis=-1)
  return jnp.mean(err, axis=0) if ndim == 3 else err


def true_label_probability(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``softmax(logits)[..., y]``: probability of the true label → ``[..., N]``.

  The per-checkpoint input of :func:`dynamic_uncertainty` (stack T of them). Jit-able.

  Args:
    logits: ``[..., N, K]``.
    labels: ``int[N]``.
  """
  if np.ndim(logits) < 2:
    raise ValueError(f"logits must have shape [..., N, K], got {tuple(np.shape(logits))}")
  n = np.shape(logits)[-2]
  checks.check_shape("labels", labels, (n,), f"[N={n}] (N from logits)")
  logp = jax.nn.log_softmax(logits, axis=-1)
  idx = jnp.broadcast_to(jnp.asarray(labels)[:, None], logp.shape[:-1] + (1,))
  return jnp.exp(jnp.take_along_axis(logp, idx, axis=-1)[..., 0])


def _check_batch(batch) -> int:
  if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
    raise ValueError(f"batch must be a pair (inputs, labels), got {type(batch).__name__}")
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(batch)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"batch leaves must share a leading example axis N, got sizes {sizes}")
  return sizes.pop()


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)))
                      for leaf in jax.tree.leaves(tree)))


def grand_scores(loss_fn: Callable[[Any, Any, Any], jax.Array], params: Any, batch,
                 *, chunk_size: Optional[int] = None) -> jax.Array:
  """GraNd score ``‖∇_θ ℓ(θ; x_i, y_i)‖₂`` of every example (Paul et al., 2021).

  The per-example gradients are ``jax.vmap(jax.grad(loss_fn), (None, 0, 0))`` over the
  examples; the norm is taken over all parameter leaves together. Memory is N gradients
  at once; ``chunk_size`` evaluates ``chunk_size`` examples at a time
  (``jax.lax.map(..., batch_size=chunk_size)``) instead. Jit-able with ``loss_fn`` and
  ``chunk_size`` static, e.g. ``jax.jit(grand_scores, static_argnums=0,
  static_argnames="chunk_size")``.

  For softmax cross-entropy on linear logits ``z = W x``, ``∇_W ℓ = (p − e_y) xᵀ`` and the
  score is ``‖p − e_y‖₂ · ‖x‖₂`` (EL2N times the input norm).

  Args:
    loss_fn: ``loss_fn(params, x_i, y_i) -> scalar`` loss of ONE example (no batch axis).
    params: parameter pytree.
    batch: ``(inputs, labels)``, pytrees whose leaves all have the leading axis N.
    chunk_size: optional static int ≥ 1.

  Returns:
    ``float32[N]``; higher = harder.
  """
  _check_batch(batch)
  if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size
                                 or chunk_size < 1):
    raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
  grad_fn = jax.grad(loss_fn)

  def one(example):
    x, y = example
    return _global_norm(grad_fn(params, x, y))

  if chunk_size is None:
    return jax.vmap(one)(tuple(batch))
  return jax.lax.map(one, tuple(batch), batch_size=int(chunk_size))


def grand_scores_stacked(loss_fn: Callable[[Any, Any, Any], jax.Array], stacked_params: Any,
                         batch, *, chunk_size: Optional[int] = None) -> jax.Array:
  """GraNd averaged over S parameter sets stacked on a leading axis: ``mean_s score_s``.

  Paul et al. average the gradient norm over independent initialisations (or early
  checkpoints of independent runs); here the S sets are ``vmap``-ed. Jit-able.

  Args:
    loss_fn: ``loss_fn(params, x_i, y_i) -> scalar`` for one example.
    stacked_params: pytree whose leaves all have a leading axis S (e.g.
      ``jax.vmap(model.init)(keys, x)``).
    batch: ``(inputs, labels)`` with leading axis N.
    chunk_size: see :func:`grand_scores`.

  Returns:
    ``float32[N]``.
  """
  s = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(stacked_params)}
  if len(s) != 1 or None in s:
    raise ValueError(f"stacked_params leaves must share a leading axis S, got sizes {s}")
  scores = jax.vmap(lambda p: grand_scores(loss_fn, p, batch, chunk_size=chunk_size))(
      stacked_params)
  return jnp.mean(scores, axis=0)


class ForgettingState(NamedTuple):
  """Forgetting statistics of N examples (Toneva et al., 2019, Algorithm 1).

  Attributes:
    prev_correct: ``bool[N]`` correctness at the last time each example was seen.
    forgetting_count: ``int32[N]`` forgetting events so far (correct → incorrect).
    ever_learned: ``bool[N]`` classified correctly at least once.
  """
  prev_correct: jax.Array
  forgetting_count: jax.Array
  ever_learned: jax.Array


def forgetting_init(num_examples: int) -> ForgettingState:
  """All examples start incorrect (``prev_acc = 0``), unlearned and with 0 events."""
  if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 1:
    raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
  n = int(num_examples)
  return ForgettingState(prev_correct=jnp.zeros((n,), bool),
                         forgetting_count=jnp.zeros((n,), jnp.int32),
                         ever_learned=jnp.zeros((n,), bool))


def forgetting_update(state: ForgettingState, correct: jax.Array,
                      indices: Optional[jax.Array] = None) -> ForgettingState:
  """Records one observation of correctness; a forgetting event is correct → incorrect.

  ``count += prev_correct ∧ ¬correct``, ``ever_learned |= correct``,
  ``prev_correct = correct``. Jit-able.

  Args:
    state: current :class:`ForgettingState` of N examples.
    correct: ``bool[N]`` (every example), or ``bool[b]`` for the examples ``indices``
      (a minibatch, as in Toneva et al.'s Algorithm 1).
    indices: optional ``int[b]`` distinct example indices that ``correct`` refers to.

  Returns:
    The updated state.
  """
  n = np.shape(state.prev_correct)[0]
  if indices is None:
    checks.check_shape("correct", correct, (n,), f"[N={n}] (N from state)")
    correct = correct.astype(bool)
    return ForgettingState(
        prev_correct=correct,
        forgetting_count=state.forgetting_count + (state.prev_correct & ~correct),
        ever_learned=state.ever_learned | correct)
  checks.check_shape("indices", indices, (None,), "[b]")
  b = np.shape(indices)[0]
  checks.check_shape("correct", correct, (b,), f"[b={b}] (b from indices)")
  correct = correct.astype(bool)
  forgot = state.prev_correct[indices] & ~correct
  return ForgettingState(
      prev_correct=state.prev_correct.at[indices].set(correct),
      forgetting_count=state.forgetting_count.at[indices].add(forgot.astype(jnp.int32)),
      ever_learned=state.ever_learned.at[indices].set(state.ever_learned[indices] | correct))


def forgetting_scores(state: ForgettingState, never_learned_score: float = float("inf")
                      ) -> jax.Array:
  """Forgetting-event counts as scores; never-learned examples get ``never_learned_score``.

  Toneva et al. count examples that are never classified correctly as forgotten an
  infinite number of times, i.e. the hardest: by default they score ``+inf``, which sorts
  above every count (:func:`reducr_jax.core.pruning.prune_by_score` and ``argsort`` handle it). Pass a finite
  value (e.g. the number of updates + 1) if the scores are averaged or plotted. Jit-able.

  Returns:
    ``float32[N]``.
  """
  counts = state.forgetting_count.astype(jnp.float32)
  return jnp.where(state.ever_learned, counts, jnp.asarray(never_learned_score, jnp.float32))


def dynamic_uncertainty(true_label_probs: jax.Array, window: int, *, ddof: int = 1
                        ) -> jax.Array:
  """Dynamic uncertainty (He et al., 2023): windowed std of p(y|x), averaged over windows.

  With ``p_t`` the probability of the true label at checkpoint t (e.g. end of epoch t),
  ``t = 0..T−1``, and window length J:

      U_k(x) = std(p_k, …, p_{k+J−1}),   k = 0..T−J,
      U(x)   = (1 / (T − J + 1)) Σ_k U_k(x).

  ``std`` uses ``J − ddof`` in the denominator; ``ddof=1`` (default) is the sample std of
  the paper's equation and of the official code (``torch.std``). The official script also
  multiplies by 10 (irrelevant for ranking) and leaves out the window ending at the last
  checkpoint; here all ``T − J + 1`` windows count. The windowed deviations are centred on
  each window's mean (no ``E[p²] − E[p]²`` cancellation). Jit-able.

  Args:
    true_label_probs: ``[T, N]`` (see :func:`true_label_probability`).
    window: J, a static int in ``[ddof + 1, T]`` (paper: 10 epochs).
    ddof: 0 or 1.

  Returns:
    ``[N]``; higher = more uncertain = harder.
  """
  checks.check_shape("true_label_probs", true_label_probs, (None, None), "[T, N]")
  t = np.shape(true_label_probs)[0]
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
  if isinstance(window, jax.core.Tracer) or not float(window).is_integer():
    raise ValueError(f"window must be a static int in [{ddof + 1}, {t}], got {window!r}")
  window = int(window)
  if not ddof + 1 <= window <= t:
    raise ValueError(f"window must be in [{ddof + 1}, {t}] (T = number of checkpoints), "
                     f"got {window}")
  p = true_label_probs
  num_windows = t - window + 1
  shifted = [p[j:j + num_windows] for j in range(window)]        # J × [T−J+1, N]
  mean = sum(shifted) / window
  ss = sum(jnp.square(s - mean) for s in shifted)
  return jnp.mean(jnp.sqrt(ss / (window - ddof)), axis=0)

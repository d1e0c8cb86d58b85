"""Class priority weights by multiplicative weights (MWU), kept in log space.

REDUCR (Algorithm 1, lines 2, 7, 8) keeps a distribution ``w`` over the C classes:

    w_1       = 1/C · 1
    α_{t,c}   = Σ_{i ∈ b_t} ( max(0, L[y_i|x_i, θ_t] − L[y_i|x_i, φ_c]) − h_{t,c} )
              = Σ_{i ∈ b_t} R[i, c] − k · h_{t,c}
    w_{t+1,c} = w_{t,c} · exp(−η α_{t,c}) / Σ_j w_{t,j} · exp(−η α_{t,j})

with ``h_{t,c}`` the target model's mean loss on the holdout points of class ``c`` (the
"class-holdout loss"). A class the model does badly on (large ``h``) gets a negative α and
gains weight. In log space the update is ``log_w ← log_softmax(log_w − η α)``, so after t
steps ``w = softmax(−η Σ_s α_s)``, exactly the cumulative form of the official code, with
no under/overflow however long the run. With a step size that shrinks with the round
(``selection.eta='auto'``: the anytime Hedge rate ``η_t = √(8 ln C / (t L²))``) the weights
are kept in that cumulative form, ``softmax(−η_t Σ_{s<t} α_s)`` (:func:`anytime_update`).

Two estimators of ``h`` are provided:
  * :func:`class_holdout_loss`: the per-class mean over a full holdout pass (the paper;
    refreshed once per epoch) from :class:`reducr_jax.core.metrics.ClassSums`, whose sums and
    counts add across batches and devices.
  * :class:`EMAState` / :func:`ema_init` / :func:`ema_update` / :func:`ema_value`: the
    de-biased exponential moving average of per-class batch means (App. A.9.4), with a
    per-class bias correction ``m / (1 − a^n)`` as in Adam, where ``n`` counts the batches
    in which the class was present. A class absent from a batch keeps its state.

For research code the same updates come as optax-style transforms that carry their own
state (:func:`hedge`, :func:`anytime_hedge`)::

    tx = mwu.hedge(eta=1e-2)
    state = tx.init(num_classes)                  # HedgeState(log_weights = log(1/C))
    w, state = tx.update(alpha, state)            # w = softmax(log_w − η α), on the simplex

The array functions (:func:`update`, :func:`weights`) take *log*-weights normalised to
``logsumexp = 0``; a concrete array that is not (e.g. weights ``w`` instead of
``log w``: ``logsumexp(w) ≥ ln C + 1/C > 0``) is a one-line ``ValueError``, since softmax
of weights gives wrong numbers silently. A traced array cannot be checked.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import checks
from reducr_jax.core import metrics


def init(num_classes: int) -> jax.Array:
  """Uniform log-weights ``log(1/C) · 1`` → ``float32[C]`` (Algorithm 1, line 2)."""
  num_classes = checks.check_num_classes(num_classes)
  return jnp.full((num_classes,), -np.log(num_classes), jnp.float32)


#: How far from 0 the ``logsumexp`` of concrete log-weights may be (float32 rounding of
#: ``log_softmax`` over thousands of classes stays below 1e-5).
LOG_WEIGHTS_ATOL = 1e-3


def check_log_weights(name: str, log_w) -> None:
  """Raises a one-line ``ValueError`` unless the concrete ``log_w`` is ``[C]`` with
  ``logsumexp(log_w) = 0`` (± :data:`LOG_WEIGHTS_ATOL`), i.e. normalised log-weights;
  tracers pass (only their shape is checked). Weights on the simplex always fail:
  ``logsumexp(w) ≥ ln C + 1/C > 0`` (Jensen), so this catches ``w`` passed for ``log w``."""
  checks.check_shape(name, log_w, (None,), "[C]")
  if isinstance(log_w, jax.core.Tracer):
    return
  a = np.asarray(log_w, np.float64)
  lse = float(np.logaddexp.reduce(a)) if a.size else -np.inf
  if not abs(lse) <= LOG_WEIGHTS_ATOL:
    raise ValueError(f"{name} must be normalised log-weights (logsumexp = 0, e.g. "
                     f"mwu.init(C) or jnp.log(weights)), got logsumexp {lse:.6g}")


def weights(log_w: jax.Array) -> jax.Array:
  """Class weights on the simplex from log-weights: ``softmax(log_w)`` → ``[C]``.

  ``log_w`` must be normalised log-weights (:func:`check_log_weights`; checked when
  concrete)."""
  check_log_weights("log_w", log_w)
  return jax.nn.softmax(log_w)


def class_objective(excess_selected: jax.Array, class_holdout_loss: jax.Array,
                    use_holdout: bool = True) -> jax.Array:
  """MWU objective ``α_c = Σ_i excess_selected[i, c] − k · h_c`` (Algorithm 1, line 7).

  Args:
    excess_selected: ``[k, C]`` reducible losses of the k selected points (clipped or not,
      as used for selection; see :func:`reducr_jax.core.selection_scores.reducible_losses`).
    class_holdout_loss: ``[C]`` class-holdout losses ``h``.
    use_holdout: ``False`` is the "no class-holdout loss" ablation: ``α_c = Σ_i excess``.

  Returns:
    ``[C]``.
  """
  checks.check_shape("excess_selected", excess_selected, (None, None), "[k, C]")
  k, c = np.shape(excess_selected)
  checks.check_shape("class_holdout_loss", class_holdout_loss, (c,),
                     f"[C={c}] (C from excess_selected)")
  checks.check_float("excess_selected", excess_selected)
  checks.check_float("class_holdout_loss", class_holdout_loss)
  alpha = jnp.sum(excess_selected, axis=0)
  if use_holdout:
    alpha = alpha - k * class_holdout_loss
  return alpha


def update(log_w: jax.Array, alpha: jax.Array, eta) -> jax.Array:
  """One multiplicative-weights step in log space: ``log_softmax(log_w − η α)`` (line 8).

  Args:
    log_w: ``[C]`` current log-weights, normalised (``logsumexp = 0``; a concrete array
      that is not, e.g. weights instead of log-weights, is a ``ValueError``).
    alpha: ``[C]`` objective from :func:`class_objective`.
    eta: learning rate η > 0 (paper: 1e-4), finite. A concrete Python/NumPy value that is
      NaN, ±inf or ≤ 0 raises a one-line ``ValueError``; a traced η (an argument of a
      jitted function) cannot be checked, and a non-finite traced η gives non-finite
      log-weights, which the trainer's guard rejects (the update is skipped).

  Returns:
    ``[C]`` new log-weights, normalised (``logsumexp == 0``).
  """
  check_log_weights("log_w", log_w)
  c = np.shape(log_w)[0]
  checks.check_shape("alpha", alpha, (c,), f"[C={c}] (C from log_w)")
  _check_eta("eta", eta)
  return jax.nn.log_softmax(log_w - eta * alpha)


def _check_eta(name: str, eta) -> None:
  checks.check_in_range(name, eta, 0.0, low_inclusive=False)
  value = checks.concrete_value(eta)
  if value is not None and not np.isfinite(value):
    raise ValueError(f"{name} must be a finite number > 0, got {value}")


def auto_eta(num_classes: int, num_updates: int, loss_range: float) -> float:
  """The step size that minimises the Hedge/MWU regret bound: ``η* = √(8 ln C / (T L²))``.

  Hedge with C experts, T rounds and per-round losses whose spread across experts is at
  most L (``max_c ℓ_{t,c} − min_c ℓ_{t,c} ≤ L``; a loss common to all experts cancels in the
  softmax) has regret ``≤ ln C / η + η T L² / 8`` (Cesa-Bianchi & Lugosi 2006, Thm 2.2,
  Hoeffding's lemma); its derivative ``−ln C/η² + T L²/8`` vanishes at ``η*``, where the
  bound is ``L √(T ln C / 2)``.

  In REDUCR the experts are the classes, the "loss" of class c in round t is
  ``α_{t,c}`` (:func:`class_objective`; :func:`update` multiplies by ``exp(−η α)``) and T
  is the number of MWU updates (one per training step: :func:`update` runs once per step
  whatever the class-holdout loss refresh schedule, which only changes ``h``, not how
  often the weights move). ``loss_range`` is the caller's bound on the spread of α; the
  trainer uses ``k · ln C`` (see :func:`reducr_jax.selectors.reducr.resolved_eta`).
  ``selection.eta='auto'`` does not use this fixed-horizon η (it needs T in advance, so a
  run extended on resume would have used another η for its first steps) but the anytime
  rate ``η_t = auto_eta(C, t, L)`` (:func:`anytime_update`).

  Args:
    num_classes: C ≥ 2 (ln 1 = 0: one class has nothing to weigh).
    num_updates: T ≥ 1.
    loss_range: L > 0, finite.

  Returns:
    ``η*`` as a Python float, e.g. ``auto_eta(2, 8, √ln 2) = √(8 ln 2 / (8 ln 2)) = 1``.
  """
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
  if isinstance(num_updates, bool) or int(num_updates) != num_updates or num_updates < 1:
    raise ValueError(f"num_updates must be an int >= 1, got {num_updates!r}")
  if not (np.isfinite(loss_range) and loss_range > 0):
    raise ValueError(f"loss_range must be a finite number > 0, got {loss_range!r}")
  return float(np.sqrt(8.0 * np.log(num_classes) / (num_updates * float(loss_range) ** 2)))


def anytime_eta_1(num_classes: int, loss_range: float) -> float:
  """``η_1 = √(8 ln C) / L`` of the anytime schedule ``η_t = η_1 / √t`` (:func:`anytime_update`).

  ``η_t = auto_eta(C, t, L) = √(8 ln C / (t L²))``: the fixed-horizon optimum with the
  horizon T replaced by the round t. Same argument checks as :func:`auto_eta`.
  """
  return auto_eta(num_classes, 1, loss_range)


class AnytimeState(NamedTuple):
  """What the anytime schedule carries from one MWU update to the next.

  Attributes:
    cumulative_alpha: ``float32[C]`` ``S_t = Σ_{s≤t} α_s`` over the updates made so far.
    num_updates: ``int32[]`` t, the number of updates made so far.
  """
  cumulative_alpha: jax.Array
  num_updates: jax.Array


def anytime_init(num_classes: int) -> AnytimeState:
  """``S_0 = 0``, ``t = 0``: the weights ``softmax(−η_1 · 0)`` are uniform (= :func:`init`)."""
  init(num_classes)                                     # the same num_classes check
  return AnytimeState(jnp.zeros((int(num_classes),), jnp.float32), jnp.zeros((), jnp.int32))


def anytime_update(state: AnytimeState, alpha: jax.Array, eta_1) -> tuple[jax.Array,
                                                                           AnytimeState]:
  """One MWU update with the anytime Hedge rate, in the lazy (cumulative) form.

  Hedge with a time-varying step size ``η_t = η_1/√t``, ``η_1 = √(8 ln C)/L``, plays in
  round t the weights ``w_t = softmax(−η_t S_{t−1})`` of the cumulative losses of the
  earlier rounds (Cesa-Bianchi & Lugosi 2006, *Prediction, Learning, and Games*, §2.3,
  Thm 2.3: regret ``≤ L(2√(T ln C / 2) + √(ln C / 8))`` for every T at once, twice the
  fixed-horizon optimum of :func:`auto_eta`, the same order, without knowing T). So the
  t-th update (t = 1, 2, …) adds ``α_t`` to ``S`` and returns the weights of round
  t + 1, ``log w_{t+1} = log_softmax(−η_{t+1} S_t)``: ``−η S`` is the official code's
  ``softmax(−η · cumulative α)`` with η now shrinking. (With a varying η the incremental
  form ``log_softmax(log w − η_t α_t)`` of :func:`update` would weigh early rounds by
  their own, larger η_s — not Hedge; with a constant η both forms are the same.) The
  weights depend on the update count only, not on the run's length: a run extended from T
  to 2T steps is the 2T-step run.

  Args:
    state: :class:`AnytimeState` after t − 1 updates.
    alpha: ``[C]`` this round's objective (:func:`class_objective`).
    eta_1: ``η_1 > 0`` (:func:`anytime_eta_1`).

  Returns:
    ``(log_w [C], state)``: the normalised log-weights of round t + 1 and the new state.
  """
  c = np.shape(state.cumulative_alpha)[0]
  checks.check_shape("alpha", alpha, (c,), f"[C={c}] (C from state)")
  checks.check_in_range("eta_1", eta_1, 0.0, low_inclusive=False)
  cumulative = state.cumulative_alpha + alpha
  t = state.num_updates + 1
  eta = eta_1 / jnp.sqrt((t + 1).astype(jnp.float32))
  return jax.nn.log_softmax(-eta * cumulative), AnytimeState(cumulative, t)


def anytime_schedule(num_classes: int, num_updates: int, loss_range: float) -> dict:
  """The resolved anytime schedule of a run with T = ``num_updates`` updates, for
  ``results.json``: ``{"schedule": "anytime", "eta_1", "eta_T", "num_updates"}``, where
  ``η_t = η_1/√t`` is the step size of the weights that round t selects with (``η_T``:
  those of the last step; the final weights after update T use ``η_{T+1}``)."""
  eta_1 = anytime_eta_1(num_classes, loss_range)
  return {"schedule": "anytime", "eta_1": eta_1,
          "eta_T": auto_eta(num_classes, num_updates, loss_range),
          "num_updates": int(num_updates)}


# ---------------------------------------------------------------------------------------
# Optax-style transforms: the state holds the log-weights.


class ClassWeightTransform(NamedTuple):
  """A class-weight rule in the shape of ``optax.GradientTransformation``.

  Attributes:
    init: ``num_classes -> state``; the state's ``log_weights`` are uniform.
    update: ``(alpha [C], state) -> (weights [C] on the simplex, new_state)``, with
      ``alpha`` the per-class loss of the round (:func:`class_objective`); jit-able.
  """
  init: Callable[[int], Any]
  update: Callable[[jax.Array, Any], tuple[jax.Array, Any]]


class HedgeState(NamedTuple):
  """``log_weights``: ``float32[C]`` normalised log-weights (``logsumexp = 0``)."""
  log_weights: jax.Array


class AnytimeHedgeState(NamedTuple):
  """:func:`anytime_hedge`'s state: ``log_weights`` as :class:`HedgeState`, and
  ``cumulative_alpha`` ``float32[C]`` / ``num_updates`` ``int32[]`` of
  :class:`AnytimeState`."""
  log_weights: jax.Array
  cumulative_alpha: jax.Array
  num_updates: jax.Array


def _alpha_for(state_log_weights, alpha):
  c = np.shape(state_log_weights)[0]
  checks.check_shape("alpha", alpha, (c,), f"[C={c}] (C from state)")
  checks.check_float("alpha", alpha)


def hedge(eta) -> ClassWeightTransform:
  """Hedge / multiplicative weights with a constant step size η (Algorithm 1, line 8).

  ``update(alpha, state)``: ``log w ← log_softmax(log w − η α)``, returns
  ``(softmax(log w), HedgeState(log w))``; after t updates ``w = softmax(−η Σ_s α_s)``.
  One step from uniform on C = 2 with η = 0.5, α = (2, −1): ``w ∝ (e^{−1}, e^{0.5})`` =
  (0.182426, 0.817574). The same numbers as :func:`init` / :func:`update` / :func:`weights`.

  Args:
    eta: η > 0, finite (a one-line ``ValueError`` when concrete and not; may be traced).
  """
  _check_eta("eta", eta)

  def update_fn(alpha, state):
    _alpha_for(state.log_weights, alpha)
    log_w = jax.nn.log_softmax(state.log_weights - eta * alpha)
    return jax.nn.softmax(log_w), HedgeState(log_w)

  return ClassWeightTransform(init=lambda num_classes: HedgeState(init(num_classes)),
                              update=update_fn)


def anytime_hedge(eta_1) -> ClassWeightTransform:
  """Hedge with the anytime step size ``η_t = η_1/√t`` in the lazy form of
  :func:`anytime_update` (same numbers): ``update(alpha, state)`` returns the weights of
  the next round ``softmax(−η_{t+1} Σ_{s≤t} α_s)`` and the new :class:`AnytimeHedgeState`.

  Args:
    eta_1: ``η_1 > 0`` (e.g. :func:`anytime_eta_1`).
  """
  _check_eta("eta_1", eta_1)

  def init_fn(num_classes):
    s = anytime_init(num_classes)
    return AnytimeHedgeState(init(num_classes), s.cumulative_alpha, s.num_updates)

  def update_fn(alpha, state):
    _alpha_for(state.log_weights, alpha)
    log_w, s = anytime_update(AnytimeState(state.cumulative_alpha, state.num_updates),
                              alpha, eta_1)
    return jax.nn.softmax(log_w), AnytimeHedgeState(log_w, s.cumulative_alpha,
                                                    s.num_updates)

  return ClassWeightTransform(init=init_fn, update=update_fn)


# ---------------------------------------------------------------------------------------
# Class-holdout loss: per-class mean over a full holdout pass.


def class_holdout_loss(stats: metrics.ClassSums, default=0.0) -> jax.Array:
  """Per-class mean holdout loss ``h = sums / counts`` from accumulated per-class sums.

  Accumulate ``stats`` over a holdout pass with
  ``metrics.class_sums(per_example_loss, labels, C, mask)`` and merge batches or devices
  by adding the fields (``jax.tree.map(jnp.add, a, b)`` / ``lax.psum``).

  Args:
    stats: :class:`reducr_jax.core.metrics.ClassSums` of per-example holdout losses.
    default: value for a class with no holdout example (0: it then pushes its weight
      neither up nor down through ``h``).

  Returns:
    ``[C]``, never NaN.
  """
  return metrics.class_means(stats, default)


# ---------------------------------------------------------------------------------------
# Class-holdout loss: de-biased exponential moving average (REDUCR App. A.9.4).


class EMAState(NamedTuple):
  """State of the per-class de-biased EMA.

  Attributes:
    biased: ``float32[C]`` the raw average ``m_n = a·m_{n−1} + (1−a)·x_n`` (``m_0 = 0``).
    num_updates: ``int32[C]`` number of batches in which each class was present.
  """
  biased: jax.Array
  num_updates: jax.Array


def ema_init(num_classes: int) -> EMAState:
  """Zero EMA state for C classes (C >= 1, as :func:`init`)."""
  num_classes = checks.check_num_classes(num_classes)
  return EMAState(jnp.zeros((num_classes,), jnp.float32),
                  jnp.zeros((num_classes,), jnp.int32))


def ema_update(state: EMAState, batch_stats: metrics.ClassSums, decay) -> EMAState:
  """Folds one holdout batch's per-class mean losses into the EMA.

  Only classes present in the batch (count > 0) are updated; the others keep their value
  and their bias-correction count, so an absent class never produces NaN or drifts to 0.

  Args:
    state: current :class:`EMAState`.
    batch_stats: :class:`reducr_jax.core.metrics.ClassSums` of the batch's per-example losses.
    decay: ``a ∈ [0, 1)`` (paper: 0.9 or 0.99); ``a = 0`` keeps the latest batch mean.

  Returns:
    the new :class:`EMAState`.
  """
  checks.check_in_range("decay", decay, 0.0, 1.0, high_inclusive=False)
  c = np.shape(state.biased)[0]
  checks.check_shape("batch_stats.sums", batch_stats.sums, (c,), f"[C={c}] (C from state)")
  present = batch_stats.counts > 0
  batch_mean = metrics.class_means(batch_stats, 0.0)
  new = decay * state.biased + (1.0 - decay) * batch_mean
  return EMAState(biased=jnp.where(present, new, state.biased),
                  num_updates=state.num_updates + present.astype(jnp.int32))


def ema_value(state: EMAState, decay, default=0.0) -> jax.Array:
  """Bias-corrected EMA ``m_n / (1 − a^n)`` per class; ``default`` where ``n = 0``.

  Returns:
    ``[C]``.
  """
  checks.check_in_range("decay", decay, 0.0, 1.0, high_inclusive=False)
  n = state.num_updates
  correction = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), n.astype(jnp.float32))
  return jnp.where(n > 0, state.biased / jnp.where(n > 0, correction, 1.0), default)

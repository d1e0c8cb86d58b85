"""REDUCR (Bankes et al.): class-weighted excess loss, top-k, MWU update of the weights.

Algorithm 1, lines 6–8::

    R[i, c] = max(0, model_loss_i − expert_loss_{i,c})           (ablations: selection_scores.reducible_losses)
    idx     = top-k_i Σ_c w_c R[i, c]                             (soft top-k when τ > 0, App. A.9.3)
    α_c     = Σ_{i ∈ idx} R[i, c] − k · h_c                       (h: class-holdout loss)
    log w   ← log_softmax(log w − η α)                            (so w = softmax(−η Σ_t α_t))

With ``eta="auto"`` η follows the anytime Hedge schedule: the weights of step t are
``softmax(−η_t Σ_{s<t} α_s)``, ``η_t = √(8 ln C / (t L²))``, L = k ln C
(:func:`reducr_jax.core.mwu.anytime_update`), so they depend on the step, not on num_steps.

Config: ``config.selection.{eta, clip, use_holdout, use_expert, use_model_loss,
soft_temperature}``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from reducr_jax.core import mwu
from reducr_jax.core import registry
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import core

ETA_AUTO = "auto"     # = configuration.ETA_AUTO (configuration imports the selectors)


class ReducrState(NamedTuple):
  """``log_w``: ``float32[C]`` MWU class log-weights (a constant η)."""
  log_w: jax.Array


class AnytimeReducrState(NamedTuple):
  """``eta="auto"``: ``log_w`` as :class:`ReducrState`, and the cumulative objective and
  update count of :class:`reducr_jax.core.mwu.AnytimeState` the next update needs."""
  log_w: jax.Array
  anytime: mwu.AnytimeState


def reducr(*, eta, clip: bool = True, use_holdout: bool = True, use_expert: bool = True,
           use_model_loss: bool = True, soft_temperature: float = 0.0) -> core.Selector:
  """The REDUCR rule with the paper's ablation switches (Fig. 4a).

  Args:
    eta: MWU step size η > 0, or ``"auto"``: the anytime schedule
      ``η_t = √(8 ln C / (t L²))`` with L = k ln C (k, C from the shapes the rule sees).
    clip: clip the excess loss at 0; use_holdout: the ``− k·h`` term of α;
    use_expert: the expert term (``False``: R = model loss, no experts trained);
    use_model_loss: the model-loss term (``False``: R = −expert loss with ``clip=False``;
      with ``clip=True`` R = 0, all scores tie and the first k points are taken, as the
      official code does).
    soft_temperature: τ of :func:`reducr_jax.core.selection.soft_top_k` (0 = top-k).
  """
  needs = {core.MODEL_LOSS}
  if use_expert:
    needs.add(core.EXPERT_LOSSES)
  if use_holdout:
    needs.add(core.CLASS_HOLDOUT_LOSS)

  anytime = eta == ETA_AUTO
  if isinstance(eta, str) and not anytime:
    raise ValueError(f"eta must be a number > 0 or {ETA_AUTO!r}, got {eta!r}")

  def init(num_classes):
    if anytime:
      return AnytimeReducrState(mwu.init(num_classes), mwu.anytime_init(num_classes))
    return ReducrState(mwu.init(num_classes))

  def select(state, inputs, rng, k):
    c = state.log_w.shape[0]
    expert = (inputs.reference_losses if use_expert else
              jnp.zeros((inputs.labels.shape[0], c), jnp.float32))
    reducible = selection_scores.reducible_losses(inputs.model_loss, expert, clip=clip,
                                           use_expert=use_expert,
                                           use_model_loss=use_model_loss)
    scores = selection_scores.weighted_scores(reducible, mwu.weights(state.log_w))
    return selection.soft_top_k(rng, scores, k, soft_temperature), reducible

  def update(state, inputs, indices, reducible):
    h = (inputs.class_holdout_loss if use_holdout else
         jnp.zeros(state.log_w.shape, jnp.float32))
    alpha = mwu.class_objective(reducible[indices], h, use_holdout)
    if anytime:
      c, k = state.log_w.shape[0], indices.shape[0]
      log_w, rest = mwu.anytime_update(state.anytime, alpha,
                                       mwu.anytime_eta_1(c, k * math.log(c)))
      return AnytimeReducrState(log_w, rest)
    return ReducrState(mwu.update(state.log_w, alpha, eta))

  return core.Selector(init=init, select=select, update=update, needs=frozenset(needs),
                       class_weights=lambda state: mwu.weights(state.log_w))


def resolved_eta(config, num_classes: int):
  """``config.selection.eta`` as used: a number as a float; ``"auto"`` as the anytime
  schedule's summary :func:`reducr_jax.core.mwu.anytime_schedule` ``{"schedule": "anytime",
  "eta_1", "eta_T", "num_updates"}`` with ``η_t = √(8 ln C / (t L²)) = (1/k) √(8 / (t ln C))``,
  T = num_steps, ``k = configuration.num_selected(config)`` and C ``num_classes`` (the
  trainer passes the dataset's, :func:`reducr_jax.data.num_classes`; a rule does not load data).

  Assumption behind L = k ln C: the MWU loss of class c at a step is
  ``α_c = Σ_{i∈b} R[i,c] − k h_c`` with ``R ≥ 0`` (clipped excess loss) and ``h ≥ 0``; per
  point, the spread of ``R[i,c] − h_c`` across classes is taken to be at most ``ln C``, the
  cross-entropy of a uniform guess, the scale both the model loss (hence R) and the
  class-holdout losses start from and stay below while the model learns. t counts MWU
  updates, one per training step (the class-holdout refresh adds none; ``uniform_after``
  with base ``reducr`` stops counting after ``uniform_after_steps``).
  """
  eta = config.selection.eta
  if eta != ETA_AUTO:
    return float(eta)
  k = selection.k_for(config.batch_size, config.selection.percent_selected,
                     config.selection.k_rounding)       # = configuration.num_selected
  updates = int(config.num_steps)
  if config.selection.method == "uniform_after":
    updates = max(1, min(updates, int(config.selection.uniform_after_steps)))
  return mwu.anytime_schedule(num_classes, updates, k * math.log(num_classes))


def from_config(config) -> core.Selector:
  s = config.selection
  eta = s.eta if s.eta == ETA_AUTO else float(s.eta)
  return registry.config_errors(reducr, {"eta": "config.selection.eta"})(
      eta=eta, clip=s.clip, use_holdout=s.use_holdout, use_expert=s.use_expert,
      use_model_loss=s.use_model_loss, soft_temperature=float(s.soft_temperature))

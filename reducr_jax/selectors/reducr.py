"""REDUCR (Bankes et al.): class-weighted excess loss, top-k, MWU update of the weights.

Algorithm 1, lines 6–8::

    R[i, c] = max(0, model_loss_i − expert_loss_{i,c})           (ablations: selection.reducible_losses)
    idx     = top-k_i Σ_c w_c R[i, c]                             (soft top-k when τ > 0, App. A.9.3)
    α_c     = Σ_{i ∈ idx} R[i, c] − k · h_c                       (h: class-holdout loss)
    log w   ← log_softmax(log w − η α)                            (so w = softmax(−η Σ_t α_t))

Config: ``config.selection.{eta, clip, use_holdout, use_expert, use_model_loss,
soft_temperature}``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from reducr_jax import mwu
from reducr_jax import selection
from reducr_jax.selectors import core


class ReducrState(NamedTuple):
  """``log_w``: ``float32[C]`` MWU class log-weights."""
  log_w: jax.Array


def reducr(*, eta, clip: bool = True, use_holdout: bool = True, use_expert: bool = True,
           use_model_loss: bool = True, soft_temperature: float = 0.0) -> core.Selector:
  """The REDUCR rule with the paper's ablation switches (Fig. 4a).

  Args:
    eta: MWU step size η > 0.
    clip: clip the excess loss at 0; use_holdout: the ``− k·h`` term of α;
    use_expert: the expert term (``False``: R = model loss, no experts trained);
    use_model_loss: the model-loss term (``False``: R = −expert loss with ``clip=False``;
      with ``clip=True`` R = 0, all scores tie and the first k points are taken, as the
      official code does).
    soft_temperature: τ of :func:`reducr_jax.selection.soft_top_k` (0 = top-k).
  """
  needs = {core.MODEL_LOSS}
  if use_expert:
    needs.add(core.EXPERT_LOSSES)
  if use_holdout:
    needs.add(core.CLASS_HOLDOUT_LOSS)

  def init(num_classes):
    return ReducrState(mwu.init(num_classes))

  def select(state, inputs, rng, k):
    c = state.log_w.shape[0]
    expert = (inputs.reference_losses if use_expert else
              jnp.zeros((inputs.labels.shape[0], c), jnp.float32))
    reducible = selection.reducible_losses(inputs.model_loss, expert, clip=clip,
                                           use_expert=use_expert,
                                           use_model_loss=use_model_loss)
    scores = selection.weighted_scores(reducible, mwu.weights(state.log_w))
    return selection.soft_top_k(rng, scores, k, soft_temperature), reducible

  def update(state, inputs, indices, reducible):
    h = (inputs.class_holdout_loss if use_holdout else
         jnp.zeros(state.log_w.shape, jnp.float32))
    alpha = mwu.class_objective(reducible[indices], h, use_holdout)
    return ReducrState(mwu.update(state.log_w, alpha, eta))

  return core.Selector(init=init, select=select, update=update, needs=frozenset(needs),
                       class_weights=lambda state: mwu.weights(state.log_w))


def resolved_eta(config, num_classes: int | None = None) -> float:
  """``config.selection.eta`` as a number: ``"auto"`` → :func:`reducr_jax.mwu.auto_eta`.

  ``η = auto_eta(C, T = num_steps, L = k · ln C) = (1/k) √(8 / (T ln C))``, with
  k = :func:`reducr_jax.configuration.num_selected` (``selection.k_rounding``) and C
  ``num_classes`` (default: the dataset config's, :func:`reducr_jax.data.num_classes`).
  Assumption behind L: the MWU loss of class c at a step is
  ``α_c = Σ_{i∈b} R[i,c] − k h_c`` with ``R ≥ 0`` (clipped excess loss) and ``h ≥ 0``;
  per point, the spread of ``R[i,c] − h_c`` across classes is taken
  to be at most ``ln C``, the cross-entropy of a uniform guess, the scale both the model
  loss (hence R) and the class-holdout losses start from and stay below while the model
  learns. T: one MWU update per training step (the class-holdout refresh adds none;
  ``uniform_after`` with base ``reducr`` also uses T = num_steps, although its MWU stops
  after ``uniform_after_steps``).
  """
  eta = config.selection.eta
  if eta != "auto":
    return float(eta)
  if num_classes is None:
    from reducr_jax import data  # pylint: disable=g-import-not-at-top
    num_classes = data.num_classes(config.dataset)
  from reducr_jax import configuration  # pylint: disable=g-import-not-at-top  (imports us)
  k = configuration.num_selected(config)       # the k the train step selects (k_rounding)
  return mwu.auto_eta(num_classes, int(config.num_steps), k * math.log(num_classes))


def from_config(config) -> core.Selector:
  s = config.selection
  return reducr(eta=resolved_eta(config), clip=s.clip, use_holdout=s.use_holdout,
                use_expert=s.use_expert, use_model_loss=s.use_model_loss,
                soft_temperature=float(s.soft_temperature))

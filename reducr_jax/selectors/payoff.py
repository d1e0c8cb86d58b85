"""``payoff``: max-min selection of the official REDUCR code (no class weights).

``score_i = min_c (model_loss_i − expert_loss_{i,c} − h_c)`` (unclipped), top-k. The
class weights are not used, so nothing is learnt across steps: the rule picks, in every
large batch, the points whose *worst* class-wise payoff is largest.
"""

from __future__ import annotations

from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import core


def payoff() -> core.Selector:
  def select(inputs, rng, k):
    del rng
    return selection.top_k(selection_scores.payoff_scores(
        inputs.model_loss, inputs.reference_losses, inputs.class_holdout_loss), k)
  return core.stateless(select, {core.MODEL_LOSS, core.EXPERT_LOSSES,
                                 core.CLASS_HOLDOUT_LOSS})


def from_config(config) -> core.Selector:
  del config
  return payoff()

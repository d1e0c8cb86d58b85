"""``entropy``: the k points of highest predictive entropy (uncertainty sampling), a
baseline of RHO-LOSS (Mindermann et al., 2022). Labels are not used.

Officially (``entropy_selection``) the entropy of the mean of 10 MC-dropout passes: with
a dropout model (``config.model.dropout_rate > 0``) and ``config.selection.mc_passes >=
1`` the rule asks for ``MC_LOGITS`` (:mod:`.bald`); otherwise, as before, the
evaluation-mode logits (the same value the K identical passes would give)."""

from __future__ import annotations

from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import bald
from reducr_jax.selectors import core


def entropy() -> core.Selector:
  def select(inputs, rng, k):
    del rng
    return selection.top_k(selection_scores.predictive_entropy(inputs.model_logits), k)
  return core.stateless(select, {core.MODEL_LOGITS})


def from_config(config) -> core.Selector:
  return bald.entropy_from_config(config)

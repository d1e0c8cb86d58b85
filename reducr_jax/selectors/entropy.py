"""``entropy``: the k points of highest predictive entropy (uncertainty sampling), a
baseline of RHO-LOSS (Mindermann et al., 2022). Labels are not used."""

from __future__ import annotations

from reducr_jax import selection
from reducr_jax.selectors import core


def entropy() -> core.Selector:
  def select(inputs, rng, k):
    del rng
    return selection.top_k(selection.predictive_entropy(inputs.model_logits), k)
  return core.stateless(select, {core.MODEL_LOGITS})


def from_config(config) -> core.Selector:
  del config
  return entropy()

"""``irreducible``: the k points of *lowest* irreducible loss, without the model-loss
term (the "irreducible loss alone" baseline of RHO-LOSS, Mindermann et al., 2022): easy,
learnable, likely clean points, chosen by one model trained on the holdout split."""

from __future__ import annotations

from reducr_jax.core import selection
from reducr_jax.selectors import core


def irreducible() -> core.Selector:
  def select(inputs, rng, k):
    del rng
    return selection.top_k(-inputs.reference_losses[:, 0], k)
  return core.stateless(select, {core.IRREDUCIBLE_LOSS})


def from_config(config) -> core.Selector:
  del config
  return irreducible()

"""The REDUCR paper's baselines: RHO-LOSS, train loss (Loshchilov & Hutter), uniform.

* ``rho_loss``: top-k of ``model_loss − irreducible_loss`` (one model trained on all the
  holdout data; Mindermann et al., 2022); soft top-k when ``selection.soft_temperature > 0``.
* ``train_loss``: k points sampled by loss rank, ``p ∝ s^(−rank/B)`` (s =
  ``selection.selection_pressure``, paper 100).
* ``uniform``: k of the B points uniformly without replacement.
"""

from __future__ import annotations

from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import core


def rho_loss(soft_temperature: float = 0.0) -> core.Selector:
  def select(inputs, rng, k):
    scores = selection_scores.rho_loss_scores(inputs.model_loss, inputs.reference_losses[:, 0])
    return selection.soft_top_k(rng, scores, k, soft_temperature)
  return core.stateless(select, {core.MODEL_LOSS, core.IRREDUCIBLE_LOSS})


def train_loss(selection_pressure: float = selection.DEFAULT_SELECTION_PRESSURE
               ) -> core.Selector:
  def select(inputs, rng, k):
    return selection.train_loss_select(rng, inputs.model_loss, k, selection_pressure)
  return core.stateless(select, {core.MODEL_LOSS})


def uniform() -> core.Selector:
  return core.stateless(
      lambda inputs, rng, k: selection.uniform_select(rng, inputs.labels.shape[0], k))


def rho_loss_from_config(config) -> core.Selector:
  return rho_loss(float(config.selection.soft_temperature))


def train_loss_from_config(config) -> core.Selector:
  return train_loss(float(config.selection.selection_pressure))


def uniform_from_config(config) -> core.Selector:
  del config
  return uniform()

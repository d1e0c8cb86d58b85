"""``weighted``: fixed, user-given class weights (the official ``weighted_reducible_loss_selection``).

``R[i, c] = model_loss_i − expert_loss_{i,c}`` (clipped at 0 when ``clip``), then
``R[i, c] −= h_c`` (when ``use_holdout``; the official code always subtracts),
``score_i = Σ_c w_c R[i, c]`` with ``w = class_weights / Σ class_weights`` fixed, and k
points taken by ``sampling``:

* ``top_k``: the k largest scores;
* ``power``: ∝ ``(score + |min score|)^β`` (:func:`reducr_jax.core.selection.power_sample`);
* ``softmax``: ∝ ``exp(β · score)``;
* ``rank``: ∝ ``(rank + 1)^(−β)``.

Config: ``config.selection.{class_weights, sampling, beta, clip, use_holdout}``;
``class_weights=()`` means uniform.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import registry
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import core

SAMPLINGS = ("top_k", "power", "softmax", "rank")


class WeightedState(NamedTuple):
  """``weights``: ``float32[C]`` the fixed class weights, normalised to sum 1."""
  weights: jax.Array


def weighted(class_weights: Sequence[float] = (), *, sampling: str = "top_k",
             beta: float = 1.0, clip: bool = False,
             use_holdout: bool = True) -> core.Selector:
  """The rule; raises a one-line ``ValueError`` for bad weights or sampling."""
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, "
                     f"got {sampling!r}")
  given = np.asarray(class_weights, np.float64)
  if given.size and (np.any(~np.isfinite(given)) or np.any(given < 0) or given.sum() <= 0):
    raise ValueError("class_weights must be finite, >= 0 and not all 0, "
                     f"got {tuple(class_weights)}")
  needs = {core.MODEL_LOSS, core.EXPERT_LOSSES}
  if use_holdout:
    needs.add(core.CLASS_HOLDOUT_LOSS)

  def init(num_classes):
    if not given.size:
      return WeightedState(jnp.full((num_classes,), 1.0 / num_classes, jnp.float32))
    if given.size != num_classes:
      raise ValueError(f"class_weights must have one weight per class "
                       f"({num_classes}), got {given.size}")
    return WeightedState(jnp.asarray(given / given.sum(), jnp.float32))

  def select(state, inputs, rng, k):
    r = selection_scores.reducible_losses(inputs.model_loss, inputs.reference_losses, clip=clip)
    if use_holdout:
      r = r - inputs.class_holdout_loss[None, :]
    scores = selection_scores.weighted_scores(r, state.weights)
    if sampling == "top_k":
      return selection.top_k(scores, k), ()
    sample = {"power": selection.power_sample, "softmax": selection.softmax_sample,
              "rank": selection.rank_sample}[sampling]
    return sample(rng, scores, k, beta), ()

  return core.Selector(init=init, select=select,
                       update=lambda state, inputs, indices, aux: state,
                       needs=frozenset(needs), class_weights=lambda state: state.weights)


_FIELDS = {"sampling": "config.selection.sampling",
           "class_weights": "config.selection.class_weights"}


def from_config(config) -> core.Selector:
  s = config.selection
  rule = registry.config_errors(weighted, _FIELDS)(
      tuple(s.class_weights), sampling=s.sampling, beta=float(s.beta), clip=s.clip,
      use_holdout=s.use_holdout)
  return rule._replace(init=registry.config_errors(rule.init, _FIELDS))

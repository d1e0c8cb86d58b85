"""``grad_norm``: importance sampling by the gradient-norm upper bound (Katharopoulos &
Fleuret, 2018), a baseline of RHO-LOSS (Mindermann et al., 2022).

k points are drawn without replacement, each draw ∝ ``‖softmax(logits_i) − onehot(y_i)‖₂``
(:func:`reducr_jax.selection.grad_norm_upper_bound`), the bound on the norm of the loss
gradient w.r.t. the logits. As in RHO-LOSS's comparison, the selected points are trained
on with equal weights (pair with a reweighter for unbiased 1/(B p_i) weights).
"""

from __future__ import annotations

import jax.numpy as jnp

from reducr_jax import selection
from reducr_jax.selectors import core


def grad_norm() -> core.Selector:
  def select(inputs, rng, k):
    bound = selection.grad_norm_upper_bound(inputs.model_logits, inputs.labels)
    return selection.gumbel_top_k(rng, jnp.log(bound), k)
  return core.stateless(select, {core.MODEL_LOGITS})


def from_config(config) -> core.Selector:
  del config
  return grad_norm()

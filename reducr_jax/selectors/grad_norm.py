"""``grad_norm``: selection by the gradient-norm upper bound (Katharopoulos & Fleuret,
2018), a baseline of RHO-LOSS (Mindermann et al., 2022).

The score of point i is ``‖softmax(logits_i) − onehot(y_i)‖₂``
(:func:`reducr_jax.core.selection_scores.grad_norm_upper_bound`), the bound on the norm of the loss
gradient w.r.t. the logits, with ``y_i`` the *class* label (``SelectionInputs.labels``,
never the group of ``config.dataset.groups``: the one-hot is against the class logits).
``config.selection.grad_norm_sampling``:

* ``'top_k'`` (default): the k largest bounds, as the official REDUCR / RHO-LOSS code
  (``gradnorm_ub_selection`` in ``src/curricula/selection_methods.py``: ``top_x_indices``
  of ``torch.norm(probs − one_hot, dim=-1)``);
* ``'proportional'``: k draws without replacement, each ∝ the bound (Katharopoulos &
  Fleuret's importance sampling; not in the official code).

As in RHO-LOSS's comparison, the selected points are trained on with equal weights (pair
``'proportional'`` with a reweighter for unbiased 1/(B p_i) weights).
"""

from __future__ import annotations

import jax.numpy as jnp

from reducr_jax.core import registry
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax.selectors import core

#: ``config.selection.grad_norm_sampling``.
SAMPLINGS = ("top_k", "proportional")


def grad_norm(sampling: str = "top_k") -> core.Selector:
  """The ``grad_norm`` rule with the given ``sampling`` (module docstring)."""
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, "
                     f"got {sampling!r}")

  def select(inputs, rng, k):
    bound = selection_scores.grad_norm_upper_bound(inputs.model_logits, inputs.labels)
    if sampling == "top_k":
      return selection.top_k(bound, k)
    return selection.gumbel_top_k(rng, jnp.log(bound), k)
  return core.stateless(select, {core.MODEL_LOGITS})


def from_config(config) -> core.Selector:
  return registry.config_errors(grad_norm, {"sampling": "config.selection.grad_norm_sampling"})(
      config.selection.get("grad_norm_sampling", "top_k"))

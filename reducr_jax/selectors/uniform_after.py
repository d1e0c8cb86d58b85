"""``uniform_after``: another rule for the first T steps, uniform selection after.

The RHO-LOSS paper's check that a selection rule's benefit is not only early training:
``config.selection.base_method`` (any registered rule but this one) selects while
``step < config.selection.uniform_after_steps``; from step T on the k points are drawn
uniformly and the base rule's state (e.g. REDUCR's class weights) is frozen. The inputs the
base rule needs are still computed after T (one compiled step for the whole run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reducr_jax.core import registry
from reducr_jax.core import selection
from reducr_jax.selectors import core


def uniform_after(base: core.Selector, num_steps: int) -> core.Selector:
  """``base`` for steps ``< num_steps``, uniform after (state frozen)."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError("num_steps must be an int >= 0, got "
                     f"{num_steps!r}")

  def select(state, inputs, rng, k):
    base_idx, aux = base.select(state, inputs, rng, k)
    uniform_idx = selection.uniform_select(rng, inputs.labels.shape[0], k)
    return jnp.where(inputs.step < num_steps, base_idx, uniform_idx), aux

  def update(state, inputs, indices, aux):
    new = base.update(state, inputs, indices, aux)
    return jax.tree.map(lambda a, b: jnp.where(inputs.step < num_steps, a, b), new, state)

  return core.Selector(init=base.init, select=select, update=update, needs=base.needs,
                       class_weights=base.class_weights)


def from_config(config) -> core.Selector:
  s = config.selection
  if s.base_method == "uniform_after":
    raise ValueError("config.selection.base_method cannot be 'uniform_after'")
  base_config = config.copy_and_resolve_references()
  base_config.selection.method = s.base_method
  return registry.config_errors(
      uniform_after, {"num_steps": "config.selection.uniform_after_steps"})(
          core.get(base_config), int(s.uniform_after_steps))

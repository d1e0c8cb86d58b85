"""Weights of the selected points as registered, optax-style transforms.

Selection decides *which* k points the target model trains on; a :class:`Reweighter`
decides *how much* each one counts. The trainer's loss on the selected points is
``Σ_i w_i ℓ_i`` with ``w`` summing to 1 over all k points (over every device)::

    state = reweighter.init(num_classes)
    w, state = reweighter.weights(state, inputs)      # inputs: ReweightInputs

Built-in rules (``config.reweight``):

* ``none``: ``1/k`` each.
* ``class_balanced``: ``∝ 1 / n_y``, ``n_y`` the class's size in the train split.
* ``meta``: Ren et al. (2018), :mod:`reducr_jax.core.meta_reweight` — one virtual SGD step with
  per-example weights ε = 0, gradient of the clean validation loss w.r.t. ε, clipped at 0
  and normalised. ``config.meta.method``: ``jvp`` (one forward-mode pass) or
  ``nested_grad`` (nested ``jax.grad``; equal values). Needs :data:`VALIDATION_BATCH`
  (drawn from the clean holdout split, ``config.meta.val_batch_size`` points per step).
* ``group_dro``: Sagawa et al. (2020) over classes — the class weights ``q`` take one
  exponentiated-gradient step (η = ``config.group_dro.eta``) on the selected points'
  per-class mean losses, then ``w_i = q_{y_i} / n_{y_i}`` (n over the k points).

Every ``weights`` function runs on one device's share of the k points and reduces over
``inputs.axis_name`` where it needs the whole selection (``None`` on one device), so the
weights equal the single-device ones.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from reducr_jax.core import class_weighted_losses
from reducr_jax.core import collectives
from reducr_jax.core import mwu
from reducr_jax.core import group_dro
from reducr_jax.core import meta_reweight
from reducr_jax.core import metrics
from reducr_jax.core import registry

#: ``Reweighter.needs``: a clean validation batch in ``ReweightInputs.validation``.
VALIDATION_BATCH = "validation_batch"
NEEDS = frozenset({VALIDATION_BATCH})


class ReweightInputs(NamedTuple):
  """What a :class:`Reweighter` sees: this device's share of the selected points.

  Attributes:
    params: target-model parameters (``meta`` differentiates through a virtual step).
    loss_fn: ``(params, x, y) -> [n]`` per-example loss in evaluation mode.
    x: ``[k/n, ...]`` this device's selected inputs; labels: ``int[k/n]``.
    num_selected: k over all devices (static int).
    train_class_counts: ``[C]`` class sizes of the train split.
    validation: ``(x [m, ...], y int[m])``, the whole validation batch (every device the
      same), or ``None`` unless :data:`VALIDATION_BATCH` is needed.
    axis_name: the data-parallel axis to reduce over, or ``None``.
  """
  params: Any
  loss_fn: Callable[[Any, jax.Array, jax.Array], jax.Array]
  x: jax.Array
  labels: jax.Array
  num_selected: int
  train_class_counts: jax.Array
  validation: Optional[tuple[jax.Array, jax.Array]] = None
  axis_name: Optional[str] = None


class Reweighter(NamedTuple):
  """A reweighting rule (module docstring).

  Attributes:
    init: ``num_classes -> state`` (``()`` when stateless).
    weights: ``(state, inputs) -> (w [k/n], new_state)``, ``w ≥ 0`` summing to 1 over all
      k (``meta``: or all 0; ``group_dro``: to the ``q`` of the classes among the k).
    needs: a subset of :data:`NEEDS`.
    class_weights: optional ``state -> [C]`` class weights, logged (Group DRO's ``q``).
  """
  init: Callable[[int], Any]
  weights: Callable[[Any, ReweightInputs], tuple[jax.Array, Any]]
  needs: frozenset = frozenset()
  class_weights: Optional[Callable[[Any], jax.Array]] = None


def none() -> Reweighter:
  """Equal weights ``1/k``."""
  return Reweighter(init=lambda c: (), weights=lambda state, inputs: (
      jnp.full(inputs.labels.shape, 1.0 / inputs.num_selected, jnp.float32), state))


def class_balanced() -> Reweighter:
  """``w_i ∝ 1 / n_{y_i}`` (train-split class sizes), normalised over the k points."""
  def weights(state, inputs):
    inv = 1.0 / jnp.asarray(inputs.train_class_counts, jnp.float32)[inputs.labels]
    return inv / collectives.psum(jnp.sum(inv), inputs.axis_name), state
  return Reweighter(init=lambda c: (), weights=weights)


def meta(lr: float, method: str = "jvp") -> Reweighter:
  """Ren et al. (2018) with a virtual SGD step of ``lr`` (module docstring)."""
  if method not in ("jvp", "nested_grad"):
    raise ValueError(f"method must be one of ['jvp', 'nested_grad'], got {method!r}")

  def weights(state, inputs):
    loss_fn = lambda p, s, b: (inputs.loss_fn(p, b[0], b[1]), s)  # noqa: E731
    batch = (inputs.x, inputs.labels)
    if method == "jvp":
      g = meta_reweight.meta_gradient_jvp(loss_fn, inputs.params, (), batch,
                                          inputs.validation, lr)
    else:
      g = meta_reweight.meta_gradient(loss_fn, inputs.params, (), batch, inputs.validation,
                                      meta_reweight.sgd_step(lr))
    return meta_reweight.weights_from_meta_gradient(g, axis_name=inputs.axis_name), state
  return Reweighter(init=lambda c: (), weights=weights, needs=frozenset({VALIDATION_BATCH}))


def group_dro_reweighter(eta: float) -> Reweighter:
  """Group DRO over classes with step size ``eta`` (module docstring)."""
  def weights(log_q, inputs):
    c = log_q.shape[0]
    losses = jax.lax.stop_gradient(inputs.loss_fn(inputs.params, inputs.x, inputs.labels))
    stats = collectives.psum(metrics.class_sums(losses, inputs.labels, c), inputs.axis_name)
    new_log_q = group_dro.ascent_step(log_q, metrics.class_means(stats, 0.0), stats.counts > 0,
                                 eta)
    return group_dro.example_weights(inputs.labels, new_log_q, stats.counts), new_log_q
  return Reweighter(init=mwu.init, weights=weights, class_weights=mwu.weights)


def cross_entropy_loss_fn(apply_fn: Callable) -> Callable:
  """``(params, x, y) -> [n]`` cross-entropy from ``apply_fn(params, x) -> logits``."""
  return lambda params, x, y: class_weighted_losses.cross_entropy(apply_fn(params, x), y)


_RULES = registry.Registry("reweighter", "config.reweight", NEEDS)
#: ``register(name, factory)``: ``factory(config) -> Reweighter`` becomes ``config.reweight=name``.
register = _RULES.register
unregister = _RULES.unregister
names = _RULES.names


def get(config: Any) -> Reweighter:
  """The :class:`Reweighter` named by ``config.reweight`` (one-line ``ValueError`` if unknown)."""
  return _RULES.build(config.reweight, config)


register("none", lambda config: none())
register("class_balanced", lambda config: class_balanced())
register("meta", lambda config: registry.config_errors(
    meta, {"lr": "config.meta.lr", "method": "config.meta.method"})(
        float(config.meta.lr), config.meta.method))
register("group_dro", lambda config: group_dro_reweighter(float(config.group_dro.eta)))

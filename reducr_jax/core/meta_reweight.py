"""Learning to reweight examples (Ren et al., 2018): per-example weights by nested ``jax.grad``.

Each training step, the n examples of the training batch get weights from one look-ahead
("virtual") optimizer step on a clean validation batch (Ren et al., "Learning to Reweight
Examples for Robust Deep Learning", ICML 2018, Algorithm 1, eqs. 4–7):

    ε          = 0 ∈ R^n
    θ'(ε)      = θ − α · ∇_θ Σ_i ε_i ℓ_i(θ)                         (virtual SGD step)
    g          = ∂/∂ε  mean_j ℓ^val_j(θ'(ε)) |_{ε=0}                  ∈ R^n
    w̃_i        = max(−g_i, 0)                                         (eq. 6)
    w_i        = w̃_i / Σ_j w̃_j      (w = 0 when every w̃_i = 0)        (eq. 7)

and the model is then trained on ``Σ_i w_i ℓ_i(θ)`` (:func:`weighted_loss`). Here ``g``
is computed by differentiating through the virtual step with nested ``jax.grad`` (no
hand-derived formula). At first order it equals

    g_i = −α · ⟨∇_θ L_val(θ'), ∇_θ ℓ_i(θ)⟩,      θ' = θ'(0)  (= θ for plain SGD),

so an example is up-weighted in proportion to how well its gradient aligns with the
validation gradient, and an example whose gradient opposes it (e.g. a flipped label) gets
weight 0. The weights are returned under ``stop_gradient``: they are constants for the
training step that uses them (Algorithm 1, lines 11–12).

Batches are arbitrary pytrees; ``loss_fn`` decides what they hold. Three forms share one
implementation (:func:`meta_gradient` + :func:`weights_from_meta_gradient`):

  * :func:`example_weights` — ``loss_fn(params, batch) -> [n]``, virtual SGD step with
    learning rate ``lr`` (the paper).
  * :func:`example_weights_with_state` — ``loss_fn(params, model_state, batch) ->
    ([n], new_model_state)`` for Flax models with mutable collections (BatchNorm
    ``batch_stats``). Choice: both the virtual step and the validation pass call
    ``loss_fn`` with ``model_state`` **as given**; the new states ``loss_fn`` returns are
    discarded (the look-ahead does not advance the running statistics), and only the
    weights are returned. With BatchNorm in training mode (``use_running_average=False``)
    each pass normalises with its own batch's statistics, as the real step does.
  * :func:`example_weights_optax` — the virtual step is ``tx.update`` of an optax
    transformation from the current optimizer state. For a stateful model, compose
    ``weights_from_meta_gradient(meta_gradient(loss_fn, params, model_state, train, val,
    optax_step(tx, opt_state)))``.

Optimizers in the look-ahead (verified in ``tests/test_meta_reweight.py``). The ε-gradient
is taken at ε = 0, where the look-ahead's training gradient is exactly 0, so what matters
is the transformation's derivative at a zero gradient:

  * ``optax.sgd(lr)`` gives exactly :func:`example_weights` with ``lr``.
  * SGD with momentum (heavy-ball or Nesterov) is affine in the gradient: the ε-gradient is
    ``−α_eff · ⟨∇L_val(θ'), ∇ℓ_i(θ)⟩`` with ``θ' = θ + (update of the momentum alone)`` and
    ``α_eff = lr`` (heavy-ball) or ``lr·(1 + μ)`` (Nesterov); from a fresh state (zero
    momentum, θ' = θ) the weights equal SGD's.
  * Adam/AdamW normalise by ``sqrt(v̂) + eps``. Where ``v = 0`` (a fresh state, or any
    parameter whose gradient has always been exactly 0, e.g. an unused feature or a dead
    unit) the derivative of ``sqrt`` at 0 is infinite and meets a zero cotangent: the
    ε-gradient, hence every weight, is **NaN**. With ``eps_root > 0`` a fresh state gives a
    uniform scale ``1/(sqrt(eps_root) + eps)``, so the weights equal SGD's (not
    sign-based: at ε = 0 the gradient being normalised is 0, the linear regime). Once every
    ``v > 0`` the weights use the preconditioned inner product
    ``⟨∇L_val(θ'), diag(1/(sqrt(v̂) + eps)) ∇ℓ_i⟩``, which is well defined but no longer
    Ren et al.'s criterion. RMSProp (``eps`` inside the ``sqrt``) and Adagrad (positive
    initial accumulator) are finite from the first step; from a fresh state their
    preconditioner is uniform, so the weights equal SGD's.
  * ``optax.clip_by_global_norm`` in the chain gives **NaN** weights (its norm is 0 at a
    zero gradient; ``0/0`` in the untaken branch of its ``where``): leave clipping out of
    the look-ahead — it is inactive at ε = 0 anyway.
  * Sign-based updates (``optax.lion``) have zero derivative: every weight is 0.

So use :func:`example_weights` (plain SGD look-ahead, the paper; Ren et al. train with
momentum SGD but look ahead with SGD) unless there is a reason to precondition.

Cost: one forward + backward on the training batch, the virtual step, a forward +
backward on the validation batch, and the transpose of the training backward pass w.r.t.
ε; about 3× a plain step (see ``benchmarks/meta_reweight.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax.core import checks

Params = Any
Batch = Any
#: ``loss_fn(params, batch) -> per-example losses [n]``.
LossFn = Callable[[Params, Batch], jax.Array]
#: ``loss_fn(params, model_state, batch) -> (per-example losses [n], new_model_state)``.
StatefulLossFn = Callable[[Params, Any, Batch], tuple[jax.Array, Any]]
#: ``virtual_step(params, grads) -> new params``: the look-ahead update.
VirtualStep = Callable[[Params, Params], Params]


def sgd_step(lr) -> VirtualStep:
  """Virtual SGD step ``θ − lr · g`` (Ren et al. eq. 4).

  Args:
    lr: learning rate α > 0, a Python float or a traced scalar.

  Returns:
    a :data:`VirtualStep`.
  """
  checks.check_shape("lr", lr, (), "a scalar")
  checks.check_in_range("lr", lr, 0.0, low_inclusive=False)
  return lambda params, grads: jax.tree.map(lambda p, g: p - lr * g, params, grads)


def optax_step(tx: optax.GradientTransformation, opt_state: optax.OptState) -> VirtualStep:
  """Virtual step ``optax.apply_updates(θ, tx.update(g, opt_state, θ)[0])``.

  The new optimizer state is discarded. See the module docstring for which
  transformations give meaningful (finite) ε-gradients.

  Args:
    tx: an optax gradient transformation (static).
    opt_state: its current state, ``tx.init(params)`` or later.

  Returns:
    a :data:`VirtualStep`.
  """
  if not (hasattr(tx, "update") and callable(tx.update)):
    raise ValueError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")

  def step(params, grads):
    updates, _ = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates)

  return step


def _check_same_features(train_batch: Batch, val_batch: Batch) -> None:
  """``val_batch`` has ``train_batch``'s fields with the same per-example shapes (any
  number of examples), checked before tracing (else a deep shape error of ``loss_fn``)."""
  t_leaves, t_def = jax.tree.flatten(train_batch)
  v_leaves, v_def = jax.tree.flatten(val_batch)
  if t_def != v_def:
    raise ValueError(f"val_batch must have train_batch's structure, got {v_def} and {t_def}")
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      train_batch)[0]]
  for path, t, v in zip(paths, t_leaves, v_leaves):
    if np.shape(t)[1:] != np.shape(v)[1:]:
      raise ValueError(f"val_batch{path} must have train_batch{path}'s per-example shape "
                       f"{tuple(np.shape(t)[1:])}, got {tuple(np.shape(v)[1:])}")


def _losses_shape(name: str, loss_fn: StatefulLossFn, params, model_state, batch):
  """Checks ``loss_fn``'s output structure (abstractly) → its ``ShapeDtypeStruct``."""
  try:
    out = jax.eval_shape(loss_fn, params, model_state, batch)
  except (TypeError, ValueError) as e:       # e.g. params for other features: one line
    raise ValueError(f"loss_fn(params, model_state, {name}) cannot be traced: "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                     ) from None
  if not (isinstance(out, (tuple, list)) and len(out) == 2):
    raise ValueError("loss_fn must return (per_example_losses [n], new_model_state), "
                     f"got {type(out).__name__}")
  losses = out[0]
  if not hasattr(losses, "shape"):
    raise ValueError(f"loss_fn must return per-example losses [n] on {name}, "
                     f"got {type(losses).__name__}")
  if len(losses.shape) != 1:
    raise ValueError(f"loss_fn must return per-example losses of shape [n] on {name}, "
                     f"got shape {tuple(losses.shape)}")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise ValueError(f"loss_fn must return floating per-example losses on {name}, "
                     f"got dtype {losses.dtype}")
  return losses


def meta_gradient(loss_fn: StatefulLossFn, params: Params, model_state: Any,
                  train_batch: Batch, val_batch: Batch, virtual_step: VirtualStep) -> jax.Array:
  """Raw ε-gradient ``g = ∂ mean_j ℓ^val_j(θ'(ε)) / ∂ε`` at ε = 0 (Ren et al. eq. 5).

  ``θ'(ε) = virtual_step(θ, ∇_θ Σ_i ε_i ℓ_i(θ))``, differentiated with nested
  ``jax.grad``. Both passes call ``loss_fn`` with ``model_state`` as given; the states it
  returns are discarded.

  Args:
    loss_fn: ``(params, model_state, batch) -> (per-example losses [n], new_state)``,
      static.
    params: model parameters (pytree).
    model_state: non-trainable collections (pytree; ``()`` or ``{}`` if none).
    train_batch: pytree whose per-example losses are ``[n]``.
    val_batch: pytree of ``m ≥ 1`` validation examples.
    virtual_step: the look-ahead update, e.g. :func:`sgd_step` or :func:`optax_step`.

  Returns:
    ``[n]`` (float32 or the losses' wider float dtype). Negative entries mark helpful
    examples.
  """
  if not callable(loss_fn):
    raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
  _check_same_features(train_batch, val_batch)
  losses = _losses_shape("train_batch", loss_fn, params, model_state, train_batch)
  _losses_shape("val_batch", loss_fn, params, model_state, val_batch)
  n = losses.shape[0]
  dtype = jnp.promote_types(losses.dtype, jnp.float32)

  def val_loss(eps):
    def weighted_train_loss(p):
      per_example, _ = loss_fn(p, model_state, train_batch)
      return jnp.sum(eps * per_example.astype(dtype))

    new_params = virtual_step(params, jax.grad(weighted_train_loss)(params))
    val_losses, _ = loss_fn(new_params, model_state, val_batch)
    return jnp.mean(val_losses.astype(dtype))

  return jax.grad(val_loss)(jnp.zeros((n,), dtype))


def meta_gradient_jvp(loss_fn: StatefulLossFn, params: Params, model_state: Any,
                      train_batch: Batch, val_batch: Batch, lr) -> jax.Array:
  """The SGD look-ahead's ε-gradient in one forward-mode pass: equal to :func:`meta_gradient`.

  For ``θ'(ε) = θ − lr · ∇_θ Σ_i ε_i ℓ_i(θ)`` the chain rule at ε = 0 (where θ' = θ)
  gives exactly ``g_i = −lr · ⟨∇_θ L_val(θ), ∇_θ ℓ_i(θ)⟩``: one ``jax.grad`` of the
  validation loss, then one ``jax.jvp`` of the per-example training losses in that
  direction. It skips the inner backward pass that nested ``jax.grad`` spends on
  ``∇_θ Σ ε_i ℓ_i`` (identically 0 at ε = 0): ≈ 2.2–2.4× a plain step instead of ≈ 2.9×
  (``benchmarks/meta_reweight.py``). Only for the SGD look-ahead.

  Args and returns: as :func:`meta_gradient`, with ``lr`` the virtual SGD learning rate.
  """
  checks.check_shape("lr", lr, (), "a scalar")
  checks.check_in_range("lr", lr, 0.0, low_inclusive=False)
  _check_same_features(train_batch, val_batch)
  losses = _losses_shape("train_batch", loss_fn, params, model_state, train_batch)
  _losses_shape("val_batch", loss_fn, params, model_state, val_batch)
  dtype = jnp.promote_types(losses.dtype, jnp.float32)
  val_grad = jax.grad(
      lambda p: jnp.mean(loss_fn(p, model_state, val_batch)[0].astype(dtype)))(params)
  _, dots = jax.jvp(lambda p: loss_fn(p, model_state, train_batch)[0].astype(dtype),
                    (params,), (val_grad,))
  return -lr * dots


def weights_from_meta_gradient(meta_grad: jax.Array,
                               axis_name: Optional[str] = None) -> jax.Array:
  """``w = max(−g, 0) / Σ max(−g, 0)``; all-zero stays all-zero (Ren et al. eqs. 6–7).

  Args:
    meta_grad: ``[n]`` from :func:`meta_gradient`.
    axis_name: under ``pmap``/``shard_map``, normalise over the examples of every device
      on this axis (the sum is ``psum``-ed), so the weights of a data-parallel batch sum
      to 1 in total.

  Returns:
    ``[n]`` non-negative weights summing to 1 (or all 0), under ``stop_gradient``. A NaN
    in ``meta_grad`` makes every weight NaN.
  """
  checks.check_shape("meta_grad", meta_grad, (None,), "[n]")
  clipped = jnp.maximum(-meta_grad, 0.0)
  total = jnp.sum(clipped)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  weights = clipped / jnp.where(total > 0, total, 1.0)
  return jax.lax.stop_gradient(weights)


def example_weights_with_state(loss_fn: StatefulLossFn, params: Params, model_state: Any,
                               train_batch: Batch, val_batch: Batch, lr) -> jax.Array:
  """Ren et al. weights for a model with mutable state (e.g. BatchNorm ``batch_stats``).

  The virtual SGD step and the validation pass run with ``model_state`` as given (the
  look-ahead does not update it; the new states ``loss_fn`` returns are discarded).

  Args:
    loss_fn: ``(params, model_state, batch) -> (per-example losses [n], new_state)``,
      static, e.g. a Flax ``apply(..., mutable=["batch_stats"])`` plus a loss.
    params: model parameters.
    model_state: the non-trainable collections, e.g. ``{"batch_stats": ...}``.
    train_batch: training batch (pytree, n examples).
    val_batch: clean validation batch (pytree).
    lr: virtual-step learning rate α > 0 (float or traced scalar).

  Returns:
    ``[n]`` weights ≥ 0 summing to 1, or all 0 when no example helps.
  """
  return weights_from_meta_gradient(
      meta_gradient(loss_fn, params, model_state, train_batch, val_batch, sgd_step(lr)))


def _stateless(loss_fn: LossFn) -> StatefulLossFn:
  if not callable(loss_fn):
    raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
  return lambda params, state, batch: (loss_fn(params, batch), state)


def example_weights(loss_fn: LossFn, params: Params, train_batch: Batch, val_batch: Batch,
                    lr) -> jax.Array:
  """Ren et al. (2018) per-example weights from one virtual SGD step.

  ``w = normalise(max(−∂ mean_j ℓ^val_j(θ − α ∇_θ Σ_i ε_i ℓ_i(θ)) / ∂ε |_{ε=0}, 0))``,
  see the module docstring. Jit with ``loss_fn`` bound, e.g.
  ``jax.jit(functools.partial(example_weights, loss_fn))``.

  Args:
    loss_fn: ``(params, batch) -> per-example losses [n]``, static.
    params: model parameters (pytree).
    train_batch: training batch (pytree, n examples).
    val_batch: clean validation batch (pytree).
    lr: virtual-step learning rate α > 0 (float or traced scalar).

  Returns:
    ``[n]`` weights ≥ 0 summing to 1, or all 0 when no example's gradient aligns with
    the validation gradient.
  """
  return example_weights_with_state(_stateless(loss_fn), params, (), train_batch,
                                    val_batch, lr)


def example_weights_optax(loss_fn: LossFn, params: Params, opt_state: optax.OptState,
                          tx: optax.GradientTransformation, train_batch: Batch,
                          val_batch: Batch) -> jax.Array:
  """Per-example weights with the virtual step taken by an optax transformation.

  ``θ'(ε) = apply_updates(θ, tx.update(∇_θ Σ_i ε_i ℓ_i, opt_state, θ))``. With
  ``optax.sgd(lr)`` this is :func:`example_weights`; which other transformations give
  finite, meaningful weights is in the module docstring (Adam with a fresh state and
  anything with ``clip_by_global_norm`` give NaN).

  Args:
    loss_fn: ``(params, batch) -> per-example losses [n]``, static.
    params: model parameters.
    opt_state: the optimizer's current state (``tx.init(params)`` or later).
    tx: the optax transformation (static; bind it with a closure under ``jit``).
    train_batch: training batch (pytree, n examples).
    val_batch: clean validation batch (pytree).

  Returns:
    ``[n]`` weights ≥ 0 summing to 1, or all 0.
  """
  return weights_from_meta_gradient(
      meta_gradient(_stateless(loss_fn), params, (), train_batch, val_batch,
                    optax_step(tx, opt_state)))


def weighted_loss(per_example_losses: jax.Array, weights: jax.Array) -> jax.Array:
  """Reweighted training loss ``Σ_i w_i ℓ_i`` (Ren et al. Algorithm 1, line 11) → scalar.

  Args:
    per_example_losses: ``[n]``.
    weights: ``[n]``, e.g. from :func:`example_weights` (already normalised, so this is
      on the scale of a mean loss).
  """
  checks.check_shape("per_example_losses", per_example_losses, (None,), "[n]")
  n = np.shape(per_example_losses)[0]
  checks.check_shape("weights", weights, (n,), f"[n={n}] (n from per_example_losses)")
  return jnp.sum(weights * per_example_losses)

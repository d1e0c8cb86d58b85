"""One optimizer step of the C stacked experts (eq. 8), or of a multi-head model.

The C updates run over the stacked parameters, optimizer states and class index
(:class:`reducr_jax.core.stacked_experts.ExpertsState`) with the strategies of
:func:`reducr_jax.core.stacked_experts.map_experts`; ``map`` and ``vmap`` in chunks update the
stacked state in place (:func:`_update_in_place`). The same step, with γ = 0 and a small
learning rate, is the online update of the reference models on the selected points
(:func:`update_on_selected`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from reducr_jax.core import checks
from reducr_jax.core import conv_layout
from reducr_jax.core.class_weighted_losses import class_weighted_loss
from reducr_jax.core.class_weighted_losses import class_weights_for
from reducr_jax.core.class_weighted_losses import cross_entropy
from reducr_jax.core.class_weighted_losses import multihead_loss
from reducr_jax.core.class_weighted_losses import NORMALISATIONS
from reducr_jax.core import groups as groups_lib
from reducr_jax.core.stacked_experts import ApplyFn
from reducr_jax.core.stacked_experts import ExpertsState
from reducr_jax.core.stacked_experts import map_experts
from reducr_jax.core.stacked_experts import num_experts
from reducr_jax.core.stacked_experts import TrainApplyFn


def experts_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, state: ExpertsState,
                       x: jax.Array, y: jax.Array, gamma, *,
                       train_apply_fn: Optional[TrainApplyFn] = None,
                       rng: Optional[jax.Array] = None, strategy: str = "vmap", chunk: int = 0,
                       axis_name: Optional[str] = None,
                       microbatches: int = 1, group_of=None,
                       normalisation: str = "mean",
                       canonical_convs: Optional[bool] = None) -> tuple[ExpertsState, jax.Array]:
  """One optimizer step of all C experts at once on the same holdout batch.

  Expert ``c`` minimises :func:`class_weighted_loss` with ``expert_class = c``; the C
  updates run over stacked params, optimizer states and class index with
  :func:`map_experts` (``strategy``, ``chunk``). Jit with ``apply_fn``, ``tx``,
  ``strategy`` and ``chunk`` static (e.g. ``jax.jit(functools.partial(experts_train_step,
  apply_fn, tx))``).

  Data parallel: under ``pmap`` (or ``shard_map``) over ``axis_name``, ``x``/``y`` are
  this device's equal share of the batch; gradients and losses are averaged over the axis
  (``pmean``), so the update equals the one-device update on the whole batch (up to float
  summation order) — with batch norm, build ``train_apply_fn`` with the same
  ``axis_name`` so its statistics are those of the whole batch too.

  Args:
    apply_fn: ``(params, x) -> logits [B, K]`` of one model.
    tx: the optax optimizer (same for every expert).
    state: :class:`ExpertsState` with leading axis C.
    x: ``[B, ...]`` inputs; y: ``int[B]`` labels.
    gamma: γ ≥ 0.
    train_apply_fn: for models with state or dropout,
      ``(params, model_state, x, rng) -> (logits, new_model_state)`` in training mode
      (:attr:`reducr_jax.models.ModelFns.apply_train`); then ``apply_fn`` is unused and
      each expert's batch-norm statistics are its own (no cross-expert averaging).
    rng: key for dropout (split per expert); unused by deterministic models.
    strategy, chunk: see :func:`map_experts`.
    axis_name: the mapped device axis to average gradients over (``None``: one device).
    microbatches: m ≥ 1 dividing B: each expert's gradient is accumulated over m slices
      of B/m (``lax.scan``), so only B/m examples' activations are live — the same
      update up to float order, except that batch norm normalises (and updates its
      running statistics) per slice and dropout draws a key per slice.
    group_of: ``None`` (expert c up-weights class c), or int [K] class → group for
      ``config.dataset.groups``: expert g (C = G experts) up-weights the classes of group g.
    canonical_convs: where an expert's gradient runs inside a loop (``map``, ``vmap`` in
      chunks, ``microbatches`` > 1), emit its convolutions in NHWC / HWIO order
      (:func:`reducr_jax.core.conv_layout.canonical_convs`): XLA:CPU canonicalises them only
      at the top level of a program, and inside a loop falls back to a naive kernel that
      is 8–70× slower. ``None``: on the CPU backend (``jax.default_backend()``); pass the
      target's answer when compiling ahead of time for another backend.

  Returns:
    ``(new_state, losses[C])`` with each expert's γ-weighted training loss.
  """
  checks.check_in_range("gamma", gamma, 0.0)
  c = num_experts(state.params)

  m = int(microbatches)
  if m < 1 or x.shape[0] % m:
    raise ValueError(f"microbatches must be >= 1 and divide the batch {x.shape[0]}, got {m}")

  if normalisation not in NORMALISATIONS:
    raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got "
                     f"{normalisation!r}")

  # XLA:CPU's fast convolutions need canonical dimension numbers inside loops.
  in_loop = m > 1 or strategy == "map" or (strategy == "vmap" and 0 < chunk < c)
  if canonical_convs is None:
    canonical_convs = jax.default_backend() == "cpu"
  canonical = bool(canonical_convs) and in_loop

  def one(args):
    params, opt_state, model_state, expert_class, key = args
    # "weight_sum": Σwℓ / Σw over the *whole* batch (all devices, all microbatches), as on
    # one device: each slice's mean(wℓ) is scaled by B_local / pmean(Σ_local w), so the
    # pmean over devices of the microbatch average is Σ_all wℓ / Σ_all w.
    scale = 1.0
    if normalisation == "weight_sum":
      units = groups_lib.group_labels(y, group_of)
      w_sum = jnp.sum(class_weights_for(units, expert_class, gamma))
      if axis_name is not None:
        w_sum = jax.lax.pmean(w_sum, axis_name)
      scale = y.shape[0] / w_sum

    def loss_fn(p, model_state, xb, yb, key):
      if train_apply_fn is None:
        logits, new_model_state = apply_fn(p, xb), model_state
      else:
        logits, new_model_state = train_apply_fn(p, model_state, xb, key)
      loss = class_weighted_loss(cross_entropy(logits, yb),
                                 groups_lib.group_labels(yb, group_of),
                                 expert_class, gamma)
      return loss * scale, new_model_state
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if canonical:
      grad_fn = conv_layout.canonical_convs(grad_fn)
    if m == 1:
      (loss, model_state), grads = grad_fn(params, model_state, x, y, key)
    else:
      def accumulate(carry, xs):
        loss_sum, grad_sum, ms = carry
        xb, yb, i = xs
        (l, ms), g = grad_fn(params, ms, xb, yb, jax.random.fold_in(key, i))
        return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g), ms), None
      slices = (x.reshape((m, -1) + x.shape[1:]), y.reshape((m, -1)), jnp.arange(m))
      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, grads, model_state), _ = jax.lax.scan(
          accumulate, (jnp.zeros((), jnp.float32), zeros, model_state), slices)
      loss, grads = loss / m, jax.tree.map(lambda g: g / m, grads)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, c)
  if strategy == "map":
    return _update_in_place(one, state, keys)
  if strategy == "vmap" and 0 < chunk < c and c % chunk == 0:
    return _update_in_place(one, state, keys, chunk)
  params, opt_state, model_state, losses = map_experts(
      one, (state.params, state.opt_state, state.model_state,
            jnp.arange(c, dtype=jnp.int32), keys), strategy, chunk)
  return ExpertsState(params, opt_state, model_state), losses


def _update_in_place(one: Callable[[Any], Any], state: ExpertsState, keys: jax.Array,
                     chunk: int = 1) -> tuple[ExpertsState, jax.Array]:
  """``map`` (``chunk`` = 1) or ``vmap`` in chunks of ``chunk`` | C for the training step:
  a ``fori_loop`` over the chunks whose carry is the stacked state, each chunk's slice
  read, updated and written back with ``dynamic_update_slice``, in place.

  Why not ``lax.map``: it stacks its outputs into fresh buffers, a second copy of the whole
  stacked state (params + AdamW moments: 1.75 GiB for 14 ResNet-18s) that XLA cannot alias
  with the donated input.

  Why the ``lax.cond``: without it XLA fuses the reads of the *old* moments (the slice of
  the stacked ``mu``/``nu``) into the fusion that writes the new parameters, so the
  moments' in-place writes must wait for it and copy insertion copies the whole stacked
  ``mu`` and ``nu`` twice per iteration (optax AdamW; plain SGD has no moments and no
  copies). A conditional is a fusion boundary, so the chunk's slice is read into its own
  small buffer first. (``optimization_barrier`` does not help: XLA:CPU drops it before
  fusion.) XLA:CPU memory analysis, 14 small ResNets, AdamW, B = 32 in 4 slices: temp
  45.7 → 11.3 MiB, no stacked copies left; 14 ResNet-18s at 224 px: see
  ``benchmarks/README.md``.

  On CPU the loop body is no longer a program's entry computation, where XLA:CPU makes
  convolutions canonical for its Eigen kernels; :func:`experts_train_step` therefore emits the
  gradient's convolutions canonical itself (``canonical_convs``), else each expert's step
  here ran 4–73× slower than the same step at the top level (issue 23).
  """
  c, n = keys.shape[0], int(chunk)
  if c % n:
    raise ValueError(f"chunk must divide the {c} experts for an in-place update, got {n}")
  fn = one if n == 1 else jax.vmap(one)

  def take(a, start):
    if n == 1:
      return jax.lax.dynamic_index_in_dim(a, start, 0, keepdims=False)
    return jax.lax.dynamic_slice_in_dim(a, start, n, 0)

  def put(a, v, start):
    return jax.lax.dynamic_update_slice_in_dim(a, v if n > 1 else v[None], start, 0)

  def body(j, carry):
    stacked, losses = carry
    start = (j * n).astype(jnp.int32)
    index = start if n == 1 else start + jnp.arange(n, dtype=jnp.int32)
    args = (*jax.tree.map(lambda a: take(a, start), stacked), index, take(keys, start))
    shapes = jax.eval_shape(fn, args)
    # j >= 0 always holds; XLA does not fold it, so the branch stays a conditional.
    p, o, ms, loss = jax.lax.cond(
        j >= 0, fn, lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
        args)
    stacked = jax.tree.map(lambda a, v: put(a, v, start), stacked, (p, o, ms))
    return stacked, put(losses, loss.astype(losses.dtype), start)

  stacked = (state.params, state.opt_state, state.model_state)
  (params, opt_state, model_state), losses = jax.lax.fori_loop(
      0, c // n, body, (stacked, jnp.zeros((c,), jnp.float32)))
  return ExpertsState(params, opt_state, model_state), losses


def multihead_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, params: Any,
                         opt_state: Any, x: jax.Array, y: jax.Array, gamma, *,
                         model_state: Any = None,
                         train_apply_fn: Optional[TrainApplyFn] = None,
                         rng: Optional[jax.Array] = None,
                         axis_name: Optional[str] = None, group_of=None,
                         normalisation: str = "mean"):
  """One optimizer step of a :class:`MultiHead` on :func:`multihead_loss` (``group_of``
  and ``normalisation`` as there).

  ``apply_fn(params, x) -> [B, C, K]``; ``train_apply_fn`` (``(params, model_state, x,
  rng) -> (logits, new_model_state)``) for models with batch norm or dropout. Returns
  ``(params, opt_state, loss, model_state)`` always (``model_state`` as given without
  ``train_apply_fn``).
  ``axis_name``: data parallel as in :func:`experts_train_step` (gradients ``pmean``-ed).
  """
  checks.check_in_range("gamma", gamma, 0.0)

  def loss_fn(p):
    if train_apply_fn is None:
      return (multihead_loss(apply_fn(p, x), y, gamma, group_of, normalisation, axis_name),
              model_state)
    logits, new_model_state = train_apply_fn(p, model_state, x, rng)
    return (multihead_loss(logits, y, gamma, group_of, normalisation, axis_name),
            new_model_state)

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if axis_name is not None:
    grads, loss = jax.lax.pmean((grads, loss), axis_name)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return params, opt_state, loss, new_model_state


def update_on_selected(apply_fn: ApplyFn, tx: optax.GradientTransformation,
                       state: ExpertsState, x: jax.Array, y: jax.Array, gamma, *,
                       train_apply_fn: Optional[TrainApplyFn] = None,
                       rng: Optional[jax.Array] = None, axis_name: Optional[str] = None,
                       stacked: bool = True, group_of=None,
                       normalisation: str = "mean") -> ExpertsState:
  """One step of the reference models on the points just selected (online update).

  The official REDUCR code's ``update_irreducible``: the amortised experts keep learning
  from the target model's selected points, with a small learning rate in ``tx`` (official
  lr/100 of the target's optimizer) and ``gamma = 0`` (the official unweighted mean
  cross-entropy; :func:`reducr_jax.train.references.online_update`). Stacked experts
  (``stacked=True``, leading axis C, each with its eq.-8 γ weighting; one expert with
  γ = 0 is RHO-LOSS's irreducible-loss model) take :func:`experts_train_step`; a :class:`MultiHead` model (``stacked=False``) takes
  :func:`multihead_train_step`.

  Args:
    apply_fn, tx, gamma, train_apply_fn, rng, normalisation: as :func:`experts_train_step`.
    state: :class:`ExpertsState` (``model_state`` ``{}``/``None`` for stateless models).
    x: ``[k, ...]`` selected inputs (this device's share under ``pmap``); y: ``int[k]``.
    axis_name: average gradients over this ``pmap`` axis.

  Returns:
    the updated :class:`ExpertsState`.
  """
  if stacked:
    return experts_train_step(apply_fn, tx, state, x, y, gamma,
                              train_apply_fn=train_apply_fn, rng=rng, axis_name=axis_name,
                              group_of=group_of, normalisation=normalisation)[0]
  out = multihead_train_step(apply_fn, tx, state.params, state.opt_state, x, y, gamma,
                             model_state=state.model_state, train_apply_fn=train_apply_fn,
                             rng=rng, axis_name=axis_name, group_of=group_of,
                             normalisation=normalisation)
  return ExpertsState(out[0], out[1], out[3])

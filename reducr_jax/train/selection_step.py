"""The stage-2 step: one online-batch-selection update, pure and ``pmap``-able.

:func:`train_step` is one step on one device's shard of the large batch (under ``pmap``,
:func:`make_train_step`), or on the whole batch without a mapped axis. It knows no rule:
the selector (:mod:`reducr_jax.selectors`) and the reweighter
(:mod:`reducr_jax.reweighters`) in its static :class:`reducr_jax.train.train_state.StepConfig`
decide what it computes.

Data parallelism and global selection. The large batch of B points is split across the
``n`` devices (B/n each). Every device computes the model loss (and reference losses)
of its own B/n points; these ``[B/n]`` / ``[B/n, C]`` arrays are ``all_gather``-ed, so every
device holds the same ``[B]`` scores and takes the same global top-k (same rng too: the
key is ``fold_in(state.rng, step)``). The MWU update is computed from the gathered values,
so the class weights are identical on every device without any extra communication.
Device ``d`` then trains on selected points ``d·k/n … (d+1)·k/n − 1`` (inputs gathered
from the large batch); each device's loss is the weighted sum over its points (weights
summing to 1 over all k, :mod:`reducr_jax.reweighters`) and gradients are ``psum``-ed: the
update equals the single-device update on the same k points, up to float summation order.
With several processes (hosts) the same holds over all devices of all processes; each
process feeds only its own rows of every batch (:func:`reducr_jax.data.sampling.process_rows`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from reducr_jax.core import registry
from reducr_jax import models
from reducr_jax import reweighters
from reducr_jax import selectors
from reducr_jax.core import class_weighted_losses
from reducr_jax.core import collectives
from reducr_jax.core import groups as groups_lib
from reducr_jax.core import metrics
from reducr_jax.core import mwu
from reducr_jax.data import augment as augment_lib
from reducr_jax.run import divergence
from reducr_jax.train import sharding
from reducr_jax.train.train_state import StepConfig, TrainState

AXIS = sharding.AXIS


def _class_holdout_loss(state: TrainState, batch: dict, apply_fn, cfg: StepConfig,
                        axis_name: Optional[str] = AXIS):
  """``(h [C], new EMA state)``: the last full pass ('epoch') or the EMA updated with this
  step's holdout batch ('ema', App. A.9.4)."""
  if cfg.holdout_loss != "ema":
    return state.holdout_loss, state.ema
  h_loss = class_weighted_losses.cross_entropy(apply_fn(state.params, batch["holdout_x"]),
                                               batch["holdout_y"])
  units = groups_lib.group_labels(batch["holdout_y"], cfg.group_of)
  stats = collectives.psum(metrics.class_sums(h_loss, units, cfg.num_classes), axis_name)
  ema = mwu.ema_update(state.ema, stats, cfg.ema_decay)
  return mwu.ema_value(ema, cfg.ema_decay), ema


def train_step(state: TrainState, batch: dict, ref_params: Any, *, model,
               ref_loss_fn: Optional[Callable], tx: optax.GradientTransformation,
               cfg: StepConfig, axis_name: Optional[str] = AXIS) -> tuple[TrainState, dict]:
  """One online-batch-selection step on one device's shard (under ``pmap``), or on the
  whole batch without a mapped axis (``axis_name=None``).

  augment → the losses the selector needs (all-gathered) → ``select`` → ``update`` →
  reweight → gradient step on the selected points. The step knows no rule: what it
  computes is decided by ``cfg.selector.needs`` and ``cfg.reweighter.needs``.

  Args:
    state: this device's replica of the :class:`TrainState`.
    batch: ``x [b, ...]``, ``y int[b]`` (b = B/n), plus ``ref_losses [b, C']`` when
      ``cfg.reference == 'table'``, ``corrupted bool[b]`` (label differs from the clean one;
      adds metric ``selected_corrupted_share``), ``holdout_x``/``holdout_y`` for the 'ema' estimator
      and ``meta_x``/``meta_y`` for a reweighter that needs a validation batch.
    ref_params: reference-model params for ``cfg.reference == 'online'`` (else unused;
      with ``cfg.reference_update`` the updated ones in ``state.reference`` are used).
    model: :class:`reducr_jax.models.ModelFns` (or a stateless ``apply_fn(params, x)``).
      Scores, the class-holdout loss and the reweighting use evaluation mode (running
      batch-norm statistics, no dropout); the update on the selected points uses training
      mode, batch statistics over all k selected points (cross-device), and updates
      ``state.model_state``.
    ref_loss_fn: ``(ref_params, x, y) -> [b, C']``.
    tx: optimizer; cfg: static :class:`StepConfig`.
    axis_name: the mapped device axis (``pmap``: :func:`make_train_step`), or ``None``
      for one device without ``pmap`` (e.g. ``jax.jit``; needs ``cfg.num_devices == 1``
      and a model built with ``axis_name=None``): gathers, sums and the selected-row
      exchange are then the identity, and the numbers equal the 1-device ``pmap`` step's.

  The large batch is augmented on device first (``cfg.augment``, keyed by the step and
  each example's global position, so independent of the device count).

  Returns:
    ``(new_state, step_metrics)``; metrics are identical on every device.
  """
  n, k, c = cfg.num_devices, cfg.k, cfg.num_classes
  if axis_name is None and n != 1:
    raise ValueError(f"axis_name=None runs on one device: cfg.num_devices must be 1, got {n}")
  kd = k // n
  needs = cfg.needs
  fns = models.as_model_fns(model)
  apply_fn = lambda p, xb: fns.apply(models.variables(p, state.model_state), xb)  # noqa: E731
  gather = lambda a: collectives.gather_rows(a, axis_name)  # noqa: E731
  key = jax.random.fold_in(state.rng, state.step)
  device = collectives.device_index(axis_name)
  x, y = batch["x"], batch["y"]
  if cfg.augment != "none":
    b = y.shape[0]
    x = augment_lib.augment(jax.random.fold_in(key, 1), x, device * b + jnp.arange(b),
                            cfg.augment)
  y_all = gather(y)
  out = {}

  units_all = groups_lib.group_labels(y_all, cfg.group_of)   # y_all unless dataset.groups
  # Class labels for rules that compare them with logits (grad_norm), groups for the
  # per-unit columns (experts, MWU); the official code passes `target` and `categories`.
  inputs = selectors.SelectionInputs(labels=y_all, group_labels=units_all, step=state.step)
  if needs & {selectors.MODEL_LOSS, selectors.MODEL_LOGITS}:
    logits = apply_fn(state.params, x)
    model_loss_all = gather(class_weighted_losses.cross_entropy(logits, y))
    out["large_batch_loss"] = jnp.mean(model_loss_all)
    inputs = inputs._replace(model_loss=model_loss_all)
    if selectors.MODEL_LOGITS in needs:
      inputs = inputs._replace(model_logits=gather(logits))
  if selectors.MC_LOGITS in needs:   # K dropout passes, one at a time (memory of one pass)
    mc_keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 4), device),
                               cfg.mc_passes)
    variables_now = models.variables(state.params, state.model_state)
    mc = jax.lax.map(lambda kk: fns.apply_mc(variables_now, x, kk), mc_keys)  # [K, b, C]
    inputs = inputs._replace(mc_logits=collectives.gather_rows(mc, axis_name, axis=1))

  if cfg.reference == "table":
    inputs = inputs._replace(reference_losses=gather(batch["ref_losses"]))
  elif cfg.reference == "online":
    live = state.reference.params if cfg.reference_update is not None else ref_params
    inputs = inputs._replace(reference_losses=gather(ref_loss_fn(live, x, y)))
  if inputs.reference_losses is not None:    # mean [B, C'] reference loss; moves as they learn
    out["reference_loss"] = jnp.mean(inputs.reference_losses)

  new_ema = state.ema
  if selectors.CLASS_HOLDOUT_LOSS in needs:
    h, new_ema = _class_holdout_loss(state, batch, apply_fn, cfg, axis_name)
    inputs = inputs._replace(class_holdout_loss=h)
    out["class_holdout_loss"] = h

  sel, aux = selectors.checked_select(cfg.selector, state.selector_state, inputs, key, k)
  new_selector_state = selectors.checked_update(cfg.selector, state.selector_state, inputs,
                                                sel, aux)

  if "corrupted" in batch:         # label noise known (data.streams): share of the selected
    out["selected_corrupted_share"] = jnp.mean(gather(batch["corrupted"])[sel].astype(
        jnp.float32))
  mine = jax.lax.dynamic_slice_in_dim(sel, device * kd, kd)
  xs = x[sel] if axis_name is None else sharding.selected_rows(x, sel, kd)
  ys = y_all[mine]
  validation = None
  if reweighters.VALIDATION_BATCH in needs:
    validation = (gather(batch["meta_x"]), gather(batch["meta_y"]))
  w, new_reweighter_state = cfg.reweighter.weights(
      state.reweighter_state, reweighters.ReweightInputs(
          params=state.params, loss_fn=reweighters.cross_entropy_loss_fn(apply_fn), x=xs,
          labels=ys, num_selected=k, train_class_counts=jnp.asarray(
              cfg.train_class_counts or (1,) * c, jnp.float32),
          validation=validation, axis_name=axis_name))
  dropout_key = jax.random.fold_in(jax.random.fold_in(key, 2), device)

  def loss_fn(params):
    logits, new_model_state = fns.apply_train(params, state.model_state, xs, dropout_key)
    return jnp.sum(w * class_weighted_losses.cross_entropy(logits, ys)), new_model_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  loss, grads = collectives.psum((loss, grads), axis_name)      # Σ over all k selected points
  selected_counts = jnp.sum(jax.nn.one_hot(units_all[sel], c, dtype=jnp.int32), axis=0)
  new_reference = state.reference
  if cfg.reference_update is not None:
    new_reference = cfg.reference_update(state.reference, xs, ys,
                                         jax.random.fold_in(key, 3), axis_name)
  ok = jnp.isfinite(loss) & divergence.all_finite((grads, new_selector_state, new_reference))
  if cfg.reference_update is not None:     # updated reference models: the same rule as θ
    ok = ok & divergence.bounded(new_reference.params)

  def apply_update(params_and_opt):
    params, opt_state = params_and_opt
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # Finite gradients can still give non-finite moments or parameters too large to use
    # (huge steps): divergence.bounded.
    return jax.lax.cond(divergence.all_finite(new_opt_state) & divergence.bounded(new_params),
                        lambda: (new_params, new_opt_state, jnp.asarray(True)),
                        lambda: (params, opt_state, jnp.asarray(False)))

  # A skipped (non-finite) step leaves the big buffers untouched. `cond` rather than
  # `where(ok, new, old)`: with `where` both the old and the new parameters and optimizer
  # moments are alive at once, so XLA copies the donated state instead of updating it in
  # place (benchmarks/memory.py).
  new_params, new_opt_state, ok = jax.lax.cond(ok, apply_update,
                                               lambda a: (*a, jnp.asarray(False)),
                                               (state.params, state.opt_state))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
  new_state = TrainState(
      step=state.step + 1,
      params=new_params,
      opt_state=new_opt_state,
      model_state=keep(new_model_state, state.model_state),
      selector_state=keep(new_selector_state, state.selector_state),
      reweighter_state=keep(new_reweighter_state, state.reweighter_state),
      holdout_loss=state.holdout_loss,
      ema=keep(new_ema, state.ema),
      reference=keep(new_reference, state.reference),
      rng=state.rng,
      num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
      selected_counts=state.selected_counts + selected_counts)
  out.update(
      selected_loss=loss,
      selected_class_counts=selected_counts,
      cumulative_selected_counts=new_state.selected_counts,
      class_weights=registry.class_weights(cfg.selector, new_state.selector_state, c),
      reweighter_class_weights=registry.class_weights(
          cfg.reweighter, new_state.reweighter_state, c),
      skipped=(~ok).astype(jnp.int32),
      selected_indices=sel)
  return new_state, out


def make_train_step(model, ref_loss_fn, tx, cfg: StepConfig, devices):
  """The ``pmap``-ed :func:`train_step` over ``devices`` (state buffers donated).

  ``model``: :class:`reducr_jax.models.ModelFns` (built with ``axis_name=AXIS`` for
  cross-device batch norm) or a stateless ``apply_fn(params, x)``.
  """
  fn = functools.partial(train_step, model=model, ref_loss_fn=ref_loss_fn, tx=tx, cfg=cfg)
  return jax.pmap(fn, axis_name=AXIS, devices=devices, donate_argnums=(0,))



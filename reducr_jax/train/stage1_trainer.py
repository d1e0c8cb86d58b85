"""Stage 1: train the reference models on the holdout split (state, step, loop).

REDUCR needs C class-irreducible experts (eq. 8, γ-weighted); RHO-LOSS needs one
irreducible-loss model trained on all the holdout data, which is the same procedure with
one expert and γ = 0. Both train with AdamW on holdout batches and keep, per expert, the
parameters with the best γ-weighted loss (each expert's own) on ``config.experts.select_on``:
``"val"`` (the val split; for CIFAR / CINIC-10 / MNLI / QQP the val split *is* the holdout
the experts train on) or ``"train_pool"`` (the train split, data the experts never train on:
the official ``src/train_irreducible.py`` fits on ``datamodule.val_dataloader()`` with
``val_dataloaders=datamodule.train_dataloader()`` and ``callbacks: val_loss.yaml``, i.e.
the checkpoint of minimal ``val_loss_epoch`` measured on the train pool). The batch loss
is averaged as ``config.experts.loss_normalisation`` says
(:func:`reducr_jax.core.class_weighted_losses.weighted_average`).

Stage 1 is data parallel like the train step: one ``pmap`` over every device of every
process (each process feeds its own rows of every holdout batch, gradients are averaged
over the device axis, batch norm statistics are those of the whole batch), so it equals a
one-device run up to float summation order. The C stacked experts run with
``config.experts.strategy`` (``vmap`` / ``map`` / ``loop``; ``vmap`` with
``config.experts.chunk`` = n runs n experts per ``vmap``); ``auto`` compiles the training
step for the backend's candidates, best first, and keeps the first whose compiled memory
fits ``config.experts.max_memory_gb`` (:func:`reducr_jax.train.stage1_memory.pick_strategy`).

The pmapped expert training step and the validation sums (:func:`step_functions`) are
built from shapes and settings only, so the trainer (real arrays, real devices) and the
planner (:mod:`reducr_jax.plan`: ``ShapeDtypeStruct``s, an abstract TPU topology) compile
exactly the same programs. The trained models are cached and handed to stage 2 by
:mod:`reducr_jax.train.references`.
"""

from __future__ import annotations

import functools
import itertools

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reducr_jax import data
from reducr_jax.train import experts_step
from reducr_jax import models
from reducr_jax.train import periodic
from reducr_jax.run import preemption
from reducr_jax.run import progress
from reducr_jax.core import rng_streams
from reducr_jax.train import sharding
from reducr_jax.train import spilled_best
from reducr_jax.core import stacked_experts
from reducr_jax.train import stage1_memory
from reducr_jax.core.class_weighted_losses import multihead_expert_losses
from reducr_jax.core.class_weighted_losses import weight_sums
from reducr_jax.core.class_weighted_losses import weighted_loss_sums
from reducr_jax.data import augment as augment_lib
from reducr_jax.core import groups as groups_lib
from reducr_jax.data import pipeline
from reducr_jax.data import sampling
from reducr_jax.data import streams


def selection_split(config: ml_collections.ConfigDict, splits: data.Splits) -> data.Split:
  """The split whose γ-weighted loss picks each expert's checkpoint
  (``config.experts.select_on``: ``"val"`` → ``splits.val``, ``"train_pool"`` →
  ``splits.train``, the official choice)."""
  return splits.train if config.experts.select_on == "train_pool" else splits.val


def checkpoint_criterion(loss_sums: np.ndarray, weight_sums: np.ndarray, count: int,
                         normalisation: str) -> np.ndarray:
  """Each expert's selection loss from its sums over a split → ``[num]``.

  ``"mean"``: ``Σ w ℓ / N``; ``"weight_sum"``: ``Σ w ℓ / Σ w``. For one expert on one
  split both denominators are constants, so they keep the same checkpoint; only the
  logged and cached values differ.
  """
  if normalisation == "weight_sum":
    return loss_sums / weight_sums
  return loss_sums / count


def step_functions(config: ml_collections.ConfigDict, kind: str, fns, num_classes: int,
                   gamma: float, n: int, canonical_convs: bool | None = None):
  """One device's stage-1 functions under a ``pmap`` over ``n`` devices (all processes).

  Returns ``(tx, stage1_step, val_sums)``:
    ``stage1_step(state, x [b, ...], y int[b], step, strategy, chunk, microbatches)`` →
    ``(state, losses [num])`` with ``b = config.experts.batch_size / n``;
    ``val_sums(variables, x, y, mask, strategy, chunk, slices)`` → the ``psum`` over all
    devices of each model's eq.-8 loss sums and weight sums ``([num], [num])``.
  ``canonical_convs``: that of :func:`reducr_jax.train.experts_step.experts_train_step`:
  ``True`` when compiling for CPU devices (``None``: when the default backend is CPU).
  """
  ex = config.experts
  norm = ex.loss_normalisation
  tx = optax.adamw(ex.learning_rate, weight_decay=ex.weight_decay)
  rng = rng_streams.key(config.seed, "expert_init")
  augment_key = rng_streams.key(config.seed, "expert_augment")
  aug_kind = config.dataset.augment
  b_local = ex.batch_size // n
  group_of = groups_lib.from_config(config.dataset, num_classes)

  def stage1_step(state, x, y, step, strategy, chunk, microbatches):
    """One device's step: x [b_local, ...], y int[b_local], step int scalar."""
    d = jax.lax.axis_index(sharding.AXIS)
    key = jax.random.fold_in(augment_key, step)
    x = augment_lib.augment(key, x, d * b_local + jnp.arange(b_local), aug_kind)
    dropout = jax.random.fold_in(rng, step)
    if n > 1:        # independent dropout masks per device (1 device: as before)
      dropout = jax.random.fold_in(dropout, d)
    if kind == "multihead":
      p, o, loss, ms = experts_step.multihead_train_step(
          fns.apply, tx, state.params, state.opt_state, x, y, gamma,
          model_state=state.model_state, train_apply_fn=fns.apply_train, rng=dropout,
          axis_name=sharding.AXIS, group_of=group_of, normalisation=norm)
      return stacked_experts.ExpertsState(p, o, ms), loss[None]
    return experts_step.experts_train_step(fns.apply, tx, state, x, y, gamma,
                                           train_apply_fn=fns.apply_train, rng=dropout,
                                           strategy=strategy, chunk=chunk, axis_name=sharding.AXIS,
                                           microbatches=microbatches, group_of=group_of,
                                           normalisation=norm, canonical_convs=canonical_convs)

  def val_sums(variables, x, y, mask, strategy, chunk, slices):
    """Σ over all devices' rows of each model's eq. 8 loss on the selection split →
    ``[num]``, and (``"weight_sum"``) the weight sums ``[num]`` (per head for multihead)."""
    if kind == "multihead":
      table = multihead_expert_losses(fns.apply(variables, x), y)
      sums = weighted_loss_sums(table, y, mask, gamma, group_of)  # [C] heads
      if norm == "mean":
        sums = jnp.mean(sums, keepdims=True)
      wsums = weight_sums(y, mask, table.shape[1], gamma, group_of)
    else:       # in `slices` slices of the batch, like the training step's microbatches
      table = jax.lax.map(
          lambda xy: stacked_experts.expert_losses(fns.apply, variables, *xy, strategy, chunk),
          (x.reshape((slices, -1) + x.shape[1:]), y.reshape((slices, -1))))
      table = table.reshape((-1, table.shape[-1]))                    # [b, num]
      sums = weighted_loss_sums(table, y, mask, gamma, group_of)
      wsums = weight_sums(y, mask, table.shape[1], gamma, group_of)
    return jax.lax.psum((sums, wsums), sharding.AXIS)

  return tx, stage1_step, val_sums


def pmapped(fn, devices, donate=()):
  """``(strategy, chunk, **kw) -> jax.pmap(fn with those bound)`` over ``devices``
  (``None``: every device of every process)."""
  return lambda strategy, chunk, **kw: jax.pmap(
      functools.partial(fn, strategy=strategy, chunk=chunk, **kw), axis_name=sharding.AXIS,
      devices=devices, donate_argnums=donate)


def validation_batch(config: ml_collections.ConfigDict, kind: str, n: int, b_local: int,
                     microbatches: int, split_len: int) -> tuple[int, int]:
  """``(rows per device, slices)`` of the validation sums: no larger than the split needs,
  evaluated in slices of the training step's microbatch size (the training step was
  fitted to the memory budget; a 500-image ResNet-18 forward at 224 px is ≈ 5 GiB)."""
  eval_local = -(-min(config.eval_batch_size, split_len) // n)
  slice_rows = b_local // microbatches if microbatches > 1 and kind != "multihead" \
      else eval_local
  eval_local = -(-eval_local // slice_rows) * slice_rows
  return eval_local, eval_local // slice_rows


def stage_devices(config: ml_collections.ConfigDict, batch_size: int) -> list:
  """This process's devices for a data-parallel batch of ``batch_size``: every local
  device (``config.num_devices``), fewer in a one-process run when the global device
  count does not divide the batch (the largest count that does).

  Raises:
    ValueError: with several processes, a batch the global device count does not divide.
  """
  devices = sharding.local_devices(config)
  procs = jax.process_count()
  if procs > 1:
    if batch_size % (len(devices) * procs):
      raise ValueError(f"config.experts.batch_size={batch_size} must be a multiple of the "
                       f"{len(devices) * procs} devices of a multi-process run")
    return devices
  while batch_size % len(devices):
    devices = devices[:-1]
  return devices


def init_stage1_state(config: ml_collections.ConfigDict, kind: str, fns: models.ModelFns,
                      tx: optax.GradientTransformation, num: int,
                      devices) -> stacked_experts.ExpertsState:
  """Stage 1's state, replicated over ``devices``: ``num`` stacked experts (leading axis
  C) or one multi-head model, initialised from ``expert_init`` (pretrained weights
  loaded where ``config.model`` asks), with ``tx``'s optimizer state."""
  rng = rng_streams.key(config.seed, "expert_init")
  if kind == "multihead":
    params, model_state = models.load_pretrained(config.model, *jax.jit(fns.init)(rng))
    state = stacked_experts.ExpertsState(params, tx.init(params), model_state)
  else:
    state = stacked_experts.init_experts(fns.init, tx, rng, num)
    params, model_state = models.load_pretrained_stacked(config.model, state.params,
                                                         state.model_state)
    state = state._replace(params=params, model_state=model_state)
  del params, model_state
  return sharding.replicate(state, devices, consume=True)   # held once, not twice


def train_reference_models(config, splits: data.Splits, kind: str, fns: models.ModelFns,
                           num: int, gamma: float):
  """Trains the reference models, keeping the variables with the best γ-weighted loss on
  :func:`selection_split` (``config.experts.select_on``).

  Data parallel over every device of every process (see the module docstring). Stacked
  experts keep their best variables expert by expert; a multi-head model keeps the whole
  model at its best mean head loss (its heads share a trunk). Holdout batches get the
  training augmentation of ``config.dataset.augment`` (on device, by global position in
  the batch). Returns the best variables (``{"params": ..., **model_state}``, stacked for
  experts, host arrays) and the best val losses ``[num]``.
  """
  ex = config.experts
  norm = ex.loss_normalisation
  select_split = selection_split(config, splits)
  devices = stage_devices(config, ex.batch_size)
  procs, proc = jax.process_count(), jax.process_index()
  n_local = len(devices)
  n = n_local * procs
  b_local = ex.batch_size // n
  tx, stage1_step, val_sums = step_functions(
      config, kind, fns, splits.num_classes, gamma, n,
      # XLA:CPU keeps its fast convolutions inside the in-place loops only when they are
      # canonical (experts_train_step's canonical_convs): decided by the devices compiled for.
      canonical_convs=devices[0].platform == "cpu")
  on_devices = lambda fn, donate=(): pmapped(  # noqa: E731
      fn, sharding.pmap_devices(devices), donate)

  state = init_stage1_state(config, kind, fns, tx, num, devices)
  put = functools.partial(jax.device_put, device=sharding.device_sharding(devices))

  def holdout_batch(step):
    """This process's rows of expert batch ``step`` (1-based), split over its devices."""
    idx = sampling.process_rows(
        streams.split_batch_indices(config.dataset, splits.holdout, "holdout",
                                    rng_streams.order_seed(config.seed, "expert_order"),
                                    step - 1, ex.batch_size, splits.num_classes),
        procs, proc)
    return sharding.shard((splits.holdout.x[idx], splits.holdout.y[idx]), n_local)

  def step_arg(step):
    return put(np.full((n_local,), step, np.int32))

  batches = pipeline.batches(config, lambda t: holdout_batch(t + 1), 0, ex.num_steps, put)
  x1, y1 = next(batches)
  compile_step = lambda s, c, m: on_devices(stage1_step, (0,))(s, c, microbatches=m).lower(  # noqa: E731
      state, x1, y1, step_arg(1)).compile()
  (strategy, chunk, micro), p_step, peak = stage1_memory.pick_strategy(
      compile_step, num,
      stage1_memory.stage1_candidates(config, kind, num, b_local, jax.default_backend()),
      stage1_memory.memory_budget_bytes(config, devices[0]),
      strict=jax.default_backend() != "cpu", batch=b_local, chips=n)
  progress.say(stage1_memory.strategy_line(
      kind, num, (strategy, chunk, micro), ex.strategy, n, peak,
      stage1_memory.memory_budget_bytes(config, devices[0])))
  if procs > 1:   # a multi-process pmap's compiled program takes global arrays: re-jit
    p_step = on_devices(stage1_step, (0,))(strategy, chunk, microbatches=micro)
  # Validation batches: no larger than the split needs, in the training step's slices.
  eval_local, slices = validation_batch(config, kind, n, b_local, micro, len(select_split))
  eval_global = eval_local * n
  p_val = on_devices(val_sums)(strategy, chunk, slices=slices)

  def variables_of(state):
    return models.variables(state.params, state.model_state or {})

  # The best variables so far live in files between validations (spilled_best: not a
  # second resident copy of the stacked variables next to the training state).
  best, best_val = spilled_best.SpilledBest(), None
  reporter = progress.Reporter(f"stage 1: training {kind} reference models", ex.num_steps)
  for step, (x, y) in zip(range(1, ex.num_steps + 1),
                          itertools.chain([(x1, y1)], batches)):
    state, train_losses = p_step(state, x, y, step_arg(step))
    preemption.wait(train_losses)      # a signal stops a long step at once (not at its end)
    preemption.boundary(step, "stage 1")   # several processes: all stop at this step
    if step == ex.num_steps:       # the moments are not needed again: free them before
      jax.tree.map(lambda a: a.delete(), state.opt_state)    # the last validation
    if periodic.every(step, ex.eval_every, ex.num_steps):
      current = variables_of(state)
      val_reporter = progress.Reporter(
          f"stage 1: step {step} validation on {ex.select_on}",
          -(-len(select_split) // eval_global), "batches")
      sums = []
      for b in data.iterate_batches(select_split, eval_global, procs, proc):
        sums.append(jax.tree.map(lambda a: np.asarray(a[0], np.float64),
                                 p_val(current, *put(sharding.shard(b, n_local)))))
        val_reporter.update(len(sums))
      val = checkpoint_criterion(sum(s[0] for s in sums), sum(s[1] for s in sums),
                                 len(select_split), norm)
      if kind == "multihead" and norm != "mean":   # mean over heads of each head's loss
        val = np.mean(val, keepdims=True)
      better = np.ones_like(val, bool) if best_val is None else val < best_val
      best.update(sharding.first_replica(current), None if best_val is None else
                  lambda new, old: _keep_best(better, new, old, kind))
      del current           # no host view of the state is left: the next step donates it
      best_val = val if best_val is None else np.where(better, val, best_val)
      logging.info("%s step %d: train loss %s, %s loss %s", kind, step,
                   np.round(np.asarray(train_losses[0]), 4).tolist(),
                   ex.select_on, np.round(val, 4).tolist())
    # After the step's validation: the rate, and so the ETA, include the validations.
    reporter.update(step)
  del state                 # free the last step's variables before reading the best back
  params = best.get()
  best.close()
  return params, np.asarray(best_val, np.float32)


def _keep_best(better: np.ndarray, new: np.ndarray, old: np.ndarray, kind: str):
  """``new`` where ``better`` (per expert: ``[num]`` over the leading axis), else ``old``."""
  if kind == "multihead":
    return np.where(better[0], new, old)
  return np.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

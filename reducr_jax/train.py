"""The REDUCR trainer: ``train_and_evaluate(config, workdir)`` composes the pure pieces.

Stages:
  1. reference models on the holdout split (:mod:`reducr_jax.train_experts`, cached);
  2. target-model training with online batch selection, one ``pmap``-ed step per large
     batch (:func:`make_train_step`);
  3. evaluation of the kept model (best worst-class validation accuracy, REDUCR App. A.6)
     on the validation and test splits → ``<workdir>/results.json``.

Data parallelism and global selection. The large batch of B points is split across the
``n`` local devices (B/n each). Every device computes the model loss (and reference losses)
of its own B/n points; these ``[B/n]`` / ``[B/n, C]`` arrays are ``all_gather``-ed, so every
device holds the same ``[B]`` scores and takes the same global top-k (same rng too: the
key is ``fold_in(state.rng, step)``). The MWU update is computed from the gathered values,
so the class weights are identical on every device without any extra communication.
Device ``d`` then trains on selected points ``d·k/n … (d+1)·k/n − 1`` (inputs gathered
from the large batch); each device's loss is the weighted sum over its points (weights
summing to 1 over all k, see :func:`example_weights`) and gradients are ``psum``-ed: the
update equals the single-device update on the same k points, up to float summation order.
With several processes (hosts) the same holds over all devices of all processes; each
process feeds only its own rows of every batch (:func:`process_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reducr_jax import checkpointing
from reducr_jax import configuration
from reducr_jax import data
from reducr_jax import experts
from reducr_jax import group_dro
from reducr_jax import meta_reweight
from reducr_jax import metric_writers
from reducr_jax import metrics
from reducr_jax import models
from reducr_jax import mwu
from reducr_jax import parallel
from reducr_jax import prune_stage
from reducr_jax import selection
from reducr_jax import train_experts
from reducr_jax.data import augment as augment_lib
from reducr_jax.data import pipeline

AXIS = parallel.AXIS
# Placement helpers shared with stage 1 (reducr_jax.parallel).
process_rows = parallel.process_rows
_device_sharding, _replicate = parallel.device_sharding, parallel.replicate
_first_replica, _shard = parallel.first_replica, parallel.shard


class TrainState(NamedTuple):
  """Everything a resumed run needs; replicated across devices during training.

  Attributes:
    step: ``int32[]`` number of gradient steps taken.
    params, opt_state: target model and optimizer.
    model_state: the model's non-parameter collections (``{"batch_stats": ...}`` for batch
      norm; ``{}`` for stateless models), updated from the selected points.
    log_w: ``float32[C]`` MWU class log-weights.
    holdout_loss: ``float32[C]`` class-holdout loss of the last full pass ('epoch').
    ema: :class:`reducr_jax.mwu.EMAState` ('ema' estimator).
    group_log_q: ``float32[C]`` Group DRO class log-weights (``reweight='group_dro'``).
    rng: ``uint32[2]`` base key; step t uses ``fold_in(rng, t)``.
    num_skipped: ``int32[]`` updates skipped for a non-finite loss or gradient.
    selected_counts: ``int32[C]`` selected points per class since the start (logged, so
      the share of each class between two log steps is a difference of two records).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  log_w: jax.Array
  holdout_loss: jax.Array
  ema: mwu.EMAState
  group_log_q: jax.Array
  rng: jax.Array
  num_skipped: jax.Array
  selected_counts: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static (hashable) settings of the train step, derived from the config."""
  method: str
  k: int
  num_classes: int
  num_devices: int
  eta: float
  clip: bool
  use_holdout: bool
  use_expert: bool
  use_model_loss: bool
  soft_temperature: float
  selection_pressure: float
  holdout_loss: str
  ema_decay: float
  reference: Optional[str]        # None | 'table' (losses in the batch) | 'online'
  reweight: str = "none"
  meta_lr: float = 0.1
  meta_method: str = "jvp"
  group_dro_eta: float = 0.01
  train_class_counts: tuple = ()
  augment: str = "none"

  @classmethod
  def from_config(cls, config, num_classes: int, num_devices: int,
                  reference: Optional[str], train_class_counts=()) -> "StepConfig":
    s = config.selection
    return cls(method=s.method, k=configuration.num_selected(config),
               num_classes=num_classes, num_devices=num_devices, eta=float(s.eta),
               clip=s.clip, use_holdout=s.use_holdout, use_expert=s.use_expert,
               use_model_loss=s.use_model_loss, soft_temperature=float(s.soft_temperature),
               selection_pressure=float(s.selection_pressure), holdout_loss=s.holdout_loss,
               ema_decay=float(s.ema_decay), reference=reference,
               reweight=config.reweight, meta_lr=float(config.meta.lr),
               meta_method=config.meta.method,
               group_dro_eta=float(config.group_dro.eta),
               train_class_counts=tuple(int(n) for n in train_class_counts),
               augment=config.dataset.get("augment", "none"))


def make_optimizer(opt_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (paper default), optionally after global-norm gradient clipping."""
  tx = optax.adamw(opt_config.learning_rate, weight_decay=opt_config.weight_decay)
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx


def init_state(rng: jax.Array, init_fn: Callable, tx: optax.GradientTransformation,
               num_classes: int, select_rng: jax.Array) -> TrainState:
  """The initial :class:`TrainState`.

  ``init_fn(rng)`` returns the params, or ``(params, model_state)``
  (:attr:`reducr_jax.models.ModelFns.init`).
  """
  out = init_fn(rng)
  params, model_state = out if isinstance(out, tuple) else (out, {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=model_state,
                    log_w=mwu.init(num_classes),
                    holdout_loss=jnp.zeros((num_classes,), jnp.float32),
                    ema=mwu.ema_init(num_classes), group_log_q=group_dro.init(num_classes),
                    rng=select_rng,
                    num_skipped=jnp.zeros((), jnp.int32),
                    selected_counts=jnp.zeros((num_classes,), jnp.int32))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def as_model_fns(model) -> models.ModelFns:
  """``model`` as :class:`reducr_jax.models.ModelFns`; a bare ``apply_fn(params, x)`` of a
  stateless model is wrapped (so library users can pass ``lambda p, x: ...``)."""
  if isinstance(model, models.ModelFns):
    return model
  return models.ModelFns(init=None, apply=lambda v, x: model(v["params"], x),
                         apply_train=lambda p, s, x, rng: (model(p, x), s))


def _selected_rows(x: jax.Array, sel: jax.Array, kd: int) -> jax.Array:
  """This device's ``kd`` selected inputs, fetched from the devices holding them.

  ``x [b, ...]`` is this device's shard of the large batch; ``sel int[k]`` the global
  selection. Each device writes the selected rows it owns into a ``[k, ...]`` buffer
  (zeros elsewhere) and a reduce-scatter hands device ``d`` rows ``d·kd … (d+1)·kd − 1``:
  ``k`` rows move instead of all-gathering the ``B`` rows of the large batch (10× less
  traffic at 10 % selection, which matters for 224×224 images).
  """
  b = x.shape[0]
  local = sel - jax.lax.axis_index(AXIS) * b
  owned = (local >= 0) & (local < b)
  rows = x[jnp.clip(local, 0, b - 1)]
  mask = owned.reshape((-1,) + (1,) * (x.ndim - 1))
  rows = jnp.where(mask, rows, jnp.zeros_like(rows))
  if rows.dtype == jnp.bool_ or jnp.issubdtype(rows.dtype, jnp.integer):
    return jax.lax.psum_scatter(rows.astype(jnp.int32), AXIS, scatter_dimension=0,
                                tiled=True).astype(x.dtype)
  return jax.lax.psum_scatter(rows, AXIS, scatter_dimension=0, tiled=True)


def train_step(state: TrainState, batch: dict, ref_params: Any, *, model,
               ref_loss_fn: Optional[Callable], tx: optax.GradientTransformation,
               cfg: StepConfig) -> tuple[TrainState, dict]:
  """One online-batch-selection step on one device's shard (run under ``pmap``).

  Args:
    state: this device's replica of the :class:`TrainState`.
    batch: ``x [b, ...]``, ``y int[b]`` (b = B/n), plus ``ref_losses [b, C']`` when
      ``cfg.reference == 'table'`` and ``holdout_x``/``holdout_y`` for the 'ema' estimator.
    ref_params: reference-model params for ``cfg.reference == 'online'`` (else unused).
    model: :class:`reducr_jax.models.ModelFns` (or a stateless ``apply_fn(params, x)``).
      Scores, the class-holdout loss and the meta/Group-DRO weights use evaluation mode
      (running batch-norm statistics, no dropout); the update on the selected points uses
      training mode, batch statistics over all k selected points (cross-device), and
      updates ``state.model_state``.
    ref_loss_fn: ``(ref_params, x, y) -> [b, C']``.
    tx: optimizer; cfg: static :class:`StepConfig`.

  The large batch is augmented on device first (``cfg.augment``, keyed by the step and
  each example's global position, so independent of the device count).

  Returns:
    ``(new_state, step_metrics)``; metrics are identical on every device.
  """
  n, k, c = cfg.num_devices, cfg.k, cfg.num_classes
  kd = k // n
  fns = as_model_fns(model)
  apply_fn = lambda p, xb: fns.apply(models.variables(p, state.model_state), xb)  # noqa: E731
  gather = lambda a: jax.lax.all_gather(a, AXIS, tiled=True)  # noqa: E731
  key = jax.random.fold_in(state.rng, state.step)
  device = jax.lax.axis_index(AXIS)
  x, y = batch["x"], batch["y"]
  if cfg.augment != "none":
    b = y.shape[0]
    x = augment_lib.augment(jax.random.fold_in(key, 1), x, device * b + jnp.arange(b),
                            cfg.augment)
  y_all = gather(y)
  big = y_all.shape[0]
  out = {}

  model_loss_all = None
  if cfg.method != "uniform":
    model_loss_all = gather(experts.cross_entropy(apply_fn(state.params, x), y))
    out["large_batch_loss"] = jnp.mean(model_loss_all)

  ref_all = None
  if cfg.reference == "table":
    ref_all = gather(batch["ref_losses"])
  elif cfg.reference == "online":
    ref_all = gather(ref_loss_fn(ref_params, x, y))

  new_log_w, new_ema, alpha = state.log_w, state.ema, jnp.zeros((c,))
  if cfg.method == "reducr":
    if cfg.holdout_loss == "ema":
      h_loss = experts.cross_entropy(apply_fn(state.params, batch["holdout_x"]),
                                     batch["holdout_y"])
      stats = jax.lax.psum(metrics.class_sums(h_loss, batch["holdout_y"], c), AXIS)
      new_ema = mwu.ema_update(state.ema, stats, cfg.ema_decay)
      h = mwu.ema_value(new_ema, cfg.ema_decay)
    else:
      h = state.holdout_loss
    expert = ref_all if cfg.use_expert else jnp.zeros((big, c), jnp.float32)
    reducible = selection.reducible_losses(model_loss_all, expert, clip=cfg.clip,
                                           use_expert=cfg.use_expert,
                                           use_model_loss=cfg.use_model_loss)
    scores = selection.weighted_scores(reducible, mwu.weights(state.log_w))
    sel = selection.soft_top_k(key, scores, k, cfg.soft_temperature)
    alpha = mwu.class_objective(reducible[sel], h, cfg.use_holdout)
    new_log_w = mwu.update(state.log_w, alpha, cfg.eta)
    out["class_holdout_loss"] = h
  elif cfg.method == "rho_loss":
    scores = selection.rho_loss_scores(model_loss_all, ref_all[:, 0])
    sel = selection.soft_top_k(key, scores, k, cfg.soft_temperature)
  elif cfg.method == "train_loss":
    sel = selection.train_loss_select(key, model_loss_all, k, cfg.selection_pressure)
  else:
    sel = selection.uniform_select(key, big, k)

  mine = jax.lax.dynamic_slice_in_dim(sel, device * kd, kd)
  xs, ys = _selected_rows(x, sel, kd), y_all[mine]
  w, new_log_q = example_weights(state, xs, ys, batch, apply_fn=apply_fn, cfg=cfg)
  dropout_key = jax.random.fold_in(jax.random.fold_in(key, 2), device)

  def loss_fn(params):
    logits, new_model_state = fns.apply_train(params, state.model_state, xs, dropout_key)
    return jnp.sum(w * experts.cross_entropy(logits, ys)), new_model_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  loss, grads = jax.lax.psum((loss, grads), AXIS)      # Σ over all k selected points
  selected_counts = jnp.sum(jax.nn.one_hot(y_all[sel], c, dtype=jnp.int32), axis=0)
  ok = jnp.isfinite(loss) & _all_finite(grads) & jnp.all(jnp.isfinite(alpha)) & jnp.all(
      jnp.isfinite(new_log_w))

  def apply_update(params_and_opt):
    params, opt_state = params_and_opt
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A skipped (non-finite) step leaves the big buffers untouched. `cond` rather than
  # `where(ok, new, old)`: with `where` both the old and the new parameters and optimizer
  # moments are alive at once, so XLA copies the donated state instead of updating it in
  # place (benchmarks/memory.py).
  new_params, new_opt_state = jax.lax.cond(ok, apply_update, lambda a: a,
                                           (state.params, state.opt_state))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
  new_state = TrainState(
      step=state.step + 1,
      params=new_params,
      opt_state=new_opt_state,
      model_state=keep(new_model_state, state.model_state),
      log_w=keep(new_log_w, state.log_w),
      holdout_loss=state.holdout_loss,
      ema=keep(new_ema, state.ema),
      group_log_q=keep(new_log_q, state.group_log_q),
      rng=state.rng,
      num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
      selected_counts=state.selected_counts + selected_counts)
  out.update(
      selected_loss=loss,
      selected_class_counts=selected_counts,
      cumulative_selected_counts=new_state.selected_counts,
      class_weights=mwu.weights(new_state.log_w),
      group_dro_weights=group_dro.weights(new_state.group_log_q),
      skipped=(~ok).astype(jnp.int32),
      selected_indices=sel)
  return new_state, out


def example_weights(state: TrainState, xs: jax.Array, ys: jax.Array, batch: dict, *,
                    apply_fn: Callable, cfg: StepConfig) -> tuple[jax.Array, jax.Array]:
  """Weights of this device's k/n selected points, summing to 1 over all k (``config.reweight``).

  * ``none``: ``1/k`` each.
  * ``class_balanced``: ``∝ 1 / n_y`` with ``n_y`` the class's size in the train split.
  * ``meta``: Ren et al. (2018) — :mod:`reducr_jax.meta_reweight` (``config.meta.method``:
    ``jvp``, one forward-mode pass, or ``nested_grad``; equal values) with the full validation
    batch (all-gathered from the devices' shards of ``meta_x``/``meta_y``, drawn from the
    clean holdout split), so every device uses the same validation gradient and the
    weights equal the single-device ones; normalised across devices.
  * ``group_dro``: Sagawa et al. — the class weights ``q`` are updated from the selected
    points' per-class mean losses, then ``w_i = q_{y_i} / n_{y_i}`` (n over the k points).

  Returns:
    ``(w [k/n], new group-DRO log-weights [C])``.
  """
  c = cfg.num_classes
  new_log_q = state.group_log_q
  if cfg.reweight == "none":
    return jnp.full(ys.shape, 1.0 / cfg.k, jnp.float32), new_log_q
  if cfg.reweight == "class_balanced":
    inv = 1.0 / jnp.asarray(cfg.train_class_counts, jnp.float32)[ys]
    return inv / jax.lax.psum(jnp.sum(inv), AXIS), new_log_q
  if cfg.reweight == "meta":
    vx = jax.lax.all_gather(batch["meta_x"], AXIS, tiled=True)
    vy = jax.lax.all_gather(batch["meta_y"], AXIS, tiled=True)
    loss_fn = lambda p, s, b: (experts.cross_entropy(apply_fn(p, b[0]), b[1]), s)  # noqa: E731
    if cfg.meta_method == "jvp":
      g = meta_reweight.meta_gradient_jvp(loss_fn, state.params, (), (xs, ys), (vx, vy),
                                          cfg.meta_lr)
    else:
      g = meta_reweight.meta_gradient(loss_fn, state.params, (), (xs, ys), (vx, vy),
                                      meta_reweight.sgd_step(cfg.meta_lr))
    return meta_reweight.weights_from_meta_gradient(g, axis_name=AXIS), new_log_q
  losses = jax.lax.stop_gradient(experts.cross_entropy(apply_fn(state.params, xs), ys))
  stats = jax.lax.psum(metrics.class_sums(losses, ys, c), AXIS)
  new_log_q = group_dro.update(state.group_log_q, metrics.class_means(stats, 0.0),
                               stats.counts > 0, cfg.group_dro_eta)
  return group_dro.example_weights(ys, new_log_q, stats.counts), new_log_q


def make_train_step(model, ref_loss_fn, tx, cfg: StepConfig, devices):
  """The ``pmap``-ed :func:`train_step` over ``devices`` (state buffers donated).

  ``model``: :class:`reducr_jax.models.ModelFns` (built with ``axis_name=AXIS`` for
  cross-device batch norm) or a stateless ``apply_fn(params, x)``.
  """
  fn = functools.partial(train_step, model=model, ref_loss_fn=ref_loss_fn, tx=tx, cfg=cfg)
  return jax.pmap(fn, axis_name=AXIS, devices=devices, donate_argnums=(0,))


def make_eval_step(apply_fn, num_classes: int, devices):
  """``pmap``-ed ``(variables, x, y, mask) -> (correct ClassSums, loss ClassSums)``, psum-ed.

  ``apply_fn(variables, x) -> logits`` in evaluation mode (:attr:`ModelFns.apply`)."""
  def eval_step(params, x, y, mask):
    logits = apply_fn(params, x)
    correct = metrics.correct_sums(logits, y, mask)
    losses = metrics.class_sums(experts.cross_entropy(logits, y), y, num_classes, mask)
    return jax.lax.psum((correct, losses), AXIS)
  return jax.pmap(eval_step, axis_name=AXIS, devices=devices)


def evaluate(p_eval, p_params, split: data.Split, batch_size: int, num_devices: int):
  """Per-class correct counts and loss sums over a whole split (host values).

  Every process walks the same global batches of ``batch_size`` per device and reads and
  feeds only its own rows; the ``psum`` in the eval step adds all devices of all processes.
  """
  total = None
  num_local = num_devices // jax.process_count()
  for batch in data.iterate_batches(split, batch_size * num_devices, jax.process_count(),
                                    jax.process_index()):
    x, y, mask = _shard(batch, num_local)
    res = p_eval(p_params, x, y, mask)
    res = jax.tree.map(lambda a: np.asarray(a[0], np.float64), res)
    total = res if total is None else jax.tree.map(np.add, total, res)
  return total


def evaluate_summary(p_eval, p_params, split: data.Split, batch_size: int,
                     num_devices: int) -> dict:
  """:func:`reducr_jax.metrics.summary` of the accuracy of ``p_params`` on a split."""
  correct, _ = evaluate(p_eval, p_params, split, batch_size, num_devices)
  return metrics.summary(metrics.ClassSums(*correct))


def host_batch(config: ml_collections.ConfigDict, cfg: StepConfig, splits: data.Splits,
               table: Optional[np.ndarray], step: int, num_processes: int = 1,
               process_index: int = 0) -> dict:
  """This process's rows of the global batch of training step ``step``.

  A pure function of config and step: ``x``/``y``: the large batch from the train split;
  ``ref_losses``: its rows of the precomputed reference-loss table;
  ``holdout_x``/``holdout_y``: a holdout batch for the EMA class-holdout loss;
  ``meta_x``/``meta_y``: the clean validation batch of meta-reweighting. Each stream has
  its own seed offset, so the data position to resume from is the step alone. Indices are
  cut to this process's contiguous share (:func:`process_rows`) *before* any input is read,
  so each host reads and decodes only its own rows.
  """
  rows = lambda idx: process_rows(idx, num_processes, process_index)  # noqa: E731
  idx = rows(data.batch_indices(config.seed, step, len(splits.train), config.batch_size))
  batch = {"x": splits.train.x[idx], "y": splits.train.y[idx]}
  if table is not None:
    batch["ref_losses"] = table[idx]
  if cfg.method == "reducr" and cfg.holdout_loss == "ema":
    hidx = rows(data.batch_indices(config.seed + 1, step, len(splits.holdout),
                                   config.batch_size))
    batch["holdout_x"], batch["holdout_y"] = splits.holdout.x[hidx], splits.holdout.y[hidx]
  if cfg.reweight == "meta":
    vidx = rows(data.batch_indices(config.seed + 2, step, len(splits.holdout),
                                   config.meta.val_batch_size))
    batch["meta_x"], batch["meta_y"] = splits.holdout.x[vidx], splits.holdout.y[vidx]
  return batch


def _host(tree):
  """NumPy copies of every leaf: what checkpoints hold. (A device-local ``jax.Array``
  cannot be saved by orbax from several processes; a NumPy array is written once.)"""
  return jax.tree.map(np.asarray, tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       splits: Optional[data.Splits] = None) -> dict:
  """Runs REDUCR (or a baseline) end to end and returns the results dict.

  Resumes from ``<workdir>/checkpoints`` when present. Writes ``results.json``,
  ``metrics.jsonl`` and TensorBoard events to ``workdir``.

  Args:
    config: the trainer config (``configs/default.py`` documents every field).
    workdir: output directory.
    splits: data to use instead of ``data.make_splits(config.dataset, config.seed)``
      (custom protocols, e.g. Ren et al.'s imbalanced binary task).
  """
  devices = jax.local_devices()
  if config.get("num_devices", -1) not in (-1, None):
    if not 1 <= config.num_devices <= len(devices):
      raise configuration.ConfigError(
          f"config.num_devices must be -1 or in [1, {len(devices)}], got {config.num_devices}")
    devices = devices[:config.num_devices]
  # Several processes: pmap spans every device of every process (each feeds its own);
  # one process: exactly the devices chosen above.
  num_processes, process_index = jax.process_count(), jax.process_index()
  if num_processes > 1 and len(devices) != jax.local_device_count():
    raise configuration.ConfigError("config.num_devices must be -1 in a multi-process run")
  pmap_devices = None if num_processes > 1 else devices
  n_local = len(devices)
  n = n_local * num_processes                     # global data-parallel devices
  configuration.validate_config(config, n)
  workdir = configuration.check_workdir(workdir)

  if splits is None:
    try:
      splits = data.make_splits(config.dataset, config.seed)
    except (FileNotFoundError, ImportError) as e:   # missing data / extras: one line
      raise configuration.ConfigError(str(e)) from None
  splits, pruning_info = prune_stage.prune_train_split(config, splits, workdir)
  c = splits.num_classes
  x0 = np.zeros((1,) + splits.train.x.shape[1:], splits.train.x.dtype)
  fns = models.model_fns(models.create_model(config.model, c), x0, axis_name=AXIS,
                         init_impl=models.init_rng_impl(config.model))

  # Stage 1: reference models.
  t0 = time.time()
  refs = train_experts.get_reference_models(config, splits, workdir)
  table, reference, ref_params, ref_loss_fn = None, None, None, None
  if refs is not None:
    if refs.kind == "multihead" or config.experts.losses == "online":
      reference, ref_loss_fn = "online", refs.loss_fn
      ref_params = _replicate(refs.params, devices)
    else:
      reference = "table"
      table = train_experts.precompute_table(refs, splits.train, config.eval_batch_size,
                                             config)
  expert_seconds = time.time() - t0

  # Stage 2: online batch selection.
  cfg = StepConfig.from_config(config, c, n, reference,
                               np.bincount(splits.train.y, minlength=c))
  tx = make_optimizer(config.optimizer)
  state = init_state(jax.random.PRNGKey(config.seed),
                     lambda r: models.load_pretrained(config.model, *jax.jit(fns.init)(r)),
                     tx, c,
                     jax.random.PRNGKey(config.seed + 1))
  best = {"params": models.variables(state.params, state.model_state),
          "worst_val": np.float32(-1.0), "step": np.int32(0)}
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  start = ckpt.latest_step()
  if start is not None:
    restored, _ = ckpt.restore(_host({"state": state, "best": best}))
    state, best = restored["state"], restored["best"]
    _progress(f"resumed from step {start}")
  start = int(state.step)
  writer = metric_writers.MetricWriter(workdir, resume_step=start,
                                       enabled=jax.process_index() == 0)
  p_state = _replicate(state, devices)
  p_step = make_train_step(fns, ref_loss_fn, tx, cfg, pmap_devices)
  p_eval = make_eval_step(fns.apply, c, pmap_devices)
  p_variables = lambda st: models.variables(st.params, st.model_state)  # noqa: E731
  holdout_every = config.selection.holdout_every
  if holdout_every == -1:
    holdout_every = max(1, len(splits.train) // config.batch_size)
  eval_bs = max(1, config.eval_batch_size // n)

  t_start, t_last, last_step = time.time(), time.time(), start
  batch_sharding = _device_sharding(devices)
  batches = pipeline.batches(            # read, decode (config.data_workers) and copy ahead
      config, lambda t: _shard(host_batch(config, cfg, splits, table, t, num_processes,
                                          process_index), n_local),
      start, config.num_steps, put=functools.partial(jax.device_put, device=batch_sharding))
  for step, batch in zip(range(start, config.num_steps), batches):
    if cfg.method == "reducr" and cfg.holdout_loss == "epoch" and step % holdout_every == 0:
      _, loss_sums = evaluate(p_eval, p_variables(p_state), splits.holdout, eval_bs, n)
      h = mwu.class_holdout_loss(metrics.ClassSums(*loss_sums))
      p_state = p_state._replace(holdout_loss=_replicate(
          jnp.asarray(h, jnp.float32), devices))
    p_state, step_metrics = p_step(p_state, batch, ref_params)
    done = step + 1

    if done % config.log_every == 0 or done == config.num_steps:
      m = jax.tree.map(lambda a: np.asarray(a[0]), step_metrics)
      m.pop("selected_indices")
      m["num_skipped"] = int(np.asarray(p_state.num_skipped[0]))
      writer.write(done, {f"train/{k}": v for k, v in m.items()})
    if done % config.eval_every == 0 or done == config.num_steps:
      params = p_variables(p_state)
      val = evaluate_summary(p_eval, params, splits.val, eval_bs, n)
      test = evaluate_summary(p_eval, params, splits.test, eval_bs, n)
      if val["worst_class_accuracy"] > float(best["worst_val"]):
        best = {"params": _first_replica(params),
                "worst_val": np.float32(val["worst_class_accuracy"]), "step": np.int32(done)}
      writer.write(done, {**{f"val/{k}": v for k, v in val.items()},
                          **{f"test/{k}": v for k, v in test.items()}})
      rate = (done - last_step) / max(time.time() - t_last, 1e-9)
      t_last, last_step = time.time(), done
      _progress(f"step {done}/{config.num_steps}  {rate:.1f} steps/s  worst-class val acc "
                f"{val['worst_class_accuracy']:.3f}  val acc {val['accuracy']:.3f}")
    if done % config.checkpoint_every == 0 or done == config.num_steps:
      ckpt.save(done, _host({"state": _first_replica(p_state), "best": best}))
  writer.close()
  ckpt.close()

  # Stage 3: evaluate the kept model.
  final_state = _first_replica(p_state)
  p_best = _replicate(best["params"], devices)
  val = evaluate_summary(p_eval, p_best, splits.val, eval_bs, n)
  test = evaluate_summary(p_eval, p_best, splits.test, eval_bs, n)
  results = {
      "method": config.selection.method,
      "reweight": config.reweight,
      "pruning": pruning_info,
      "best_step": int(best["step"]),
      "num_steps": int(config.num_steps),
      "val": val,
      "test": test,
      "class_weights": np.asarray(mwu.weights(final_state.log_w)).tolist(),
      "class_names": splits.class_names,
      "num_skipped": int(final_state.num_skipped),
      "config": json.loads(config.to_json_best_effort()),
  }
  _write_json(os.path.join(workdir, "results.json"), results)
  _write_json(os.path.join(workdir, "timing.json"),
              {"expert_seconds": expert_seconds, "train_seconds": time.time() - t_start,
               "steps_run": config.num_steps - start, "devices": n,
               "backend": jax.default_backend()})
  return results


def _progress(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


def _write_json(path: str, obj) -> None:
  if jax.process_index() != 0:
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(metric_writers.to_json_compatible(obj), f, indent=2, sort_keys=True)
  os.replace(tmp, path)

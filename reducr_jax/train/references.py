"""The reference models stage 2 needs: which kind, trained or loaded, and handed over.

:func:`get_reference_models` trains them with :mod:`reducr_jax.train.stage1_trainer` (or loads
them from the workdir cache, :mod:`reducr_jax.train.reference_cache`); :func:`prepare_references`
hands them to the train step as the ``[N, C]`` loss table (:func:`precompute_loss_table`,
computed in shards, each process scoring its contiguous share of the rows on its local
devices, and assembled once) or as models evaluated online, optionally updated on the
selected points (:func:`online_update`).

The cache is a checkpoint (:func:`reducr_jax.run.checkpointing.write_cache`: atomic, with a
manifest, and the fingerprint stored with it), verified on load; a damaged one, or one
written for another config (copied under this config's name), is reported and retrained.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from reducr_jax.run import checkpointing
from reducr_jax import data
from reducr_jax.data import sampling
from reducr_jax.train import device_memory
from reducr_jax.train import experts_step
from reducr_jax import models
from reducr_jax.train import optimizers
from reducr_jax.run import progress
from reducr_jax.train import reference_cache
from reducr_jax import selectors
from reducr_jax.train import sharding
from reducr_jax.core import stacked_experts
from reducr_jax.train import stage1_memory
from reducr_jax.train import stage1_trainer
from reducr_jax.core.class_weighted_losses import multihead_expert_losses
from reducr_jax.core import groups as groups_lib


class ReferenceModels(NamedTuple):
  """Trained reference models and how to evaluate them.

  Attributes:
    kind: ``"experts"`` (C class experts), ``"multihead"`` (one model, C heads) or
      ``"irreducible"`` (RHO-LOSS: one model, γ = 0).
    params: the models' variables ``{"params": ..., **model_state}``, stacked (leading
      axis C, or 1) or the multi-head model's.
    loss_fn: ``(params, x, y) -> [b, C']`` reference losses (C' = C, or 1).
  """
  kind: str
  params: Any
  loss_fn: Callable[[Any, jax.Array, jax.Array], jax.Array]


def reference_kind_for_config(config: ml_collections.ConfigDict,
                              selector=None) -> str | None:
  """Which reference models the selection rule needs (``None``: none).

  From the rule's ``needs`` (:func:`reducr_jax.selectors.reference_kind`): C class
  experts (``"experts"``, or ``"multihead"`` with ``config.experts.losses='multihead'``)
  or one RHO-LOSS model (``"irreducible"``). ``selector``: the rule of ``config`` when
  already built (the trainer builds it once); built here otherwise.
  """
  kind = selectors.reference_kind((selector or selectors.get(config)).needs)
  if kind == "experts" and config.experts.losses == "multihead":
    return "multihead"
  return kind


def reference_model_fns(config, splits: data.Splits, kind: str):
  """(module fns, loss_fn, num_experts, gamma) for a reference-model kind.

  ``fns`` is the :class:`reducr_jax.models.ModelFns` of one reference model (the
  multi-head model, or one of the stacked experts); ``loss_fn(variables, x, y)`` gives the
  ``[b, C']`` reference losses from the (stacked) variables.
  """
  num_classes = splits.num_classes
  # With config.dataset.groups there is one expert (head) per group, up-weighting the
  # group's classes (official: selection_method.num_categories experts).
  group_of = groups_lib.from_config(config.dataset, num_classes)
  num_units = num_classes if group_of is None else int(group_of.max()) + 1
  x0 = np.zeros((1,) + splits.holdout.x.shape[1:], splits.holdout.x.dtype)
  # Training-mode batch norm averages over the device axis of the pmapped stage 1.
  make_fns = functools.partial(models.model_fns, input_example=x0, axis_name=sharding.AXIS,
                               init_impl=models.init_rng_impl(config.model))
  if kind == "multihead":
    module = stacked_experts.MultiHead(trunk=models.create_model(config.model, None),
                                       num_heads=num_units, num_classes=num_classes)
    fns = make_fns(module)
    loss_fn = lambda v, x, y: multihead_expert_losses(fns.apply(v, x), y)  # noqa: E731
    num, gamma = 1, config.experts.gamma
  else:
    fns = make_fns(models.create_model(config.model, num_classes))
    strategy = config.experts.strategy
    strategy = stacked_experts.default_strategy() if strategy == "auto" else strategy
    loss_fn = functools.partial(stacked_experts.expert_losses, fns.apply, strategy=strategy,
                                chunk=config.experts.chunk)
    num = num_units if kind == "experts" else 1
    gamma = config.experts.gamma if kind == "experts" else 0.0
  return fns, loss_fn, num, gamma


def get_reference_models(config: ml_collections.ConfigDict, splits: data.Splits,
                         workdir: str, tag: str = "", selector=None) -> ReferenceModels | None:
  """Trains (or loads from the workdir cache) the reference models the method needs.

  ``tag`` tells apart models trained on other data under one config (the two halves of
  :mod:`reducr_jax.train.double_reference`): it goes into the cache file name. ``selector``:
  the run's rule when already built (``selectors.get(config)`` otherwise).

  Returns:
    :class:`ReferenceModels`, or ``None`` for methods that need none.
  """
  kind = reference_kind_for_config(config, selector)
  if kind is None:
    return None
  fns, loss_fn, num, gamma = reference_model_fns(config, splits, kind)
  path = reference_cache.cache_path(config, workdir, kind + tag)
  fingerprint = reference_cache.fingerprint(config, kind + tag)
  cached = checkpointing.read_cache(path, fingerprint)
  if cached is not None:
    params = jax.tree.map(jnp.asarray, cached["params"])
    progress.say(f"stage 1: loaded cached {kind} reference models from {path}")
  else:
    logging.info("Training %s reference models (%d, gamma=%s) on %d holdout points", kind,
                 num if kind != "multihead" else splits.num_classes, gamma,
                 len(splits.holdout))
    start = time.time()
    params, best_val = stage1_trainer.train_reference_models(config, splits, kind, fns, num, gamma)
    progress.took(f"stage 1: trained the {kind} reference models", time.time() - start)
    checkpointing.write_cache(path, {"params": jax.tree.map(np.asarray, params),  # collective
                                      "best_val_loss": np.asarray(best_val)}, fingerprint)
  return ReferenceModels(kind, params, loss_fn)


def precompute_loss_table(refs: ReferenceModels, split: data.Split, batch_size: int,
                          config: ml_collections.ConfigDict | None = None) -> np.ndarray:
  """The ``[N, C']`` table of reference losses over a split, computed once in shards.

  Each process scores its contiguous share of the rows (:func:`sampling.process_range`)
  on its local devices (the batch split over them, params replicated), reading only
  those rows; the shares are then all-gathered, so every process holds the whole table
  and no host recomputes another's rows.

  Args:
    refs: the reference models.
    split: the split to score (``x`` may be lazy).
    batch_size: global evaluation batch (rounded up to a multiple of the local devices).
    config: for ``num_devices`` (default: every local device).
  """
  devices = sharding.local_devices(config or ml_collections.ConfigDict())
  procs, proc = jax.process_count(), jax.process_index()
  n = len(split.y)
  per_process = -(-n // procs)
  local_bs = -(-max(1, batch_size // procs) // len(devices)) * len(devices)
  mesh_sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices),
                                                               (sharding.AXIS,)),
                                             jax.sharding.PartitionSpec())
  params = jax.device_put(refs.params, mesh_sharding)            # replicated
  # The params are an argument, not closed over: a jit closing over arrays bakes them
  # into the executable as constants (a second copy, counted in its temporaries).
  jitted = jax.jit(refs.loss_fn)
  put = functools.partial(jax.device_put, device=sharding.device_sharding(devices))
  lo, hi = sampling.process_range(n, procs, proc)
  # A process with no rows still scores one (dropped) so every share has C columns.
  start = min(lo, n - 1)
  y_dtype = np.asarray(split.y[:1]).dtype
  local_bs, compiled = stage1_memory.fitting_batch(  # every batch has this size (last one padded)
      lambda b: jitted.lower(params, *put((np.zeros((b,) + split.x.shape[1:],
                                                    split.x.dtype),
                                           np.zeros((b,), y_dtype)))).compile(),
      min(local_bs, -(-(max(hi, start + 1) - start) // len(devices)) * len(devices)),
      len(devices),
      float(device_memory.device_capacity_bytes(devices[0])) if config is None else
      stage1_memory.memory_budget_bytes(config, devices[0]),
      workspace_bytes=stage1_memory.forward_workspace_bytes(devices[0]))
  reporter = progress.Reporter("stage 1: reference-loss table", max(hi, start + 1) - start,
                               "rows")
  started = time.time()
  mine = loss_table_rows(functools.partial(compiled, params), split.x, split.y, local_bs,
                         start, max(hi, start + 1), put, multiple_of=len(devices),
                         report=reporter.update)[:hi - lo]
  progress.took(f"stage 1: reference-loss table ({n} rows, batch {local_bs} per process)",
                time.time() - started)
  if procs == 1:
    return mine
  padded = np.zeros((per_process,) + mine.shape[1:], np.float32)
  padded[:len(mine)] = mine
  gathered = np.asarray(multihost_utils.process_allgather(padded))   # [procs, per, C']
  shares = []
  for p in range(procs):
    p_lo, p_hi = sampling.process_range(n, procs, p)
    shares.append(gathered[p, :p_hi - p_lo])
  return np.concatenate(shares)


def loss_table_rows(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], x: np.ndarray,
                    y: np.ndarray, batch_size: int = 1024, start: int = 0,
                    stop: Optional[int] = None,
                    put: Callable[[np.ndarray], Any] = jnp.asarray,
                    multiple_of: int = 1,
                    report: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """One pass over a dataset → the ``[N, C]`` table of expert losses (official default).

  Args:
    loss_fn: jitted ``(x_batch, y_batch) -> [b, C]``, e.g.
      ``functools.partial(jax.jit(functools.partial(expert_losses, apply_fn,
      strategy=...)), params)`` (params an argument of the jitted function, not closed
      over: closed-over arrays become constants of the executable), or a multi-head
      equivalent. Called on fixed-size batches (the last one zero-padded), so it
      compiles once.
    x: ``[N, ...]`` inputs; y: ``int[N]`` labels. Only rows ``[start, stop)`` are read,
      one batch at a time (a lazy ``x`` decodes only those).
    batch_size: evaluation batch size.
    start, stop: the rows to score (default all): what one process scores of a table
      computed in shards (:func:`precompute_loss_table`).
    put: host batch → device array (e.g. split over the local devices).
    multiple_of: the batch (shrunk to the rows when they are fewer) stays a multiple of
      this (e.g. the devices ``put`` splits it over).
    report: called with the number of rows scored so far after each batch (progress).

  Returns:
    ``float32[stop - start, C]`` NumPy table; row ``i`` is the expert losses of example
    ``start + i``. During training gather rows with the batch's indices into the dataset.
  """
  n = len(x)
  if len(y) != n:
    raise ValueError(f"y must have length N={n} like x, got {len(y)}")
  stop = n if stop is None else int(stop)
  if not 0 <= start < stop <= n:
    raise ValueError(f"need 0 <= start < stop <= N={n}, got start={start}, stop={stop}")
  rows_up = -(-(stop - start) // multiple_of) * multiple_of
  batch_size = max(1, min(int(batch_size), rows_up))
  rows = []
  for lo in range(start, stop, batch_size):
    hi = min(lo + batch_size, stop)
    xb, yb = x[lo:hi], np.asarray(y[lo:hi])
    pad = batch_size - len(xb)
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
    rows.append(np.asarray(loss_fn(put(xb), put(yb)))[:batch_size - pad])
    if report is not None:
      report(hi - start)
  return np.concatenate(rows).astype(np.float32)


def update_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The reference models' optimizer for ``experts.update_on_selected``: the *target's*
  optimizer config (official ``IrreducibleLossGenerators.config_optimizers`` instantiates
  ``MultiModels.optimizer_config``): AdamW with ``optimizer.weight_decay`` (and
  ``optimizer.grad_clip_norm``) at the method's learning rate
  (:func:`reducr_jax.train.optimizers.method_learning_rate`) × ``experts.update_lr_factor``
  (official ``param_group['lr'] / 100``), constant: the official update path configures no
  scheduler (``MultiModels.configure_optimizers`` returns the bare optimizers when
  ``update_irreducible`` is on), so ``optimizer.schedule`` / ``warmup_steps`` do not apply."""
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt.learning_rate = optimizers.method_learning_rate(config) * config.experts.update_lr_factor
  opt.schedule, opt.warmup_steps = "constant", 0
  return optimizers.make_optimizer(opt)


def online_update(config: ml_collections.ConfigDict, refs: ReferenceModels,
                  splits: data.Splits):
  """The reference models' update on the selected points (``experts.update_on_selected``).

  The official REDUCR code's ``update_irreducible`` (``UpdateIrreducible*LossGenerator.
  gradient_descent_step``): after each selection, every reference model takes one step of
  :func:`update_optimizer` (the target's AdamW at lr × ``experts.update_lr_factor``) on the
  *unweighted* mean cross-entropy of the k selected points (the eq.-8 γ weighting and
  ``experts.loss_normalisation`` of expert training do not apply), gradients averaged over
  the data-parallel devices (:func:`reducr_jax.train.experts_step.update_on_selected`). Official for
  ``rho_loss`` (the irreducible-loss model) and ``weighted`` (each class expert on all k
  points); the official factory raises ``NotImplementedError`` for the robust and payoff
  rules, for which this is the same update of their class experts (or of the multi-head
  model: each head's mean, averaged over heads) — an extension, not the official code.

  Returns:
    ``(state, update)``: the initial :class:`reducr_jax.core.stacked_experts.ExpertsState` (params are
    the variables ``{"params": ..., **model_state}``), and
    ``update(state, x [k/n, ...], y int[k/n], rng, axis_name) -> state``.
  """
  fns, _, _, _ = reference_model_fns(config, splits, refs.kind)
  tx = update_optimizer(config)
  variables = jax.tree.map(jnp.asarray, refs.params)
  stacked = refs.kind != "multihead"
  params = variables["params"]
  opt_state = jax.vmap(tx.init)(params) if stacked else tx.init(params)
  state = stacked_experts.ExpertsState(variables, opt_state, None)

  def update(state, x, y, rng, axis_name):
    model_state = {k: v for k, v in state.params.items() if k != "params"}
    inner = stacked_experts.ExpertsState(state.params["params"], state.opt_state, model_state)
    # γ = 0: the official unweighted mean cross-entropy (every weight 1, so neither the
    # groups nor the normalisation matter).
    inner = experts_step.update_on_selected(fns.apply, tx, inner, x, y, 0.0,
                                            train_apply_fn=fns.apply_train, rng=rng,
                                            axis_name=axis_name, stacked=stacked,
                                            normalisation="mean")
    return stacked_experts.ExpertsState(models.variables(inner.params, inner.model_state),
                                        inner.opt_state, None)
  return state, update


class References(NamedTuple):
  """How the train step gets its reference losses (:func:`prepare_references`).

  Attributes:
    reference: ``None`` (no reference models), ``'table'`` or ``'online'``.
    table: ``float32[N, C']`` reference losses of the train split (``'table'``), or None.
    params: replicated reference variables for ``'online'`` without updates, or None.
    loss_fn: ``(params, x, y) -> [b, C']`` for ``'online'``, or None.
    state, update: the online update on the selected points (:func:`online_update`),
      or ``()`` / ``None``.
  """
  reference: Optional[str] = None
  table: Optional[np.ndarray] = None
  params: Any = None
  loss_fn: Optional[Callable] = None
  state: Any = ()
  update: Optional[Callable] = None


def prepare_references(config: ml_collections.ConfigDict, splits: data.Splits,
                       refs: Optional[ReferenceModels], devices) -> References:
  """The trained reference models as the train step consumes them.

  ``config.experts.losses='precomputed'`` (and not multi-head): the ``[N, C']`` table over
  the train split; ``'online'`` / multi-head: the models themselves, replicated over
  ``devices``, or as train state when they are updated on the selected points.
  """
  if refs is None:
    return References()
  if refs.kind == "multihead" or config.experts.losses == "online":
    if config.experts.update_on_selected:
      state, update = online_update(config, refs, splits)
      return References("online", loss_fn=refs.loss_fn, state=state, update=update)
    return References("online", params=sharding.replicate(refs.params, devices),
                      loss_fn=refs.loss_fn)
  return References("table", table=precompute_loss_table(refs, splits.train,
                                                         config.eval_batch_size, config))

"""Stage 1: train the reference models on the holdout split, cached in the workdir.

REDUCR needs C class-irreducible experts (eq. 8, γ-weighted); RHO-LOSS needs one
irreducible-loss model trained on all the holdout data, which is the same procedure with
one expert and γ = 0. Both train with AdamW on holdout batches and keep, per expert, the
parameters with the best validation loss (each expert's own γ-weighted loss on the val
split), as the official implementation checkpoints by validation loss.

The result is cached as ``<workdir>/experts/<kind>-<fingerprint>.msgpack`` (or in
``config.experts.cache_dir``); the fingerprint hashes everything the models depend on
(dataset, model and expert configs, seed), so a re-run reuses them and a changed config
retrains. The file is written atomically with a content hash and verified on load; a
damaged one is reported and retrained (:mod:`reducr_jax.caches`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reducr_jax import caches
from reducr_jax import data
from reducr_jax import experts
from reducr_jax import models
from reducr_jax import selectors
from reducr_jax import sharding
from reducr_jax.data import augment as augment_lib


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


def _fingerprint(config: ml_collections.ConfigDict, kind: str) -> str:
  expert_config = {k: v for k, v in config.experts.to_dict().items() if k != "cache_dir"}
  blob = json.dumps({"format": 2, "kind": kind, "seed": config.seed, "dataset": config.dataset.to_dict(),
                     "model": config.model.to_dict(), "experts": expert_config,
                     "eval_batch_size": config.eval_batch_size},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(config: ml_collections.ConfigDict, workdir: str, kind: str) -> str:
  """Where the reference models of ``kind`` for this config are cached.

  ``config.experts.cache_dir`` when set (e.g. shared by the runs of a sweep), else
  ``<workdir>/experts``; the file name holds the config fingerprint.
  """
  directory = config.experts.get("cache_dir") or os.path.join(workdir, "experts")
  return os.path.join(caches.absolute(directory), f"{kind}-{_fingerprint(config, kind)}.msgpack")


def reference_kind(config: ml_collections.ConfigDict) -> str | None:
  """Which reference models the selection rule needs (``None``: none).

  From the rule's ``needs`` (:func:`reducr_jax.selectors.reference_kind`): C class
  experts (``"experts"``, or ``"multihead"`` with ``config.experts.losses='multihead'``)
  or one RHO-LOSS model (``"irreducible"``).
  """
  kind = selectors.reference_kind(selectors.get(config).needs)
  if kind == "experts" and config.experts.losses == "multihead":
    return "multihead"
  return kind


def _build(config, splits: data.Splits, kind: str):
  """(module fns, loss_fn, num_experts, gamma) for a reference-model kind.

  ``fns`` is the :class:`reducr_jax.models.ModelFns` of one reference model (the
  multi-head model, or one of the stacked experts); ``loss_fn(variables, x, y)`` gives the
  ``[b, C']`` reference losses from the (stacked) variables.
  """
  num_classes = splits.num_classes
  x0 = np.zeros((1,) + splits.holdout.x.shape[1:], splits.holdout.x.dtype)
  if kind == "multihead":
    module = experts.MultiHead(trunk=models.create_model(config.model, None),
                               num_heads=num_classes, num_classes=num_classes)
    fns = models.model_fns(module, x0, init_impl=models.init_rng_impl(config.model))
    loss_fn = lambda v, x, y: experts.multihead_expert_losses(fns.apply(v, x), y)  # noqa: E731
    num, gamma = 1, config.experts.gamma
  else:
    fns = models.model_fns(models.create_model(config.model, num_classes), x0,
                           init_impl=models.init_rng_impl(config.model))
    strategy = config.experts.strategy
    strategy = experts.default_strategy() if strategy == "auto" else strategy
    loss_fn = functools.partial(experts.expert_losses, fns.apply, strategy=strategy)
    num = num_classes if kind == "experts" else 1
    gamma = config.experts.gamma if kind == "experts" else 0.0
  return fns, loss_fn, num, gamma


def _weighted_loss_sums(table: jax.Array, y: jax.Array, mask: jax.Array, gamma) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e]) table[i, e]`` per column e → ``[E]`` (eq. 8 on val)."""
  w = experts.class_weight_matrix(y, table.shape[1], gamma)
  return jnp.sum(w * table * mask[:, None], axis=0)


def _train(config, splits: data.Splits, kind: str, fns: models.ModelFns, num: int,
           gamma: float):
  """Trains the reference models, keeping the variables with the best val loss.

  Stacked experts keep their best variables expert by expert; a multi-head model keeps
  the whole model at its best mean head loss (its heads share a trunk). Holdout batches
  get the training augmentation of ``config.dataset.augment`` (on device). Returns the
  best variables (``{"params": ..., **model_state}``, stacked for experts).
  """
  ex = config.experts
  tx = optax.adamw(ex.learning_rate, weight_decay=ex.weight_decay)
  rng = jax.random.PRNGKey(config.seed + 1_000_003)
  aug_kind = config.dataset.get("augment", "none")

  def augment(x, step):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1_000_033), step)
    return augment_lib.augment(key, x, jnp.arange(x.shape[0]), aug_kind)

  if kind == "multihead":
    params, model_state = models.load_pretrained(config.model, *jax.jit(fns.init)(rng))
    state = experts.ExpertsState(params, tx.init(params), model_state)

    @jax.jit
    def train_step(state, x, y, step):
      x = augment(x, step)
      p, o, loss, ms = experts.multihead_train_step(
          fns.apply, tx, state.params, state.opt_state, x, y, gamma,
          model_state=state.model_state, train_apply_fn=fns.apply_train,
          rng=jax.random.fold_in(rng, step))
      return experts.ExpertsState(p, o, ms), loss[None]

    @jax.jit
    def val_sums(variables, x, y, mask):
      table = experts.multihead_expert_losses(fns.apply(variables, x), y)
      return jnp.mean(_weighted_loss_sums(table, y, mask, gamma), keepdims=True)

    def keep_best(better, new, old):
      return jnp.where(better[0], new, old)
  else:
    state = experts.init_experts(fns.init, tx, rng, num)
    params, model_state = models.load_pretrained_stacked(config.model, state.params,
                                                         state.model_state)
    state = state._replace(params=jax.tree.map(jnp.asarray, params),
                           model_state=jax.tree.map(jnp.asarray, model_state))

    @jax.jit
    def train_step(state, x, y, step):
      return experts.train_step(fns.apply, tx, state, augment(x, step), y, gamma,
                                train_apply_fn=fns.apply_train,
                                rng=jax.random.fold_in(rng, step))

    @jax.jit
    def val_sums(variables, x, y, mask):
      table = experts.expert_losses(fns.apply, variables, x, y, "vmap")        # [b, num]
      return _weighted_loss_sums(table, y, mask, gamma)

    def keep_best(better, new, old):
      return jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

  def variables_of(state):
    return models.variables(state.params, state.model_state or {})

  best, best_val = variables_of(state), None
  for step in range(1, ex.num_steps + 1):
    idx = data.batch_indices(config.seed + 7, step - 1, len(splits.holdout), ex.batch_size)
    state, train_losses = train_step(state, splits.holdout.x[idx], splits.holdout.y[idx],
                                     step)
    if step % ex.eval_every == 0 or step == ex.num_steps:
      current = variables_of(state)
      val = sum(val_sums(current, x, y, m)
                for x, y, m in data.iterate_batches(splits.val, config.eval_batch_size))
      val = val / len(splits.val)
      better = jnp.ones_like(val, bool) if best_val is None else val < best_val
      best_val = val if best_val is None else jnp.where(better, val, best_val)
      best = jax.tree.map(lambda n, o: keep_best(better, n, o), current, best)
      logging.info("%s step %d: train loss %s, val loss %s", kind, step,
                   np.round(np.asarray(train_losses), 4).tolist(),
                   np.round(np.asarray(val), 4).tolist())
  return best, np.asarray(best_val)


def get_reference_models(config: ml_collections.ConfigDict, splits: data.Splits,
                         workdir: str) -> ReferenceModels | None:
  """Trains (or loads from the workdir cache) the reference models the method needs.

  Returns:
    :class:`ReferenceModels`, or ``None`` for methods that need none.
  """
  kind = reference_kind(config)
  if kind is None:
    return None
  fns, loss_fn, num, gamma = _build(config, splits, kind)
  path = cache_path(config, workdir, kind)
  cached = caches.read_cache(path)
  if cached is not None:
    params = flax.serialization.msgpack_restore(cached)["params"]
    params = jax.tree.map(jnp.asarray, params)
    logging.info("Loaded cached %s reference models from %s", kind, path)
  else:
    logging.info("Training %s reference models (%d, gamma=%s) on %d holdout points", kind,
                 num if kind != "multihead" else splits.num_classes, gamma,
                 len(splits.holdout))
    params, best_val = _train(config, splits, kind, fns, num, gamma)
    if jax.process_index() == 0:   # every process computes the same; one writes
      caches.write_cache(path, flax.serialization.msgpack_serialize(
          {"params": jax.tree.map(np.asarray, params), "best_val_loss": best_val}))
  return ReferenceModels(kind, params, loss_fn)


def precompute_table(refs: ReferenceModels, split: data.Split,
                     batch_size: int) -> np.ndarray:
  """The ``[N, C']`` table of reference losses over a split (one pass)."""
  fn = jax.jit(functools.partial(refs.loss_fn, refs.params))
  return experts.precompute_table(fn, split.x, split.y, batch_size)


def online_update(config: ml_collections.ConfigDict, refs: ReferenceModels,
                  splits: data.Splits):
  """The reference models' update on the selected points (``experts.update_on_selected``).

  The official REDUCR code's ``update_irreducible`` (there for RHO-LOSS only): after each
  selection, the reference models take one AdamW step on the k selected points at
  ``experts.learning_rate · experts.update_lr_factor`` (official: lr/100), with their
  eq.-8 loss (γ-weighted per expert; γ = 0 for the RHO-LOSS model), gradients averaged
  over the data-parallel devices (:func:`reducr_jax.experts.update_on_selected`). Works
  for stacked experts, the multi-head model and the irreducible-loss model alike.

  Returns:
    ``(state, update)``: the initial :class:`reducr_jax.experts.ExpertsState` (params are
    the variables ``{"params": ..., **model_state}``), and
    ``update(state, x [k/n, ...], y int[k/n], rng, axis_name) -> state``.
  """
  fns, _, _, gamma = _build(config, splits, refs.kind)
  ex = config.experts
  tx = optax.adamw(ex.learning_rate * ex.update_lr_factor, weight_decay=ex.weight_decay)
  variables = jax.tree.map(jnp.asarray, refs.params)
  stacked = refs.kind != "multihead"
  params = variables["params"]
  opt_state = jax.vmap(tx.init)(params) if stacked else tx.init(params)
  state = experts.ExpertsState(variables, opt_state, None)

  def update(state, x, y, rng, axis_name):
    model_state = {k: v for k, v in state.params.items() if k != "params"}
    inner = experts.ExpertsState(state.params["params"], state.opt_state, model_state)
    inner = experts.update_on_selected(fns.apply, tx, inner, x, y, gamma,
                                       train_apply_fn=fns.apply_train, rng=rng,
                                       axis_name=axis_name, stacked=stacked)
    return experts.ExpertsState(models.variables(inner.params, inner.model_state),
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
  return References("table", table=precompute_table(refs, splits.train,
                                                    config.eval_batch_size))

"""Stage 1: train the reference models on the holdout split, cached in the workdir.

REDUCR needs C class-irreducible experts (eq. 8, γ-weighted); RHO-LOSS needs one
irreducible-loss model trained on all the holdout data, which is the same procedure with
one expert and γ = 0. Both train with AdamW on holdout batches and keep, per expert, the
parameters with the best validation loss (each expert's own γ-weighted loss on the val
split), as the official implementation checkpoints by validation loss.

The result is cached as ``<workdir>/experts/<kind>-<fingerprint>.msgpack`` (or in
``config.experts.cache_dir``); the fingerprint hashes everything the models depend on
(dataset, model and expert configs, seed), so a re-run reuses them and a changed config
retrains.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, NamedTuple

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reducr_jax import data
from reducr_jax import experts
from reducr_jax import models


class ReferenceModels(NamedTuple):
  """Trained reference models and how to evaluate them.

  Attributes:
    kind: ``"experts"`` (C class experts), ``"multihead"`` (one model, C heads) or
      ``"irreducible"`` (RHO-LOSS: one model, γ = 0).
    params: stacked params (leading axis C, or 1) or the multi-head model's params.
    loss_fn: ``(params, x, y) -> [b, C']`` reference losses (C' = C, or 1).
  """
  kind: str
  params: Any
  loss_fn: Callable[[Any, jax.Array, jax.Array], jax.Array]


def _fingerprint(config: ml_collections.ConfigDict, kind: str) -> str:
  expert_config = {k: v for k, v in config.experts.to_dict().items() if k != "cache_dir"}
  blob = json.dumps({"kind": kind, "seed": config.seed, "dataset": config.dataset.to_dict(),
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
  return os.path.join(os.path.abspath(directory), f"{kind}-{_fingerprint(config, kind)}.msgpack")


def reference_kind(config: ml_collections.ConfigDict) -> str | None:
  """Which reference models ``config.selection.method`` needs (``None``: none)."""
  if config.selection.method == "rho_loss":
    return "irreducible"
  if config.selection.method == "reducr" and config.selection.use_expert:
    return "multihead" if config.experts.losses == "multihead" else "experts"
  return None


def _build(config, num_classes: int, kind: str):
  """(init_fn, apply_fn, loss_fn, num_experts, gamma) for a reference-model kind."""
  if kind == "multihead":
    module = experts.MultiHead(trunk=models.create_model(config.model, None),
                               num_heads=num_classes, num_classes=num_classes)
    apply_fn = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    loss_fn = lambda p, x, y: experts.multihead_expert_losses(apply_fn(p, x), y)  # noqa: E731
    num, gamma = 1, config.experts.gamma
  else:
    module = models.create_model(config.model, num_classes)
    apply_fn = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    strategy = config.experts.strategy
    strategy = experts.default_strategy() if strategy == "auto" else strategy
    loss_fn = functools.partial(experts.expert_losses, apply_fn, strategy=strategy)
    num = num_classes if kind == "experts" else 1
    gamma = config.experts.gamma if kind == "experts" else 0.0
  return module, apply_fn, loss_fn, num, gamma


def _weighted_loss_sums(table: jax.Array, y: jax.Array, mask: jax.Array, gamma) -> jax.Array:
  """``Σ_i mask_i (1 + γ·1[y_i = e]) table[i, e]`` per column e → ``[E]`` (eq. 8 on val)."""
  w = experts.class_weight_matrix(y, table.shape[1], gamma)
  return jnp.sum(w * table * mask[:, None], axis=0)


def _train(config, splits: data.Splits, kind: str, module, apply_fn, num: int, gamma: float):
  """Trains the reference models, keeping the parameters with the best val loss.

  Stacked experts keep their best parameters expert by expert; a multi-head model keeps
  the whole model at its best mean head loss (its heads share a trunk).
  """
  ex = config.experts
  tx = optax.adamw(ex.learning_rate, weight_decay=ex.weight_decay)
  x0 = jnp.zeros((1,) + splits.holdout.x.shape[1:], jnp.float32)
  init_fn = lambda rng: module.init(rng, x0)["params"]  # noqa: E731
  rng = jax.random.PRNGKey(config.seed + 1_000_003)

  if kind == "multihead":
    params = init_fn(rng)
    state = experts.ExpertsState(params, tx.init(params))

    @jax.jit
    def train_step(state, x, y):
      p, o, loss = experts.multihead_train_step(apply_fn, tx, state.params, state.opt_state,
                                                x, y, gamma)
      return experts.ExpertsState(p, o), loss[None]

    @jax.jit
    def val_sums(params, x, y, mask):
      table = experts.multihead_expert_losses(apply_fn(params, x), y)
      return jnp.mean(_weighted_loss_sums(table, y, mask, gamma), keepdims=True)

    def keep_best(better, new, old):
      return jnp.where(better[0], new, old)
  else:
    state = experts.init_experts(init_fn, tx, rng, num)
    train_step = jax.jit(lambda s, x, y: experts.train_step(apply_fn, tx, s, x, y, gamma))

    @jax.jit
    def val_sums(params, x, y, mask):
      table = experts.expert_losses(apply_fn, params, x, y, "vmap")           # [b, num]
      return _weighted_loss_sums(table, y, mask, gamma)

    def keep_best(better, new, old):
      return jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

  best_params, best_val = state.params, None
  for step in range(1, ex.num_steps + 1):
    idx = data.batch_indices(config.seed + 7, step - 1, len(splits.holdout), ex.batch_size)
    state, train_losses = train_step(state, splits.holdout.x[idx], splits.holdout.y[idx])
    if step % ex.eval_every == 0 or step == ex.num_steps:
      val = sum(val_sums(state.params, x, y, m)
                for x, y, m in data.iterate_batches(splits.val, config.eval_batch_size))
      val = val / len(splits.val)
      better = jnp.ones_like(val, bool) if best_val is None else val < best_val
      best_val = val if best_val is None else jnp.where(better, val, best_val)
      best_params = jax.tree.map(lambda n, o: keep_best(better, n, o), state.params,
                                 best_params)
      logging.info("%s step %d: train loss %s, val loss %s", kind, step,
                   np.round(np.asarray(train_losses), 4).tolist(),
                   np.round(np.asarray(val), 4).tolist())
  return best_params, np.asarray(best_val)


def get_reference_models(config: ml_collections.ConfigDict, splits: data.Splits,
                         workdir: str) -> ReferenceModels | None:
  """Trains (or loads from the workdir cache) the reference models the method needs.

  Returns:
    :class:`ReferenceModels`, or ``None`` for methods that need none.
  """
  kind = reference_kind(config)
  if kind is None:
    return None
  module, apply_fn, loss_fn, num, gamma = _build(config, splits.num_classes, kind)
  path = cache_path(config, workdir, kind)
  if os.path.exists(path):
    with open(path, "rb") as f:
      params = flax.serialization.msgpack_restore(f.read())["params"]
    params = jax.tree.map(jnp.asarray, params)
    logging.info("Loaded cached %s reference models from %s", kind, path)
  else:
    logging.info("Training %s reference models (%d, gamma=%s) on %d holdout points", kind,
                 num if kind != "multihead" else splits.num_classes, gamma,
                 len(splits.holdout))
    params, best_val = _train(config, splits, kind, module, apply_fn, num, gamma)
    if jax.process_index() == 0:   # every process computes the same; one writes
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.tmp-{os.getpid()}"
      with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(
            {"params": jax.tree.map(np.asarray, params), "best_val_loss": best_val}))
      os.replace(tmp, path)                      # atomic: a killed run never leaves half a file
  return ReferenceModels(kind, params, loss_fn)


def precompute_table(refs: ReferenceModels, split: data.Split,
                     batch_size: int) -> np.ndarray:
  """The ``[N, C']`` table of reference losses over a split (one pass)."""
  fn = jax.jit(functools.partial(refs.loss_fn, refs.params))
  return experts.precompute_table(fn, split.x, split.y, batch_size)

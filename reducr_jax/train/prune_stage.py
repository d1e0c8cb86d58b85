"""Static pruning of the train split before training (``config.pruning``), cached.

``config.pruning.strategy``:
  * ``none`` — keep everything;
  * ``random`` — a uniformly random ``density`` fraction;
  * ``el2n``, ``grand``, ``forgetting``, ``dyn_unc`` — keep the ``density`` fraction with
    the highest (``keep='hardest'``) or lowest score of :mod:`reducr_jax.core.pruning`;
  * ``drop`` — DRoP: per-class quotas ∝ (1 − validation recall of a query model), random
    inside each class.

All scores and recalls come from one short *scoring* run: ``num_inits`` models (the
config's architecture — MLP, ResNet with batch norm, BERT — through the same
:class:`reducr_jax.models.ModelFns` as the trainer, stacked and trained together with
``vmap``, plain cross-entropy)
trained for ``score_epochs`` epochs on the train split. After each epoch the stack is
evaluated on the whole train split; EL2N and GraNd use the models after ``early_epoch``
epochs (Paul et al.: early in training), forgetting events and dynamic uncertainty use
the per-epoch history, and DRoP uses the models' per-class recall on the val split (as
the DRoP slides do; optionally smoothed, :func:`query_recalls`). Every score is averaged over the ``num_inits`` initialisations.

The kept indices are cached in ``<workdir>/pruning/`` under a fingerprint of everything
they depend on, so a resumed run prunes identically, and a sweep's runs share one scoring
run per seed when they share the cache directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax.run import caches
from reducr_jax.run import checkpointing
from reducr_jax.core import class_weighted_losses
from reducr_jax.config import config_schema
from reducr_jax import data
from reducr_jax.train import experts_step
from reducr_jax.core import metrics
from reducr_jax import models
from reducr_jax.run import progress
from reducr_jax.core import pruning
from reducr_jax.core import pruning_scores
from reducr_jax.core import rng_streams
from reducr_jax.core import stacked_experts
from reducr_jax.data import random_access


class Scores(NamedTuple):
  """Per-example scores ``[N]`` of the train split; the query models' val counts ``[C]``.

  ``val_correct`` / ``val_counts`` are summed over the ``num_inits`` query models.
  """
  el2n: np.ndarray
  grand: np.ndarray
  forgetting: np.ndarray
  dyn_unc: np.ndarray
  val_correct: np.ndarray
  val_counts: np.ndarray


def query_recalls(scores: Scores, prior: float) -> np.ndarray:
  """The query models' per-class validation recall ``(correct + a) / (count + 2a)`` →
  ``[C]`` (:func:`reducr_jax.core.pruning.smoothed_recalls`, ``a = config.pruning.recall_prior``)."""
  return pruning.smoothed_recalls(scores.val_correct, scores.val_counts, prior)


def _scoring_fingerprint(config: Any) -> str:
  score_fields = {  # config_schema.PRUNING_SCORE_FIELDS, under the names the cache used
      {"dyn_unc_window": "window"}.get(name, name): config.pruning[name]
      for name in config_schema.in_section(config_schema.PRUNING_SCORE_FIELDS, "pruning")}
  blob = json.dumps({"seed": config.seed, "dataset": config.dataset.to_dict(),
                     "model": config.model.to_dict(), "optimizer": config.optimizer.to_dict(),
                     **score_fields}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compute_scores(config: Any, splits: data.Splits) -> Scores:
  """The scoring run (see the module docstring) → :class:`Scores`."""
  p = config.pruning
  c = splits.num_classes
  x0 = np.zeros((1,) + splits.train.x.shape[1:], splits.train.x.dtype)
  fns = models.model_fns(models.create_model(config.model, c), x0,
                         init_impl=models.init_rng_impl(config.model))
  tx = optax.adamw(config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay)
  init_key = rng_streams.key(config.seed, "pruning_init")
  state = stacked_experts.init_experts(fns.init, tx, init_key, p.num_inits)
  # γ = 0: every stacked model minimises the plain cross-entropy (training mode: batch
  # norm statistics and dropout as the model has them).
  step = jax.jit(lambda s, x, y, i: experts_step.experts_train_step(
      fns.apply, tx, s, x, y, 0.0, train_apply_fn=fns.apply_train,
      rng=jax.random.fold_in(init_key, i)))
  variables_of = lambda st: models.variables(st.params, st.model_state or {})  # noqa: E731
  logits_of = jax.jit(jax.vmap(fns.apply, in_axes=(0, None)))        # [S, b, K]
  train, n = splits.train, len(splits.train)
  steps_per_epoch = max(1, -(-n // p.batch_size))

  def train_logits(params):
    return np.concatenate([np.asarray(logits_of(params, xb))[:, :int(m.sum())]
                           for xb, _, m in data.iterate_batches(train, config.eval_batch_size)],
                          axis=1)                                     # [S, N, K]

  order = rng_streams.order_seed(config.seed, "pruning_order")
  forgetting = pruning_scores.forgetting_init(p.num_inits * n)
  probs, early_params, early_logits = [], None, None
  t0 = time.time()
  for epoch in range(1, p.score_epochs + 1):
    for i in range(steps_per_epoch):
      idx = data.batch_indices(order, (epoch - 1) * steps_per_epoch + i, n,
                               p.batch_size)
      state, _ = step(state, train.x[idx], train.y[idx], (epoch - 1) * steps_per_epoch + i)
    logits = train_logits(variables_of(state))
    correct = (logits.argmax(-1) == train.y[None]).reshape(-1)
    forgetting = pruning_scores.forgetting_update(forgetting, jnp.asarray(correct))
    probs.append(np.asarray(pruning_scores.true_label_probability(jnp.asarray(logits),
                                                           jnp.asarray(train.y))))
    if epoch == p.early_epoch:
      early_params, early_logits = (state.params, state.model_state or {}), logits
    if jax.process_index() == 0:
      rate = epoch / max(time.time() - t0, 1e-9)
      print(f"pruning scores: epoch {epoch}/{p.score_epochs}  "
            f"{progress.rate_and_eta(epoch, p.score_epochs, rate, 'epochs')}",
            flush=True)

  def one_loss(params_and_state, x, y):
    # GraNd: the gradient norm w.r.t. the parameters only (batch statistics are constants).
    params, model_state = params_and_state
    variables = models.variables(params, jax.lax.stop_gradient(model_state))
    return class_weighted_losses.cross_entropy(fns.apply(variables, x[None]), y[None])[0]
  grand = pruning_scores.grand_scores_stacked(one_loss, early_params,
                                       (jnp.asarray(train.x), jnp.asarray(train.y)),
                                       chunk_size=256)
  el2n = pruning_scores.el2n_scores(jnp.asarray(early_logits), jnp.asarray(train.y))
  forget = np.asarray(pruning_scores.forgetting_scores(forgetting, never_learned_score=p.score_epochs))
  history = np.stack(probs)                                           # [T, S, N]
  dyn = np.mean([np.asarray(pruning_scores.dynamic_uncertainty(jnp.asarray(history[:, s]),
                                                        p.dyn_unc_window))
                 for s in range(p.num_inits)], axis=0)
  per_model = jax.jit(jax.vmap(lambda v, xb, yb, mb: metrics.correct_sums(
      fns.apply(v, xb), yb, mb), in_axes=(0, None, None, None)))
  val = [per_model(variables_of(state), xb, yb, mb)
         for xb, yb, mb in data.iterate_batches(splits.val, config.eval_batch_size)]
  val = jax.tree.map(lambda *a: np.sum(a, axis=(0, 1)), *val)         # summed over S
  return Scores(el2n=np.asarray(el2n), grand=np.asarray(grand),
                forgetting=forget.reshape(p.num_inits, n).mean(0), dyn_unc=dyn,
                val_correct=np.asarray(val.sums), val_counts=np.asarray(val.counts))


def kept_indices(config: Any, splits: data.Splits,
                 scores: Scores | None) -> np.ndarray:
  """Sorted indices into the train split kept by ``config.pruning``."""
  p = config.pruning
  labels = splits.train.y
  rng = rng_streams.key(config.seed, "pruning_random")
  if p.strategy == "random":
    return np.sort(np.asarray(jax.random.permutation(rng, len(labels)))[
        :int(np.floor(p.density * len(labels) + 0.5))])
  if p.strategy == "drop":
    return pruning.drop_prune(rng, labels, query_recalls(scores, p.recall_prior), p.density)
  return pruning.prune_by_score(getattr(scores, p.strategy), labels, p.density, keep=p.keep,
                                per_class=p.per_class)


def prune_train_split(config: Any, splits: data.Splits,
                      workdir: str) -> tuple[data.Splits, dict]:
  """``splits`` with the train split pruned by ``config.pruning`` (cached), and a summary.

  Returns:
    ``(splits, info)``; ``info`` has the strategy, density, kept count and per-class kept
    counts (and the query recalls for DRoP).
  """
  p = config.pruning
  if p.strategy == "none":
    return splits, {"strategy": "none"}
  directory = p.cache_dir or os.path.join(workdir, "pruning")
  scores = None
  if p.strategy != "random":
    fingerprint = _scoring_fingerprint(config)
    path = os.path.join(caches.absolute(directory), f"scores-{fingerprint}")
    cached = checkpointing.read_cache(path, fingerprint)
    if cached is not None:
      scores = Scores(**{k: cached[k] for k in Scores._fields})
    else:
      scores = compute_scores(config, splits)    # every process computes and saves the same
      checkpointing.write_cache(path, {k: np.asarray(v) for k, v in scores._asdict().items()},
                                fingerprint)
  keep = kept_indices(config, splits, scores)
  t = splits.train
  train = data.Split(x=random_access.take(t.x, keep), y=t.y[keep], y_clean=t.y_clean[keep],
                     index=t.index[keep])           # a lazy view for Clothing1M, not a decode
  info = {"strategy": p.strategy, "density": p.density, "kept": int(len(keep)),
          "kept_per_class": np.bincount(train.y, minlength=splits.num_classes).tolist()}
  if scores is not None:
    info["query_recalls"] = query_recalls(scores, p.recall_prior).tolist()
  return dataclasses.replace(splits, train=train), info

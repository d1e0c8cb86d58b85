"""The REDUCR trainer: ``train_and_evaluate(config, workdir)`` composes the pure pieces.

Stages:
  1. reference models on the holdout split (:mod:`reducr_jax.train.stage1_trainer`; cached and
     handed over by :mod:`reducr_jax.train.references`);
  2. target-model training with online batch selection, one ``pmap``-ed step per large
     batch (:func:`reducr_jax.train.selection_step.make_train_step`);
  3. evaluation of the kept model (``config.model_selection``, e.g. the best worst-class
     validation accuracy, REDUCR App. A.6) on the val and test splits → ``results.json``.

The step itself, and how it is data parallel with one global selection, is
:mod:`reducr_jax.train.selection_step`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reducr_jax.run import checkpointing
from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.run import divergence
from reducr_jax.train import double_reference
from reducr_jax.train import evaluation
from reducr_jax.run import metric_writers
from reducr_jax.core import metrics
from reducr_jax import models
from reducr_jax.core import mwu
from reducr_jax.train import optimizers
from reducr_jax.train import periodic
from reducr_jax.run import preemption
from reducr_jax.run import progress
from reducr_jax.train import prune_stage
from reducr_jax.train import references
from reducr_jax import reweighters
from reducr_jax.core import rng_streams
from reducr_jax.train import run_results
from reducr_jax import selectors
from reducr_jax.train import sharding
from reducr_jax.config import size_checks
from reducr_jax.train import selection_step
from reducr_jax.train import train_state
from reducr_jax.config import workdir as workdir_lib
from reducr_jax.data import pipeline

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
  config = configuration.apply_method_overrides(config)   # the method's official settings
  devices = sharding.local_devices(config)
  pmap_devices = sharding.pmap_devices(devices)
  n = len(devices) * jax.process_count()          # global data-parallel devices
  rules = configuration.validate_config(config, n)   # the rule and reweighter, built once
  workdir = configuration.check_workdir(workdir)
  configuration.check_output_dirs(config, workdir)
  with workdir_lib.lock(workdir), preemption.Handler() as preempt, \
      checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:   # waits for
    return _train_locked(config, workdir, splits, devices, pmap_devices, preempt, ckpt,  # its
                         rules)                                                           # save


def _train_locked(config, workdir, splits, devices, pmap_devices, preempt, ckpt, rules):
  """:func:`train_and_evaluate` once the workdir is locked and signals are handled (``ckpt``:
  the run's checkpointer, ``rules``: its selector and reweighter, built once): the
  data (:func:`_prepare_data`), stage 1 (:func:`_reference_stage`), stage 2
  (:func:`_selection_stage`) and stage 3 (the kept model's evaluation, written by
  :func:`reducr_jax.train.run_results.write_results`)."""
  n = len(devices) * jax.process_count()
  workdir_lib.check_config(workdir, config)
  as_given = json.loads(config.to_json_best_effort())    # stored in every checkpoint
  config, splits, pruning_info, given_eta, eta = _prepare_data(config, workdir, splits, n,
                                                                rules)
  c = splits.num_classes
  x0 = np.zeros((1,) + splits.train.x.shape[1:], splits.train.x.dtype)
  fns = models.model_fns(models.create_model(config.model, c), x0, axis_name=sharding.AXIS,
                         init_impl=models.init_rng_impl(config.model))
  refs, expert_seconds = _reference_stage(config, splits, workdir, devices, rules)
  cfg = train_state.StepConfig.from_config(config, c, n, refs.reference,
                               np.bincount(splits.train.y, minlength=c), refs.update, rules)
  p_eval = evaluation.make_eval_step(fns.apply, c, pmap_devices)
  eval_bs = evaluation.per_device_batch(   # val, test and the class-holdout split
      config.eval_batch_size, n, [len(data.class_holdout_split(config, splits).y),
                                  len(splits.val.y), len(splits.test.y)])
  group_of = np.asarray(cfg.group_of, np.int32) if cfg.group_of else None
  p_state, best, start, t_start = _selection_stage(
      config, workdir, splits, refs, fns, cfg, devices, pmap_devices, preempt, ckpt,
      as_given, p_eval, eval_bs, group_of)
  t_eval = time.time()             # stage 3: evaluate the kept model
  final_state = sharding.first_replica(p_state)
  p_best = sharding.replicate(best["params"], devices)
  val, test = evaluation.val_and_test(p_eval, p_best, splits, eval_bs, n, group_of)
  progress.took("stage 3: final evaluation", time.time() - t_eval)
  return run_results.write_results(
      config, workdir, splits, cfg, final_state, best, val, test, group_of,
      run_results.RunInfo(eta, given_eta, pruning_info, expert_seconds, t_start,
                          config.num_steps - start, n))


def _prepare_data(config, workdir, splits, n, rules):
  """The splits (made, size-checked, pruned) and the resolved MWU η →
  ``(config, splits, pruning_info, given_eta, eta)``."""
  if splits is None:
    try:
      splits = data.make_splits(config.dataset, config.seed)
    except (FileNotFoundError, ImportError, ValueError) as e:   # missing/bad data: one line
      raise configuration.ConfigError(str(e)) from None
  size_checks.check_batch_sizes(config, splits, n, rules)   # one line, before anything trains
  size_checks.check_against_data(config, splits, rules)
  unpruned = splits
  splits, pruning_info = prune_stage.prune_train_split(config, splits, workdir)
  size_checks.check_pruned(config, unpruned, splits)
  given_eta = config.selection.eta
  config, eta = configuration.resolve_eta(config, splits.num_classes,
                                          progress.say)   # announced before compiling
  return config, splits, pruning_info, given_eta, eta


def _reference_stage(config, splits, workdir, devices, rules):
  """Stage 1: the reference models as the train step consumes them →
  ``(references.References, seconds)``."""
  t0 = time.time()
  if config.experts.get("double_irreducible", False):   # cross-fitted on train halves
    refs = double_reference.references(config, splits, workdir, rules.selector)
  else:
    refs = references.get_reference_models(config, splits, workdir, selector=rules.selector)
    refs = references.prepare_references(config, splits, refs, devices)
  expert_seconds = time.time() - t0
  if refs.reference is not None:
    progress.took("stage 1 (reference models and their losses)", expert_seconds)
  return refs, expert_seconds


def _selection_stage(config, workdir, splits, refs, fns, cfg, devices, pmap_devices,
                     preempt, ckpt, as_given, p_eval, eval_bs, group_of):
  """Stage 2: online batch selection from the newest intact checkpoint (or step 0) to
  ``config.num_steps``, logging, evaluating and checkpointing on :func:`periodic.every`.

  Returns ``(p_state, best, start, t_start)``: the replicated final state, the kept model,
  the step the run started (resumed) from and when its loop started (``time.time()``).
  Raises the preemption's stop after checkpointing when a signal asked to stop.
  """
  num_processes, process_index = jax.process_count(), jax.process_index()
  n_local = len(devices)
  n = n_local * num_processes
  tx = optimizers.from_config(config)
  state = train_state.init_state(rng_streams.key(config.seed, "target_init"),
                     lambda r: models.load_pretrained(config.model, *jax.jit(fns.init)(r)),
                     tx, cfg, rng_streams.key(config.seed, "selection"), refs.state)
  best = evaluation.initial_best(models.variables(state.params, state.model_state))
  restored = ckpt.restore_newest_intact(sharding.host_copy({"state": state, "best": best}))
  if restored is not None:
    start, restored = restored
    workdir_lib.check_num_steps(config, start)
    state, best = restored["state"], restored["best"]
    progress.say(f"resumed from step {start}")
  start = int(state.step)
  writer = metric_writers.MetricWriter(workdir, resume_step=start,
                                       enabled=jax.process_index() == 0)
  p_state = sharding.replicate(state, devices)
  p_step = selection_step.make_train_step(fns, refs.loss_fn, tx, cfg, pmap_devices)
  p_variables = lambda st: models.variables(st.params, st.model_state)  # noqa: E731
  holdout_every = (config.selection.holdout_every if config.selection.holdout_every != -1
                   else max(1, len(splits.train) // config.batch_size))   # -1: every epoch
  refresh_holdout = selectors.CLASS_HOLDOUT_LOSS in cfg.needs and cfg.holdout_loss == "epoch"

  t_start, t_last, last_step = time.time(), time.time(), start
  batches = pipeline.batches(            # read, decode (config.data_workers) and copy ahead
      config, lambda t: sharding.shard(data.train_batch(
          config, splits, refs.table, t, holdout=cfg.ema_holdout,
          validation=reweighters.VALIDATION_BATCH in cfg.needs,
          num_processes=num_processes, process_index=process_index), n_local),
      start, config.num_steps,
      put=functools.partial(jax.device_put, device=sharding.device_sharding(devices)))
  skips, stop = divergence.SkipMonitor(config.max_consecutive_skipped), False
  last = config.num_steps
  preempt.defer()                   # signals now stop the loop at a step boundary
  for step, batch in zip(range(start, config.num_steps), batches):
    if refresh_holdout and periodic.every(step, holdout_every):
      _, loss_sums = evaluation.evaluate(p_eval, p_variables(p_state),
                                         data.class_holdout_split(config, splits), eval_bs, n)
      h = mwu.class_holdout_loss(metrics.group_sums(metrics.ClassSums(*loss_sums), group_of))
      p_state = p_state._replace(holdout_loss=sharding.replicate(
          jnp.asarray(h, jnp.float32), devices))
    p_state, step_metrics = p_step(p_state, batch, refs.params)
    done = step + 1
    skips.push(done, step_metrics["skipped"])

    if periodic.every(done, config.log_every, last):
      m = jax.tree.map(lambda a: np.asarray(a[0]), step_metrics)
      m.pop("selected_indices")
      m["num_skipped"] = int(np.asarray(p_state.num_skipped[0]))
      writer.write(done, {f"train/{k}": v for k, v in m.items()})
    if periodic.every(done, config.eval_every, last):
      params = p_variables(p_state)
      val, test = evaluation.val_and_test(p_eval, params, splits, eval_bs, n, group_of)
      best = evaluation.keep_best(best, val, params, done, selectors.model_selection(config))
      writer.write(done, {**{f"val/{k}": v for k, v in val.items()},
                          **{f"test/{k}": v for k, v in test.items()}})
      rate = (done - last_step) / max(time.time() - t_last, 1e-9)
      t_last, last_step = time.time(), done
      progress.say(f"step {done}/{config.num_steps}  {progress.rate_and_eta(done, config.num_steps, rate)}"
                f"  skipped {int(sharding.first_replica(p_state.num_skipped))}  worst-class val acc "
                f"{val['worst_class_accuracy']:.3f}  val acc {val['accuracy']:.3f}")
    stop = preempt.requested(done) and done < config.num_steps
    if periodic.every(done, config.checkpoint_every, last) or stop:
      with preempt.critical():        # a second signal waits for the manifest
        ckpt.save(done, sharding.host_copy({"state": sharding.first_replica(p_state),
                                            "best": best}), as_given)
    if stop:
      break
  writer.close()
  ckpt.close()
  if stop:
    raise preempt.stop(done, ckpt.directory)
  skips.flush()
  preempt.defer(False)
  progress.took(f"stage 2: {config.num_steps - start} training steps", time.time() - t_start)
  return p_state, best, start, t_start


"""Stage 1: train the reference models on the holdout split, cached in the workdir.

REDUCR needs C class-irreducible experts (eq. 8, γ-weighted); RHO-LOSS needs one
irreducible-loss model trained on all the holdout data, which is the same procedure with
one expert and γ = 0. Both train with AdamW on holdout batches and keep, per expert, the
parameters with the best γ-weighted loss (each expert's own) on ``config.experts.select_on``:
``"val"`` (the val split; for CIFAR / CINIC-10 / MNLI / QQP the val split *is* the holdout
the experts train on) or ``"train_pool"`` (the train split, data the experts never train on:
the official ``src/train_irreducible.py`` fits on ``datamodule.val_dataloader()`` with
``val_dataloaders=datamodule.train_dataloader()`` and ``callbacks: val_loss.yaml``, i.e.
the checkpoint of minimal ``val_loss_epoch`` measured on the train pool). The batch loss
is averaged as ``config.experts.loss_normalisation`` says (:func:`experts.weighted_average`).

Stage 1 is data parallel like the train step: one ``pmap`` over every device of every
process (each process feeds its own rows of every holdout batch, gradients are averaged
over the device axis, batch norm statistics are those of the whole batch), so it equals a
one-device run up to float summation order. The C stacked experts run with
``config.experts.strategy`` (``vmap`` / ``map`` / ``loop``; ``vmap`` with
``config.experts.chunk`` = n runs n experts per ``vmap``); ``auto`` compiles the training
step for the backend's candidates, best first, and keeps the first whose compiled memory
fits ``config.experts.max_memory_gb`` (:func:`pick_strategy`). The ``[N, C]`` loss table is
computed in shards, each process scoring its contiguous share of the rows on its local
devices, and assembled once (:func:`precompute_table`).

The result is cached in ``<workdir>/experts/<kind>-<fingerprint>/`` (or in
``config.experts.cache_dir``); the fingerprint hashes everything the models depend on
(dataset, model and expert configs, seed), so a re-run reuses them and a changed config
retrains. The cache is a checkpoint (:func:`reducr_jax.checkpointing.write_cache`: atomic,
with a manifest, and the fingerprint stored with it), verified on load; a damaged one, or
one written for another config (copied under this config's name), is reported and
retrained.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
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
from jax.experimental import multihost_utils

from reducr_jax import caches
from reducr_jax import checkpointing
from reducr_jax import chips
from reducr_jax import config_schema
from reducr_jax import data
from reducr_jax import device_memory
from reducr_jax import experts
from reducr_jax import models
from reducr_jax import optimizers
from reducr_jax import preemption
from reducr_jax import progress
from reducr_jax import rng_streams
from reducr_jax import selectors
from reducr_jax import sharding
from reducr_jax import spilled_best
from reducr_jax import stage1_steps
from reducr_jax.data import groups as groups_lib
from reducr_jax.data import pipeline
from reducr_jax.data import streams


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


# Fields of config.experts left out of the cache fingerprint (config_schema): those that
# change how stage 1 runs, not what it computes, and those that act only in stage 2.
EXECUTION_FIELDS = config_schema.in_section(config_schema.EXPERTS_EXECUTION_FIELDS, "experts")
STAGE2_FIELDS = config_schema.in_section(config_schema.EXPERTS_STAGE2_FIELDS, "experts")


def _fingerprint(config: ml_collections.ConfigDict, kind: str) -> str:
  def without_legacy(d: dict, section: str) -> dict:
    old = config_schema.added_in_section(section)   # added fields at their recorded values
    return {k: v for k, v in d.items()
            if not (k in old and json.dumps(v, default=str) == json.dumps(old[k], default=str))}
  expert_config = {k: v for k, v in without_legacy(config.experts.to_dict(), "experts").items()
                   if k not in EXECUTION_FIELDS + STAGE2_FIELDS}
  dataset = without_legacy(config.dataset.to_dict(), "dataset")
  blob = json.dumps({"format": 2, "kind": kind, "seed": config.seed, "dataset": dataset,
                     "model": without_legacy(config.model.to_dict(), "model"),
                     "experts": expert_config,
                     "eval_batch_size": config.eval_batch_size},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(config: ml_collections.ConfigDict, workdir: str, kind: str) -> str:
  """Where the reference models of ``kind`` for this config are cached.

  ``config.experts.cache_dir`` when set (e.g. shared by the runs of a sweep), else
  ``<workdir>/experts``; the directory name holds the config fingerprint.
  """
  directory = config.experts.cache_dir or os.path.join(workdir, "experts")
  return os.path.join(caches.absolute(directory), f"{kind}-{_fingerprint(config, kind)}")


def reference_kind(config: ml_collections.ConfigDict, selector=None) -> str | None:
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


def _build(config, splits: data.Splits, kind: str):
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
    module = experts.MultiHead(trunk=models.create_model(config.model, None),
                               num_heads=num_units, num_classes=num_classes)
    fns = make_fns(module)
    loss_fn = lambda v, x, y: experts.multihead_expert_losses(fns.apply(v, x), y)  # noqa: E731
    num, gamma = 1, config.experts.gamma
  else:
    fns = make_fns(models.create_model(config.model, num_classes))
    strategy = config.experts.strategy
    strategy = experts.default_strategy() if strategy == "auto" else strategy
    loss_fn = functools.partial(experts.expert_losses, fns.apply, strategy=strategy,
                                chunk=config.experts.chunk)
    num = num_units if kind == "experts" else 1
    gamma = config.experts.gamma if kind == "experts" else 0.0
  return fns, loss_fn, num, gamma


_weighted_loss_sums = stage1_steps.weighted_loss_sums   # eq. 8 sums (stage1_steps)
_weight_sums = stage1_steps.weight_sums


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


def strategy_candidates(num: int, strategy: str, chunk: int, batch: int = 1,
                        backend: str | None = None) -> list[tuple[str, int, int]]:
  """``(strategy, chunk, microbatches)`` for C = ``num`` stacked experts, best first.

  An explicit ``strategy`` is the one candidate. ``auto``: on CPU ``map`` (conv nets:
  ``vmap`` lowers to grouped convolutions, several times slower and C× the activation
  memory, see :func:`reducr_jax.experts.default_strategy`); on GPU/TPU ``vmap`` of all C,
  then chunks of the largest divisor of C ≤ C/2, C/4, … (≥ 2 experts per ``vmap``; a
  divisor, so :func:`reducr_jax.experts.train_step` updates the chunks in place), then
  ``map`` (one at a time);
  then, when even one expert's step is too big, ``map`` with its gradient accumulated
  over 2, 4, 8, … slices of the per-device ``batch`` (:func:`reducr_jax.experts.train_step`
  ``microbatches``; batch norm then sees slices).
  """
  if strategy != "auto":
    return [(strategy, int(chunk), 1)]
  out = [("map", 0, 1)]
  if experts.default_strategy(backend) != "map" and num > 1:
    out, target = [("vmap", 0, 1)], num // 2
    while target >= 2:   # the largest divisor of C ≤ C/2, C/4, …: chunks update in place
      width = max(d for d in range(1, target + 1) if num % d == 0)
      if width >= 2 and ("vmap", width, 1) not in out:
        out.append(("vmap", width, 1))
      target //= 2
    out.append(("map", 0, 1))
  m = 2
  while batch % m == 0:
    out.append(("map", 0, m))
    m *= 2
  return out


def stage1_candidates(config: ml_collections.ConfigDict, kind: str, num: int,
                      b_local: int, backend: str) -> list[tuple[str, int, int]]:
  """The stage-1 strategies to try on ``backend``, best first (one for multihead)."""
  if kind == "multihead":
    return [("map", 0, 1)]
  return strategy_candidates(num, config.experts.strategy, config.experts.chunk, b_local,
                             backend)


def strategy_line(kind: str, num: int, candidate: tuple[str, int, int], configured: str,
                  devices: int, peak: Optional[float], budget: float) -> str:
  """The stage-1 line that says how the reference models train, printed by default:
  ``'stage 1: 14 experts with map (auto), 2 microbatches, 1 device, compiled peak
  1.23 GiB per device (budget 2.94 GiB)'``."""
  strategy, chunk, micro = candidate
  what = "1 multi-head model" if kind == "multihead" else (
      f"{num} {'experts' if kind == 'experts' else 'irreducible-loss model'}")
  how = strategy + (f" in chunks of {chunk}" if strategy == "vmap" and 0 < chunk < num else "")
  how += f" ({configured})" if configured == "auto" else ""
  if kind == "multihead":
    how = "one program"
  mem = ("" if peak is None else f", compiled peak {peak / device_memory.GIB:.3g} GiB per "
         f"device (budget {budget / device_memory.GIB:.3g} GiB)")
  return (f"stage 1: {what} with {how}"
          + (f", {micro} microbatches" if micro > 1 else "")
          + f", {devices} device{'s' if devices != 1 else ''}{mem}")


def models_in_flight(num: int, strategy: str, chunk: int) -> int:
  """How many of the C models' activations one step holds at once."""
  if strategy == "vmap":
    return num if chunk in (0, None) or chunk >= num else int(chunk)
  return 1


def pick_strategy(compile_fn: Callable[[str, int, int], Any], num: int,
                  candidates: list[tuple[str, int, int]], budget_bytes: float,
                  strict: bool = False, program: str = "stage1_expert_step",
                  batch: int = 0, chips: int = 1):
  """The first candidate whose compiled step fits the memory budget.

  The one chooser of the stage-1 strategy: the trainer calls it on its devices, the
  planner (:mod:`reducr_jax.plan`) on an abstract topology, with the same candidates. A
  compile that XLA refuses for lack of device memory (XLA:TPU: ``RESOURCE_EXHAUSTED``)
  is a candidate that does not fit (:func:`reducr_jax.stage1_steps.compile_or_refusal`).

  Args:
    compile_fn: ``(strategy, chunk, microbatches) -> compiled program``
      (``.lower(...).compile()``).
    num: C, the stacked experts.
    candidates: :func:`strategy_candidates`, best first.
    budget_bytes: device bytes the step may use. The target model's own step must fit
      next to it; it is estimated as one model's share of the candidate's arguments
      (the stacked state: ``/ C``) plus of the rest (activations: ``/ models in flight``).
    strict: when nothing fits, raise :class:`reducr_jax.stage1_steps.NothingFits` (one
      line: ``program``, its peak, the limit and what would fit, from the per-device
      ``batch`` over ``chips`` devices) instead of returning the last candidate.

  Returns:
    ``(candidate, compiled, peak_bytes)``; the last candidate when none fits (or the only
    one), ``peak_bytes`` ``None`` where the backend reports no memory analysis.
  """
  def need_of(cand, peak, state):   # + one model's share of the state and the rest
    return peak + state / num + (peak - state) / models_in_flight(num, *cand[:2])

  measured = {}    # (strategy, chunk) -> (microbatches, peak, argument bytes)
  for i, cand in enumerate(candidates):
    # Skip, without compiling, a microbatch count that cannot fit even if everything but
    # the arguments shrank as 1/microbatches (it shrinks less: the state's updates do
    # not): each compile of a full ResNet costs 15-80 s on 2 CPU cores.
    seen = measured.get(cand[:2])
    if seen is not None and i < len(candidates) - 1:
      m0, peak0, state0 = seen
      guess = state0 + (peak0 - state0) * m0 / cand[2]
      if need_of(cand, guess, state0) > budget_bytes:
        logging.info("stage 1: %s needs at least %.2f GB > budget %.2f GB; not compiled",
                     cand, need_of(cand, guess, state0) / device_memory.GIB,
                     budget_bytes / device_memory.GIB)
        continue
    compiled = stage1_steps.compile_or_refusal(lambda cand=cand: compile_fn(*cand))
    peak, state = stage1_steps.peak_bytes(compiled)
    refused = isinstance(compiled, stage1_steps.DoesNotFit)
    need = None
    if peak is not None:
      need = peak if refused else need_of(cand, peak, state)
      if not refused:
        measured[cand[:2]] = (cand[2], peak, state)
    if not refused and (need is None or need <= budget_bytes):
      return cand, compiled, peak
    if i == len(candidates) - 1:
      if strict or refused:
        raise stage1_steps.NothingFits(stage1_steps.nothing_fits_message(
            program, need, state, budget_bytes, batch, chips, "config.experts.batch_size"))
      logging.warning("stage 1: no expert strategy fits %.2f GB (%s needs %.2f GB)",
                      budget_bytes / device_memory.GIB, cand, need / device_memory.GIB)
      return cand, compiled, peak
    logging.info("stage 1: %s needs %.2f GB > budget %.2f GB; trying the next", cand,
                 need / device_memory.GIB, budget_bytes / device_memory.GIB)
  raise ValueError("no strategy candidates")


def fitting_batch(compile_at: Callable[[int], Any], batch: int, multiple_of: int,
                  budget_bytes: float, strict: bool = False,
                  program: str = "loss_table") -> tuple[int, Any]:
  """``(b, compile_at(b))`` for the largest ``b`` of ``batch``, ``batch/2``, …
  (multiples of ``multiple_of``) whose compiled program fits the per-device budget (the
  smallest when none does, or with ``strict`` a one-line
  :class:`reducr_jax.stage1_steps.NothingFits`; ``batch`` where the backend reports no
  memory analysis). A compile refused for lack of memory does not fit.

  For forward-only passes (the loss table): their memory is the models' parameters plus
  the activations of one batch, and a 500-image ResNet-18 forward at 224 px needs ≈ 5 GiB.
  """
  b = batch
  while True:
    compiled = stage1_steps.compile_or_refusal(lambda b=b: compile_at(b))
    peak, state = stage1_steps.peak_bytes(compiled)
    refused = isinstance(compiled, stage1_steps.DoesNotFit)
    smaller = (b // 2) // multiple_of * multiple_of
    fits = not refused and (peak is None or peak <= budget_bytes)
    if fits or smaller < multiple_of:
      if not fits and (strict or refused):
        raise stage1_steps.NothingFits(stage1_steps.nothing_fits_message(
            program, peak, state, budget_bytes, b // multiple_of, multiple_of,
            "config.eval_batch_size"))
      if b != batch:
        logging.info("reference-loss table: batch %d (of %d), compiled peak %.2f GB, "
                     "budget %.2f GB per device", b, batch, (peak or 0) / device_memory.GIB,
                     budget_bytes / device_memory.GIB)
      return b, compiled
    b = smaller


def memory_budget_bytes(config: ml_collections.ConfigDict, device: Any) -> float:
  """``config.experts.max_memory_gb`` in bytes, or (``0``) what ``device`` has: an
  abstract device of a topology (:mod:`reducr_jax.topology`, no memory stats) has its
  chip's program limit (:mod:`reducr_jax.chips`)."""
  gb = float(config.experts.max_memory_gb or 0.0)
  if gb > 0:
    return gb * device_memory.GIB
  if getattr(device, "platform", "cpu") != "cpu":
    try:
      device.memory_stats()
    except Exception:  # pylint: disable=broad-except  (not addressable: abstract device)
      return float(chips.get(device.device_kind).memory_limit_bytes)
  return float(device_memory.device_capacity_bytes(device))


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


def _train(config, splits: data.Splits, kind: str, fns: models.ModelFns, num: int,
           gamma: float):
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
  rng = rng_streams.key(config.seed, "expert_init")
  devices = stage_devices(config, ex.batch_size)
  procs, proc = jax.process_count(), jax.process_index()
  n_local = len(devices)
  n = n_local * procs
  b_local = ex.batch_size // n
  tx, train_step, val_sums = stage1_steps.step_functions(
      config, kind, fns, splits.num_classes, gamma, n,
      # XLA:CPU keeps its fast convolutions inside the in-place loops only when they are
      # canonical (experts.train_step's canonical_convs): decided by the devices compiled for.
      canonical_convs=devices[0].platform == "cpu")
  pmapped = lambda fn, donate=(): stage1_steps.pmapped(  # noqa: E731
      fn, sharding.pmap_devices(devices), donate)

  if kind == "multihead":
    params, model_state = models.load_pretrained(config.model, *jax.jit(fns.init)(rng))
    state = experts.ExpertsState(params, tx.init(params), model_state)
  else:
    state = experts.init_experts(fns.init, tx, rng, num)
    params, model_state = models.load_pretrained_stacked(config.model, state.params,
                                                         state.model_state)
    state = state._replace(params=params, model_state=model_state)
  del params, model_state
  state = sharding.replicate(state, devices, consume=True)   # held once, not twice
  put = functools.partial(jax.device_put, device=sharding.device_sharding(devices))

  def holdout_batch(step):
    """This process's rows of expert batch ``step`` (1-based), split over its devices."""
    idx = sharding.process_rows(
        streams.split_batch_indices(config.dataset, splits.holdout, "holdout",
                                    rng_streams.order_seed(config.seed, "expert_order"),
                                    step - 1, ex.batch_size, splits.num_classes),
        procs, proc)
    return sharding.shard((splits.holdout.x[idx], splits.holdout.y[idx]), n_local)

  def step_arg(step):
    return put(np.full((n_local,), step, np.int32))

  batches = pipeline.batches(config, lambda t: holdout_batch(t + 1), 0, ex.num_steps, put)
  x1, y1 = next(batches)
  compile_step = lambda s, c, m: pmapped(train_step, (0,))(s, c, microbatches=m).lower(  # noqa: E731
      state, x1, y1, step_arg(1)).compile()
  (strategy, chunk, micro), p_step, peak = pick_strategy(
      compile_step, num,
      stage1_candidates(config, kind, num, b_local, jax.default_backend()),
      memory_budget_bytes(config, devices[0]), strict=jax.default_backend() != "cpu",
      batch=b_local, chips=n)
  progress.say(strategy_line(kind, num, (strategy, chunk, micro), ex.strategy, n, peak,
                             memory_budget_bytes(config, devices[0])))
  if procs > 1:   # a multi-process pmap's compiled program takes global arrays: re-jit
    p_step = pmapped(train_step, (0,))(strategy, chunk, microbatches=micro)
  # Validation batches: no larger than the split needs, in the training step's slices.
  eval_local, slices = stage1_steps.validation_batch(config, kind, n, b_local, micro,
                                                     len(select_split))
  eval_global = eval_local * n
  p_val = pmapped(val_sums)(strategy, chunk, slices=slices)

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
    reporter.update(step)
    if step == ex.num_steps:       # the moments are not needed again: free them before
      jax.tree.map(lambda a: a.delete(), state.opt_state)    # the last validation
    if step % ex.eval_every == 0 or step == ex.num_steps:
      current = variables_of(state)
      sums = [jax.tree.map(lambda a: np.asarray(a[0], np.float64),
                           p_val(current, *put(sharding.shard(b, n_local))))
              for b in data.iterate_batches(select_split, eval_global, procs, proc)]
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
  del state                 # free the last step's variables before reading the best back
  params = best.get()
  best.close()
  return params, np.asarray(best_val, np.float32)


def _keep_best(better: np.ndarray, new: np.ndarray, old: np.ndarray, kind: str):
  """``new`` where ``better`` (per expert: ``[num]`` over the leading axis), else ``old``."""
  if kind == "multihead":
    return np.where(better[0], new, old)
  return np.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def get_reference_models(config: ml_collections.ConfigDict, splits: data.Splits,
                         workdir: str, tag: str = "", selector=None) -> ReferenceModels | None:
  """Trains (or loads from the workdir cache) the reference models the method needs.

  ``tag`` tells apart models trained on other data under one config (the two halves of
  :mod:`reducr_jax.double_reference`): it goes into the cache file name. ``selector``:
  the run's rule when already built (``selectors.get(config)`` otherwise).

  Returns:
    :class:`ReferenceModels`, or ``None`` for methods that need none.
  """
  kind = reference_kind(config, selector)
  if kind is None:
    return None
  fns, loss_fn, num, gamma = _build(config, splits, kind)
  path = cache_path(config, workdir, kind + tag)
  fingerprint = _fingerprint(config, kind + tag)
  cached = checkpointing.read_cache(path, fingerprint)
  if cached is not None:
    params = jax.tree.map(jnp.asarray, cached["params"])
    progress.say(f"stage 1: loaded cached {kind} reference models from {path}")
  else:
    logging.info("Training %s reference models (%d, gamma=%s) on %d holdout points", kind,
                 num if kind != "multihead" else splits.num_classes, gamma,
                 len(splits.holdout))
    start = time.time()
    params, best_val = _train(config, splits, kind, fns, num, gamma)
    progress.took(f"stage 1: trained the {kind} reference models", time.time() - start)
    checkpointing.write_cache(path, {"params": jax.tree.map(np.asarray, params),  # collective
                                      "best_val_loss": np.asarray(best_val)}, fingerprint)
  return ReferenceModels(kind, params, loss_fn)


def precompute_table(refs: ReferenceModels, split: data.Split, batch_size: int,
                     config: ml_collections.ConfigDict | None = None) -> np.ndarray:
  """The ``[N, C']`` table of reference losses over a split, computed once in shards.

  Each process scores its contiguous share of the rows (:func:`sharding.process_range`)
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
  fn = jax.jit(functools.partial(refs.loss_fn, params))
  put = functools.partial(jax.device_put, device=sharding.device_sharding(devices))
  lo, hi = sharding.process_range(n, procs, proc)
  # A process with no rows still scores one (dropped) so every share has C columns.
  start = min(lo, n - 1)
  y_dtype = np.asarray(split.y[:1]).dtype
  local_bs, fn = fitting_batch(     # every batch has this size (the last one padded)
      lambda b: fn.lower(*put((np.zeros((b,) + split.x.shape[1:], split.x.dtype),
                               np.zeros((b,), y_dtype)))).compile(),
      min(local_bs, -(-(max(hi, start + 1) - start) // len(devices)) * len(devices)),
      len(devices),
      float(device_memory.device_capacity_bytes(devices[0])) if config is None else
      memory_budget_bytes(config, devices[0]))
  reporter = progress.Reporter("stage 1: reference-loss table", max(hi, start + 1) - start,
                               "rows")
  started = time.time()
  mine = experts.precompute_table(fn, split.x, split.y, local_bs, start, max(hi, start + 1),
                                  put, multiple_of=len(devices),
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
    p_lo, p_hi = sharding.process_range(n, procs, p)
    shares.append(gathered[p, :p_hi - p_lo])
  return np.concatenate(shares)


def update_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The reference models' optimizer for ``experts.update_on_selected``: the *target's*
  optimizer config (official ``IrreducibleLossGenerators.config_optimizers`` instantiates
  ``MultiModels.optimizer_config``): AdamW with ``optimizer.weight_decay`` (and
  ``optimizer.grad_clip_norm``) at the method's learning rate
  (:func:`reducr_jax.optimizers.method_learning_rate`) × ``experts.update_lr_factor``
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
  the data-parallel devices (:func:`reducr_jax.experts.update_on_selected`). Official for
  ``rho_loss`` (the irreducible-loss model) and ``weighted`` (each class expert on all k
  points); the official factory raises ``NotImplementedError`` for the robust and payoff
  rules, for which this is the same update of their class experts (or of the multi-head
  model: each head's mean, averaged over heads) — an extension, not the official code.

  Returns:
    ``(state, update)``: the initial :class:`reducr_jax.experts.ExpertsState` (params are
    the variables ``{"params": ..., **model_state}``), and
    ``update(state, x [k/n, ...], y int[k/n], rng, axis_name) -> state``.
  """
  fns, _, _, _ = _build(config, splits, refs.kind)
  tx = update_optimizer(config)
  variables = jax.tree.map(jnp.asarray, refs.params)
  stacked = refs.kind != "multihead"
  params = variables["params"]
  opt_state = jax.vmap(tx.init)(params) if stacked else tx.init(params)
  state = experts.ExpertsState(variables, opt_state, None)

  def update(state, x, y, rng, axis_name):
    model_state = {k: v for k, v in state.params.items() if k != "params"}
    inner = experts.ExpertsState(state.params["params"], state.opt_state, model_state)
    # γ = 0: the official unweighted mean cross-entropy (every weight 1, so neither the
    # groups nor the normalisation matter).
    inner = experts.update_on_selected(fns.apply, tx, inner, x, y, 0.0,
                                       train_apply_fn=fns.apply_train, rng=rng,
                                       axis_name=axis_name, stacked=stacked,
                                       normalisation="mean")
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
                                                    config.eval_batch_size, config))

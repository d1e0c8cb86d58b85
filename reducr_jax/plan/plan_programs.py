"""The programs a run compiles, built from shapes and compiled for given devices.

For :mod:`reducr_jax.plan`: each builder makes, from the config and
:func:`reducr_jax.plan.plan_inputs.abstract_splits` (no data), the arguments of one of the
trainer's programs as ``ShapeDtypeStruct``s, and compiles that program with the trainer's
own builders — :mod:`reducr_jax.train.stage1_trainer` (stage 1), :func:`reducr_jax.train.trainer.
make_train_step`, :func:`reducr_jax.train.evaluation.make_eval_step` — for ``devices`` (an
abstract TPU topology's, or real ones), choosing strategy and batch with the trainer's own
chooser (:func:`reducr_jax.train.stage1_memory.pick_strategy`, ``fitting_batch``).

``cost_analysis()`` counts the body of a loop (``lax.map``, ``fori_loop``) once: FLOPs and
bytes of the stacked experts' programs are multiplied by the loop's trip count
(:func:`loop_trips`; the few operations outside the loop are then over-counted).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.train import device_memory
from reducr_jax.core import errors
from reducr_jax.train import evaluation
from reducr_jax import models
from reducr_jax.train import optimizers
from reducr_jax.train import references
from reducr_jax import reweighters
from reducr_jax.core import rng_streams
from reducr_jax import selectors
from reducr_jax.train import sharding
from reducr_jax.core import stacked_experts
from reducr_jax.train import stage1_memory
from reducr_jax.train import stage1_trainer
from reducr_jax.train import selection_step
from reducr_jax.train import train_state


@dataclasses.dataclass
class Program:
  """One compiled program of the run and how often the run calls it."""
  name: str
  strategy: str
  calls: int
  memory: dict            # device_memory.compiled_memory (per chip)
  flops: float            # per chip and call, loop bodies multiplied out
  bytes_accessed: float
  compile_seconds: float
  batch_per_chip: int
  examples_per_call: int  # global examples one call consumes (input rate)
  compiled: Any = None    # the compiled program and its arguments' shapes (a benchmark on
  args: tuple = ()        # real devices calls it on zeros: benchmarks/planned_vs_measured)


def abstract(tree):
  """``ShapeDtypeStruct``s of a tree of arrays (or of structs)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def per_device(tree, n: int):
  """A replicated tree as the pmapped programs take it: leading axis ``n``."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct((n,) + tuple(a.shape), a.dtype), tree)


def loop_trips(strategy: str, chunk: int, num: int, microbatches: int = 1) -> int:
  """How many times the stacked experts' loop body runs (``cost_analysis`` counts it once):
  ``map`` C × microbatches, ``vmap`` in chunks C / chunk, else 1."""
  if num <= 1:
    return max(1, microbatches)
  if strategy == "map":
    return num * max(1, microbatches)
  if strategy == "vmap" and chunk and chunk < num:
    return num // chunk
  return 1


def strategy_name(strategy: str, chunk: int, microbatches: int, num: int) -> str:
  out = strategy if not (strategy == "vmap" and chunk and chunk < num) else f"vmap/{chunk}"
  return out + (f" x{microbatches} slices" if microbatches > 1 else "")


def _cost(compiled, trips: int) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return float("nan"), float("nan")
  return (float(cost.get("flops", 0.0)) * trips,
          float(cost.get("bytes accessed", 0.0)) * trips)


def _program(name, strategy, calls, compiled, trips, seconds, batch, examples,
             args=()) -> Program:
  flops, nbytes = _cost(compiled, trips)
  return Program(name, strategy, int(calls), device_memory.compiled_memory(compiled), flops,
                 nbytes, seconds, int(batch), int(examples), compiled, tuple(args))


def evaluations(num_steps: int, every: int) -> int:
  """Evaluations a loop of ``num_steps`` makes: every ``every`` steps and at the end."""
  return num_steps // every + (1 if num_steps % every else 0)


def _resolved_strategy(config, platform: str):
  """``config`` with ``experts.strategy='auto'`` resolved as the run on ``platform``
  resolves it for the loss function (:func:`reducr_jax.train.references.reference_model_fns`)."""
  if config.experts.strategy != "auto":
    return config
  return configuration.with_overrides(
      config, {"experts.strategy": stacked_experts.default_strategy(platform)})


def stage1(config, splits, devices, platform: str) -> list[Program]:
  """``stage1_expert_step``, ``expert_validation`` and ``loss_table`` (what the config runs)."""
  kind = references.reference_kind_for_config(config)
  if kind is None:
    return []
  ex = config.experts
  built = _resolved_strategy(config, platform)
  fns, loss_fn, num, gamma = references.reference_model_fns(built, splits, kind)
  n = len(devices)
  while ex.batch_size % n:          # as stage1_trainer.stage_devices (one process)
    n -= 1
  devs = list(devices[:n])
  b_local = ex.batch_size // n
  tx, train_step, val_sums = stage1_trainer.step_functions(
      config, kind, fns, splits.num_classes, gamma, n,
      canonical_convs=devs[0].platform == "cpu")    # as the run on those devices
  rng = rng_streams.key(config.seed, "expert_init")

  def init():
    if kind == "multihead":
      params, model_state = fns.init(rng)
      return stacked_experts.ExpertsState(params, tx.init(params), model_state)
    return stacked_experts.init_experts(fns.init, tx, rng, num)
  state = per_device(jax.eval_shape(init), n)
  xs = splits.holdout.x.shape[1:]
  x = jax.ShapeDtypeStruct((n, b_local) + xs, splits.holdout.x.dtype)
  y = jax.ShapeDtypeStruct((n, b_local), jnp.int32)
  step = jax.ShapeDtypeStruct((n,), jnp.int32)
  t0 = time.perf_counter()
  compile_step = lambda s, c, m: stage1_trainer.pmapped(train_step, devs, (0,))(  # noqa: E731
      s, c, microbatches=m).lower(state, x, y, step).compile()
  (strategy, chunk, micro), compiled, _ = stage1_memory.pick_strategy(
      compile_step, num, stage1_memory.stage1_candidates(config, kind, num, b_local, platform),
      stage1_memory.memory_budget_bytes(config, devs[0]), strict=True, batch=b_local,
      chips=n)
  name = strategy_name(strategy, chunk, micro, num)
  out = [_program("stage1_expert_step", name, ex.num_steps, compiled,
                  loop_trips(strategy, chunk, num, micro), time.perf_counter() - t0,
                  b_local, ex.batch_size, (state, x, y, step))]

  select = stage1_trainer.selection_split(config, splits)
  eval_local, slices = stage1_trainer.validation_batch(config, kind, n, b_local, micro,
                                                       len(select))
  variables = jax.eval_shape(lambda s: models.variables(s.params, s.model_state or {}),
                             state)
  vx = jax.ShapeDtypeStruct((n, eval_local) + xs, select.x.dtype)
  vy = jax.ShapeDtypeStruct((n, eval_local), jnp.int32)
  mask = jax.ShapeDtypeStruct((n, eval_local), jnp.bool_)
  t0 = time.perf_counter()
  compiled = stage1_trainer.pmapped(val_sums, devs)(strategy, chunk, slices=slices).lower(
      variables, vx, vy, mask).compile()
  calls = evaluations(ex.num_steps, ex.eval_every) * -(-len(select) // (eval_local * n))
  out.append(_program("expert_validation", name, calls, compiled,
                      loop_trips(strategy, chunk, num, slices) if kind != "multihead"
                      else 1, time.perf_counter() - t0, eval_local, eval_local * n,
                      (variables, vx, vy, mask)))

  if kind != "multihead" and ex.losses == "precomputed":
    out.append(_loss_table(config, built, splits, devices, loss_fn, num, variables))
  return out


def _loss_table(config, built, splits, devices, loss_fn, num, variables) -> Program:
  """The ``[N, C]`` table pass (:func:`reducr_jax.train.references.precompute_loss_table`)."""
  n = len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), (sharding.AXIS,))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.AXIS))
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), variables)
  fn = jax.jit(loss_fn, in_shardings=(rep, split_rows, split_rows))
  xs, x_dtype = splits.train.x.shape[1:], splits.train.x.dtype
  total = len(splits.train)
  batch = min(-(-config.eval_batch_size // n) * n, -(-total // n) * n)
  t0 = time.perf_counter()
  args = lambda b: (params, jax.ShapeDtypeStruct((b,) + xs, x_dtype),  # noqa: E731
                    jax.ShapeDtypeStruct((b,), jnp.int32))
  b, compiled = stage1_memory.fitting_batch(
      lambda b: fn.lower(*args(b)).compile(),
      batch, n, stage1_memory.memory_budget_bytes(config, devices[0]), strict=True,
      workspace_bytes=stage1_memory.forward_workspace_bytes(devices[0]))
  strategy = built.experts.strategy
  return _program("loss_table", strategy_name(strategy, built.experts.chunk, 1, num),
                  -(-total // b), compiled, loop_trips(strategy, built.experts.chunk, num),
                  time.perf_counter() - t0, b // n, b, args(b))


def stage2(config, splits, devices, platform: str) -> list[Program]:
  """``train_step`` (the pmapped selection step) and ``eval_step``."""
  n = len(devices)
  c = splits.num_classes
  if config.batch_size % n:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} must be a multiple of "
                             f"the {n} chips of the topology")
  config, _ = configuration.resolve_eta(config, c, lambda *a: None)
  x0 = np.zeros((1,) + splits.train.x.shape[1:], splits.train.x.dtype)
  fns = models.model_fns(models.create_model(config.model, c), x0, axis_name=sharding.AXIS,
                         init_impl=models.init_rng_impl(config.model))
  refs, ref_params, table = _references(config, splits, platform)
  cfg = train_state.StepConfig.from_config(config, c, n, refs.reference,
                                           np.bincount(splits.train.y, minlength=c),
                                           refs.update)
  tx = optimizers.from_config(config)
  state = jax.eval_shape(lambda: train_state.init_state(
      rng_streams.key(config.seed, "target_init"), fns.init, tx, cfg,
      rng_streams.key(config.seed, "selection"), refs.state))
  batch = abstract(sharding.shard(data.train_batch(
      config, splits, table, 0, holdout=cfg.ema_holdout,
      validation=reweighters.VALIDATION_BATCH in cfg.needs), n))
  t0 = time.perf_counter()
  step_args = (per_device(state, n), batch,
               None if ref_params is None else per_device(ref_params, n))
  compiled = stage1_memory.compile_or_refusal(
      lambda: selection_step.make_train_step(fns, refs.loss_fn, tx, cfg, list(devices)).lower(
          *step_args).compile())
  if isinstance(compiled, stage1_memory.DoesNotFit):
    raise stage1_memory.NothingFits(stage1_memory.nothing_fits_message(
        "train_step", compiled.needed, 0.0, compiled.available, config.batch_size // n, n,
        "config.batch_size"))
  online = (refs.reference == "online"
            and references.reference_kind_for_config(config) != "multihead")
  trips = 1
  if online:
    strategy = config.experts.strategy
    strategy = stacked_experts.default_strategy(platform) if strategy == "auto" else strategy
    trips = loop_trips(strategy, config.experts.chunk, c)
  out = [_program("train_step", "online experts" if online else "-", config.num_steps,
                  compiled, trips, time.perf_counter() - t0, config.batch_size // n,
                  config.batch_size, step_args)]

  eval_bs = max(1, config.eval_batch_size // n)
  variables = jax.eval_shape(lambda s: models.variables(s.params, s.model_state), state)
  ex = jax.ShapeDtypeStruct((n, eval_bs) + x0.shape[1:], x0.dtype)
  ey = jax.ShapeDtypeStruct((n, eval_bs), jnp.int32)
  mask = jax.ShapeDtypeStruct((n, eval_bs), jnp.bool_)
  t0 = time.perf_counter()
  eval_args = (per_device(variables, n), ex, ey, mask)
  compiled = evaluation.make_eval_step(fns.apply, c, list(devices)).lower(
      *eval_args).compile()
  out.append(_program("eval_step", "-", _eval_calls(config, splits, cfg, eval_bs * n),
                      compiled, 1, time.perf_counter() - t0, eval_bs, eval_bs * n,
                      eval_args))
  return out


def _eval_calls(config, splits, cfg, global_batch: int) -> int:
  """Eval-step calls of stage 2 and 3: val + test every ``eval_every`` steps and at the
  end, the class-holdout refreshes (``holdout_loss='epoch'``), the final val + test."""
  per = lambda split: -(-len(split) // global_batch)  # noqa: E731
  both = per(splits.val) + per(splits.test)
  calls = evaluations(config.num_steps, config.eval_every) * both + both
  if selectors.CLASS_HOLDOUT_LOSS in cfg.needs and cfg.holdout_loss == "epoch":
    every = (config.selection.holdout_every if config.selection.holdout_every != -1
             else max(1, len(splits.train) // config.batch_size))
    calls += math.ceil(config.num_steps / every) * per(
        data.class_holdout_split(config, splits))
  return calls


def _references(config, splits, platform):
  """``(References, reference params or None, table or None)`` from shapes only."""
  kind = references.reference_kind_for_config(config)
  if kind is None:
    return references.References(), None, None
  built = _resolved_strategy(config, platform)
  fns, loss_fn, num, _ = references.reference_model_fns(built, splits, kind)
  if kind != "multihead" and config.experts.losses != "online":
    cols = num
    table = np.broadcast_to(np.zeros((1, cols), np.float32), (len(splits.train), cols))
    return references.References("table"), None, table
  rng = rng_streams.key(config.seed, "expert_init")
  if kind == "multihead":
    params = jax.eval_shape(lambda: models.variables(*fns.init(rng)))
  else:
    params = jax.eval_shape(lambda: (lambda s: models.variables(s.params, s.model_state or {}))(
        stacked_experts.init_experts(fns.init, optimizers.from_config(config), rng, num)))
  refs = references.ReferenceModels(kind, params, loss_fn)
  if config.experts.update_on_selected:
    held: dict[str, Callable] = {}

    def state_of(p):
      st, held["update"] = references.online_update(config, refs._replace(params=p),
                                                    splits)
      return st
    st = jax.eval_shape(state_of, params)
    return references.References("online", loss_fn=loss_fn, state=st,
                                 update=held["update"]), None, None
  return references.References("online", params=params, loss_fn=loss_fn), params, None


def build_all(config, splits, devices, platform: str) -> list[Program]:
  """Every program of the run, in run order."""
  return stage1(config, splits, devices, platform) + stage2(config, splits, devices,
                                                            platform)


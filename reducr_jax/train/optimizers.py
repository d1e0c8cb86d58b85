"""The target model's optimizer from ``config.optimizer``."""

from __future__ import annotations

import ml_collections
import optax

from reducr_jax.config import config_schema

# ``config.optimizer.schedule``.
SCHEDULES = config_schema.SCHEDULES   # the allowed values live in the schema


def learning_rate_schedule(learning_rate: float, schedule: str = "constant",
                           num_steps: int = 1, warmup_steps: int = 0):
  """The learning rate as a function of the step (0-based) → ``float | optax.Schedule``.

  * ``"constant"``: ``learning_rate`` (the paper; every official REDUCR/RHO-LOSS experiment
    yaml, which set no ``scheduler``);
  * ``"cosine"``: ``lr · ½(1 + cos(π t / T))`` for t < T = ``num_steps``, then 0
    (``optax.cosine_decay_schedule``; the official ``scheduler/cosine_annealing.yaml`` is
    PyTorch's ``CosineAnnealingLR`` with ``T_max: 200`` epochs, used only by
    ``configs/baselines/cifar10_resnet18_*.yaml``);
  * ``"warmup_cosine"``: linear from 0 to ``lr`` over ``warmup_steps``, then cosine to 0 at
    ``num_steps`` (``optax.warmup_cosine_decay_schedule``; not in the official code);
  * ``"linear"``: ``lr · (1 − t / T)`` to 0 at T = ``num_steps`` (official
    ``scheduler/linear.yaml``, ``LinearLR(1.0 → 0.0, total_iters = training steps)``,
    stepped per step; used only by ``experiment/mnli_uniform_full.yaml``).
  """
  if schedule == "constant":
    return learning_rate
  if schedule == "cosine":
    return optax.cosine_decay_schedule(learning_rate, num_steps)
  if schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                              max(num_steps, warmup_steps + 1))
  if schedule == "linear":
    return optax.linear_schedule(learning_rate, 0.0, num_steps)
  raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")


def method_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The target model's peak learning rate for ``config.selection.method``:
  ``config.optimizer.learning_rate_by_method[method]`` when listed, else
  ``config.optimizer.learning_rate``. (Official MNLI: REDUCR 1e-6, the RHO-LOSS / uniform /
  train-loss baselines 2e-5 — ``configs/experiment/mnli_{robust,rho,uniform,train_loss}.yaml``.)"""
  by_method = config.optimizer.learning_rate_by_method or {}
  return float(by_method.get(config.selection.method, config.optimizer.learning_rate))


def from_config(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """:func:`make_optimizer` of the full trainer config: the method's learning rate
  (:func:`method_learning_rate`) and ``config.num_steps`` as the schedule's horizon."""
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt.learning_rate = method_learning_rate(config)
  return make_optimizer(opt, config.num_steps)


def make_optimizer(opt_config: ml_collections.ConfigDict,
                   num_steps: int = 1) -> optax.GradientTransformation:
  """AdamW (paper default) at :func:`learning_rate_schedule`, optionally after global-norm
  gradient clipping. ``num_steps``: the run's gradient steps (``config.num_steps``), the
  horizon of the decaying schedules."""
  lr = learning_rate_schedule(opt_config.learning_rate, opt_config.schedule,
                              num_steps, opt_config.warmup_steps)
  tx = optax.adamw(lr, weight_decay=opt_config.weight_decay)
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx

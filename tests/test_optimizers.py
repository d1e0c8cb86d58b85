"""Learning-rate schedules and the per-method learning rate: values by hand."""

import math
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reducr_jax.config import configuration
from reducr_jax.train import optimizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lr(schedule, step, lr=1e-3, num_steps=100, warmup=10):
  fn = optimizers.learning_rate_schedule(lr, schedule, num_steps, warmup)
  return float(fn(step)) if callable(fn) else fn


@pytest.mark.parametrize("schedule, step, expected", [
    ("constant", 0, 1e-3), ("constant", 99, 1e-3),
    # cosine: 1e-3 · ½(1 + cos(π t / 100))
    ("cosine", 0, 1e-3), ("cosine", 50, 0.5e-3), ("cosine", 25, 1e-3 * (1 + math.sqrt(0.5)) / 2),
    ("cosine", 100, 0.0),
    # warm-up 0 → 1e-3 over 10 steps, then cosine over the remaining 90 to 0
    ("warmup_cosine", 0, 0.0), ("warmup_cosine", 5, 0.5e-3), ("warmup_cosine", 10, 1e-3),
    ("warmup_cosine", 55, 0.5e-3), ("warmup_cosine", 100, 0.0),
    # linear 1e-3 → 0 over 100 steps (official LinearLR(1.0 → 0.0))
    ("linear", 0, 1e-3), ("linear", 25, 0.75e-3), ("linear", 100, 0.0),
])
def test_schedule_values_by_hand(schedule, step, expected):
  assert _lr(schedule, step) == pytest.approx(expected, abs=1e-9)


def test_schedule_drives_adamw_steps():
  """AdamW's first step moves a parameter by ≈ lr_t (normalised gradient): 0 at t=0 under
  warm-up, lr under 'constant'."""
  def first_step(schedule):
    opt = ml_collections.ConfigDict({"learning_rate": 1e-2, "weight_decay": 0.0,
                                     "grad_clip_norm": 0.0, "schedule": schedule,
                                     "warmup_steps": 10})
    tx = optimizers.make_optimizer(opt, 100)
    params = jnp.array([1.0])
    updates, _ = tx.update(jnp.array([3.0]), tx.init(params), params)
    return float(optax.apply_updates(params, updates)[0])
  assert first_step("constant") == pytest.approx(1.0 - 1e-2, abs=1e-6)
  assert first_step("warmup_cosine") == pytest.approx(1.0, abs=1e-9)


def test_learning_rate_by_method():
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config.optimizer.learning_rate_by_method = ml_collections.ConfigDict({"rho_loss": 2e-5})
  assert optimizers.method_learning_rate(config) == 1e-3          # reducr: not listed
  config.selection.method = "rho_loss"
  assert optimizers.method_learning_rate(config) == 2e-5


def test_mnli_learning_rates_are_the_official_ones():
  config = configuration.load_config(os.path.join(REPO, "configs", "mnli.py"))
  rates = {}
  for method in ("reducr", "rho_loss", "uniform", "train_loss"):
    config.selection.method = method
    rates[method] = optimizers.method_learning_rate(config)
  assert rates == {"reducr": 1e-6, "rho_loss": 2e-5, "uniform": 2e-5, "train_loss": 2e-5}
  np.testing.assert_equal(config.optimizer.weight_decay, 0.0)

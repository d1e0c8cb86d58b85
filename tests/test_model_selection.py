"""Which target-model checkpoint is kept (config.model_selection): hand values per rule."""

import os

import jax
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax.train import evaluation
from reducr_jax import selectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three evaluations: (average accuracy, worst-class accuracy).
EVALS = [(0.90, 0.40), (0.85, 0.60), (0.95, 0.50)]


def _replicated(step):
  return jax.device_put(np.full((1, 2), float(step), np.float32))   # [1 device, 2]


def _run(rule):
  best = {"params": np.zeros(2, np.float32), "worst_val": np.float32(-1.0),
          "step": np.int32(0)}
  for step, (acc, worst) in zip((10, 20, 30), EVALS):
    best = evaluation.keep_best(best, {"accuracy": acc, "worst_class_accuracy": worst},
                                _replicated(step), step, rule)
  return best


@pytest.mark.parametrize("rule, step, score", [
    ("worst_class", 20, 0.60),        # worst-class: 0.4 < 0.6 > 0.5
    ("average", 30, 0.95),            # average: 0.90 > 0.85 < 0.95
    ("final", 30, 0.95),              # the last one, whatever its scores
])
def test_keep_best_by_hand(rule, step, score):
  best = _run(rule)
  assert int(best["step"]) == step
  assert float(best["worst_val"]) == pytest.approx(score)
  np.testing.assert_array_equal(best["params"], [step, step])


def test_ties_keep_the_earliest():
  best = {"params": np.zeros(2), "worst_val": np.float32(0.5), "step": np.int32(10)}
  out = evaluation.keep_best(best, {"accuracy": 0.5, "worst_class_accuracy": 0.5},
                             _replicated(20), 20, "average")
  assert out is best
  with pytest.raises(ValueError, match="rule must be one of"):
    evaluation.keep_best(best, {"accuracy": 0.5, "worst_class_accuracy": 0.5},
                         _replicated(20), 20, "auto")


@pytest.mark.parametrize("method, expected", [
    ("reducr", "worst_class"), ("uniform", "worst_class"), ("rho_loss", "average"),
    ("train_loss", "average"), ("payoff", "worst_class")])
def test_auto_follows_the_official_yamls(method, expected):
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config.selection.method = method
  config.model_selection = "auto"
  assert selectors.model_selection(config) == expected
  config.model_selection = "final"
  assert selectors.model_selection(config) == "final"


def test_trainer_keeps_the_average_rule_s_checkpoint(tmp_path):
  """End to end (uniform: no reference models): the kept step is the first maximum of the
  logged average validation accuracy, and the final evaluation reproduces it. (The
  worst-class rule runs end to end in test_train's registry tests.)"""
  rule, key = "average", "val/accuracy"
  import json  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import trainer as train  # pylint: disable=g-import-not-at-top
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config = configuration.with_overrides(config, {
      "selection.method": "uniform", "model_selection": rule, "model.hidden": (16,),
      "batch_size": 80, "num_steps": 8, "eval_every": 2, "log_every": 8,
      "checkpoint_every": 8, "eval_batch_size": 128, "num_devices": 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [(r["step"], r[key]) for r in log if key in r]
  assert [s for s, _ in evals] == [2, 4, 6, 8]
  best = max(v for _, v in evals)
  assert results["best_step"] == next(s for s, v in evals if v == best)
  assert results["model_selection"] == rule
  assert results["val"]["accuracy"] == pytest.approx(best, abs=1e-7)

"""Share of corrupted labels among the selected points: logged by the trainer, drawn by
the experiments' figure (issue #17)."""

import json
import os

import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.core import rng_streams
from reducr_jax.train import trainer as train
from reducr_jax.experiments import figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  return configuration.with_overrides(config, {
      "dataset.label_noise": 0.5, "dataset.imbalance_class": -1, "model.hidden": (16,),
      "batch_size": 40, "num_steps": 8, "log_every": 1, "eval_every": 8,
      "checkpoint_every": 8, "eval_batch_size": 256, "num_devices": 1,
      "selection.method": "uniform", **overrides})


def _logged(workdir):
  log = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/selected_corrupted_share"] for r in log
          if "train/selected_corrupted_share" in r}


def test_share_is_logged_every_step_and_matches_a_hand_count(tmp_path):
  # Uniform selection of every point (k = B): the share is exactly the corrupted share of
  # the large batch, which the data stream gives (labels != clean labels).
  config = _config(**{"selection.percent_selected": 1.0})
  train.train_and_evaluate(config, str(tmp_path / "all"))
  splits = data.make_splits(config.dataset, config.seed)
  expected = [float(np.mean(splits.train.y[i] != splits.train.y_clean[i]))
              for i in (data.batch_indices(rng_streams.order_seed(0, "train_order"), t,
                                           len(splits.train), 40) for t in range(8))]
  shares = _logged(tmp_path / "all")
  assert sorted(shares) == list(range(1, 9))
  np.testing.assert_allclose([shares[t] for t in range(1, 9)], expected, rtol=1e-6)
  # Half of the labels flipped (to a different class): ≈ 0.5 over 8 · 40 = 320 points
  # (binomial std ≈ 0.028).
  assert abs(np.mean(expected) - 0.5) < 0.1
  path = figures.selected_corrupted({"uniform": [
      {"step": t, "train/selected_corrupted_share": s} for t, s in shares.items()],
      "none": [{"step": 1}]}, str(tmp_path / "selected_corrupted.png"), "t")
  drawn = json.loads((tmp_path / "selected_corrupted.json").read_text())
  assert os.path.getsize(path) > 5_000 and set(drawn) == {"uniform"}
  np.testing.assert_allclose(drawn["uniform"]["running_mean"][-1], np.mean(expected))


def test_no_share_without_label_noise():
  config = _config(**{"dataset.label_noise": 0.0})
  splits = data.make_splits(config.dataset, config.seed)
  assert "corrupted" not in data.train_batch(config, splits, None, 0)
  assert "corrupted" in data.train_batch(_config(), data.make_splits(
      _config().dataset, 0), None, 0)
  assert figures.selected_corrupted({"uniform": [{"step": 1}]}, "/nonexistent.png", "t") is None

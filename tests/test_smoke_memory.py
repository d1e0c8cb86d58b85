"""What keeps the issue-23 CPU smoke run under 4 GB resident: stage 1's best variables
kept in files (spilled_best: exact round trips, per-expert merge) and a Clothing1M run
that never imports TensorFlow (≈ 0.58 GiB)."""

import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

import fakes
from reducr_jax.config import configuration
from reducr_jax.train import references
from reducr_jax.train import spilled_best
from reducr_jax.train import stage1_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_update_merges_leaf_by_leaf_and_round_trips_every_dtype(tmp_path):
  first = {"w": np.arange(6, dtype=np.float32).reshape(3, 2),
           "h": np.array([1.5, -2.25, 3.0], ml_dtypes.bfloat16),
           "e": np.zeros((3, 0), np.int32)}
  second = {"w": -np.ones((3, 2), np.float32),
            "h": np.array([7.0, 8.0, 9.0], ml_dtypes.bfloat16),
            "e": np.zeros((3, 0), np.int32)}
  best = spilled_best.SpilledBest(str(tmp_path))
  assert best.empty
  best.update(first)
  (folder,) = os.listdir(tmp_path)
  assert len(os.listdir(tmp_path / folder)) == 3          # one file per leaf
  keep = np.array([True, False, True])                    # rows 0 and 2 from the new tree
  best.update(second, lambda new, old: np.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)),
                                                new, old))
  got = best.get()
  np.testing.assert_array_equal(got["w"], [[-1, -1], [2, 3], [-1, -1]])
  assert got["h"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got["h"].astype(np.float32), [7.0, -2.25, 9.0])
  assert got["e"].shape == (3, 0) and got["e"].dtype == np.int32
  with pytest.raises(ValueError, match="stored structure"):
    best.update({"w": first["w"]}, lambda new, old: new)
  with pytest.raises(ValueError, match="choose must be given"):
    best.update(second)
  best.close()
  assert os.listdir(tmp_path) == []


def test_stage1_returns_each_experts_variables_from_its_best_validation(monkeypatch):
  """Scripted validation losses per expert over 3 validations: expert 0 is best at the 2nd,
  expert 1 at the 3rd, expert 2 at the 1st (a tie keeps the earlier); the returned
  stacked variables are, expert by expert, those of that validation."""
  script = [np.array([1.0, 1.0, 1.0]), np.array([0.5, 2.0, 1.0]), np.array([0.7, 0.4, 1.0])]
  seen = []

  def scripted(loss_sums, weight_sums, count, normalisation):
    return script[len(seen)]                              # before this validation's update
  monkeypatch.setattr(stage1_trainer, "checkpoint_criterion", scripted)
  original = spilled_best.SpilledBest.update

  def recording(self, tree, choose=None):
    seen.append(jax.tree.map(np.array, tree))             # copies of each validation's
    return original(self, tree, choose)
  monkeypatch.setattr(spilled_best.SpilledBest, "update", recording)
  config = configuration.load_config(os.path.join(REPO, "configs", "default.py"))
  config = configuration.with_overrides(config, {
      "model.hidden": (4,), "experts.num_steps": 3, "experts.eval_every": 1,
      "experts.batch_size": 8, "eval_batch_size": 8, "num_devices": 1,
      "experts.strategy": "vmap"})
  splits = fakes.flat_splits()
  fns, _, num, gamma = references.reference_model_fns(config, splits, "experts")
  params, best_val = stage1_trainer.train_reference_models(config, splits, "experts", fns, num,
                                                          gamma)
  np.testing.assert_allclose(best_val, [0.5, 0.4, 1.0])
  assert len(seen) == 3
  for expert, validation in enumerate([1, 2, 0]):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(seen[validation])):
      np.testing.assert_array_equal(got[expert], want[expert])
  # The validations' variables differ (training moved them), so the choice is visible.
  assert any(not np.array_equal(a[0], b[0]) for a, b in
             zip(jax.tree.leaves(seen[0]), jax.tree.leaves(seen[1])))


def test_clothing1m_prepares_and_loads_without_importing_tensorflow(tmp_path):
  """A fresh process prepares a fake Clothing1M release and decodes images from it; only
  ``tf.data`` readers import TensorFlow, and these do not use it."""
  script = (
      "import sys, fakes, ml_collections\n"
      "from reducr_jax.data import clothing1m\n"
      f"tmp = {str(tmp_path)!r}\n"
      "manual = fakes.write_clothing1m(__import__('pathlib').Path(tmp), {'clean_train': 4, "
      "'clean_val': 4, 'clean_test': 4, 'noisy_train': 4})[0]\n"
      "cfg = ml_collections.ConfigDict({'data_dir': tmp + '/tfds', 'manual_dir': str(manual),"
      " 'max_examples': -1, 'download': False, 'skip_bad_images': False})\n"
      "x, y = clothing1m.load(cfg)['clean_val']\n"
      "print(x[:2].shape, len(y), 'tensorflow' in sys.modules)\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert out.strip().splitlines()[-1] == "(2, 224, 224, 3) 4 False"

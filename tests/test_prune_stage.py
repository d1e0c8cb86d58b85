"""Pruning stage of the trainer: strategy dispatch and DRoP recall smoothing."""

import os

import numpy as np
import pytest

from reducr_jax import configuration
from reducr_jax import data
from reducr_jax import prune_stage


def _setup(strategy, density=0.5, prior=0.0):
  config = configuration.load_config(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "default.py"))
  config.pruning.strategy, config.pruning.density = strategy, density
  config.pruning.recall_prior = prior
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), [40, 40, 20]).astype(np.int32)
  split = data.Split(x=rng.normal(size=(100, 2)).astype(np.float32), y=y, y_clean=y,
                     index=np.arange(100))
  splits = data.Splits(train=split, holdout=split, val=split, test=split, num_classes=3,
                       class_names=["a", "b", "c"])
  scores = prune_stage.Scores(el2n=np.arange(100.0), grand=-np.arange(100.0),
                              forgetting=np.zeros(100), dyn_unc=np.zeros(100),
                              val_correct=np.array([10.0, 5.0, 2.0]),
                              val_counts=np.array([10.0, 10.0, 10.0]))
  return config, splits, scores


def test_query_recalls_prior():
  _, _, scores = _setup("drop")
  np.testing.assert_allclose(prune_stage.query_recalls(scores, 0.0), [1.0, 0.5, 0.2])
  np.testing.assert_allclose(prune_stage.query_recalls(scores, 1.0), [11 / 12, 6 / 12, 3 / 12])


def test_score_strategies_keep_the_hardest():
  config, splits, scores = _setup("el2n")
  np.testing.assert_array_equal(prune_stage.kept_indices(config, splits, scores),
                                np.arange(50, 100))
  config.pruning.strategy = "grand"
  np.testing.assert_array_equal(prune_stage.kept_indices(config, splits, scores), np.arange(50))


@pytest.mark.parametrize("prior, class0_kept", [(0.0, 0), (1.0, None)])
def test_drop_quotas_and_recall_one(prior, class0_kept):
  config, splits, scores = _setup("drop", prior=prior)
  keep = prune_stage.kept_indices(config, splits, scores)
  assert len(keep) == 50 and len(set(keep.tolist())) == 50
  per_class = np.bincount(splits.train.y[keep], minlength=3)
  if class0_kept is not None:
    assert per_class[0] == class0_kept        # raw recall 1 -> DRoP quota 0
  else:
    assert per_class[0] > 0
  assert per_class[2] == 20                   # the worst class is kept whole
  assert per_class[1] > per_class[0]


def test_random_and_none(tmp_path):
  config, splits, _ = _setup("random")
  pruned, info = prune_stage.prune_train_split(config, splits, str(tmp_path))
  assert info["kept"] == 50 and len(pruned.train) == 50
  np.testing.assert_array_equal(pruned.train.index, np.sort(pruned.train.index))
  config.pruning.strategy = "none"
  same, info = prune_stage.prune_train_split(config, splits, str(tmp_path))
  assert same is splits and info == {"strategy": "none"}

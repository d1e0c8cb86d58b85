"""Pruning stage of the trainer: strategy dispatch and DRoP recall smoothing."""

import os

import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.train import prune_stage


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


def _model_splits(kind):
  """A tiny ResNet (batch norm) on 8×8 uint8 images, or a tiny BERT on token ids."""
  rng = np.random.default_rng(0)
  n, c = 48, 3
  y = np.tile(np.arange(c), n // c).astype(np.int32)
  if kind == "resnet18":
    x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    x[:, :, :, 0] = (y * 80)[:, None, None].astype(np.uint8)    # a learnable signal
    model = {"name": "resnet18", "stem": "cifar", "width": 4, "stage_sizes": (1,),
             "mean": (), "std": (), "dtype": "float32", "pretrained": "",
             "pretrained_head": False}
  else:
    x = rng.integers(5, 50, (n, 2, 8), dtype=np.int32)
    x[:, 0, 1] = y + 1                                           # class token
    x[:, 1] = 0                                                  # token types
    model = {"name": "bert", "vocab_size": 64, "hidden_size": 16, "num_layers": 1,
             "num_heads": 2, "intermediate_size": 32, "max_position": 16,
             "type_vocab_size": 2, "dropout_rate": 0.1, "dtype": "float32",
             "pretrained": "", "pretrained_head": False}
  split = data.Split(x=x, y=y, y_clean=y, index=np.arange(n))
  splits = data.Splits(train=split, holdout=split, val=split, test=split, num_classes=c,
                       class_names=["a", "b", "c"])
  return model, splits


@pytest.mark.parametrize("kind", ["resnet18", pytest.param("bert", marks=pytest.mark.slow)])
def test_score_pruning_runs_for_batch_norm_resnet_and_bert(kind):
  """EL2N, GraNd, forgetting and dynamic uncertainty from ResNet (batch norm state) and
  BERT (dropout) scoring runs: the same model interface as the trainer."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config, _, _ = _setup("el2n")
  model, splits = _model_splits(kind)
  config.model = ml_collections.ConfigDict(model)
  config.pruning.update(num_inits=2, score_epochs=2, early_epoch=1, dyn_unc_window=2,
                        batch_size=16)
  config.eval_batch_size = 32
  configuration.validate_config(config, 1)         # score pruning is no longer MLP-only
  scores = prune_stage.compute_scores(config, splits)
  n = len(splits.train)
  for name in ("el2n", "grand", "forgetting", "dyn_unc"):
    values = np.asarray(getattr(scores, name))
    assert values.shape == (n,) and np.all(np.isfinite(values)), name
  assert np.ptp(scores.el2n) > 0 and np.ptp(scores.grand) > 0
  assert np.all(scores.el2n >= 0) and np.all(scores.el2n <= np.sqrt(2.0) + 1e-6)
  assert scores.val_counts.sum() == 2 * n             # both query models saw every val point
  keep = prune_stage.kept_indices(config, splits, scores)
  assert len(keep) == n // 2
  np.testing.assert_array_equal(np.sort(keep), np.sort(np.argsort(-scores.el2n)[:n // 2]))

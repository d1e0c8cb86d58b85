"""Settings that follow the official REDUCR code: k rounding, the class-holdout split and
the values the paper configs carry (configs/*.py against the official yamls)."""

import os

import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="default", **overrides):
  config = configuration.load_config(os.path.join(REPO, "configs", f"{name}.py"))
  return configuration.with_overrides(config, overrides)


@pytest.mark.parametrize("batch, rounding, k", [
    (320, "round", 32), (320, "floor", 32),
    (32, "round", 3), (32, "floor", 3),       # official NLP: int(3.2) = 3
    (35, "round", 4), (35, "floor", 3),       # 3.5: round up vs int() truncation
    (39, "round", 4), (39, "floor", 3)])      # 3.9
def test_k_rounding_by_hand(batch, rounding, k):
  config = _config(batch_size=batch, **{"selection.k_rounding": rounding})
  assert configuration.num_selected(config) == k


def test_floor_to_zero_is_refused_not_raised_to_one():
  """int(0.5) = 0: the official max(1, ·) would silently select 1 point; the config is
  refused with one line about k instead (test_bad_inputs.test_k_of_zero_is_one_line_about_k)."""
  config = _config(batch_size=5, **{"selection.k_rounding": "floor",
                                    "selection.percent_selected": 0.1})
  assert configuration.num_selected(config) == 0
  with pytest.raises(configuration.ConfigError, match="must give k >= 1"):
    configuration.validate_config(config, 1)


def _splits():
  def split(m, offset):
    y = np.arange(m, dtype=np.int32) % 2
    return data.Split(np.arange(offset, offset + m, dtype=np.float32)[:, None], y, y,
                      np.arange(m))
  return data.Splits(split(6, 0), split(4, 100), split(3, 200), split(2, 300), 2, ["a", "b"])


def test_class_holdout_split_follows_holdout_source():
  splits = _splits()
  assert data.class_holdout_split(_config(), splits) is splits.holdout
  assert data.class_holdout_split(_config(**{"selection.holdout_source": "val"}),
                                  splits) is splits.val
  # The EMA estimator's per-step batch reads the same split (val rows are 200, 201, 202).
  config = _config(batch_size=3, **{"selection.holdout_source": "val"})
  batch = data.train_batch(config, splits, None, 0, holdout=True)
  assert set(batch["holdout_x"][:, 0].tolist()) <= {200.0, 201.0, 202.0}


def test_default_keeps_the_current_behaviour():
  c = _config()
  assert (c.experts.select_on, c.experts.loss_normalisation, c.model_selection,
          c.optimizer.schedule, c.optimizer.warmup_steps, c.selection.k_rounding,
          c.selection.holdout_source, dict(c.optimizer.learning_rate_by_method)) == (
              "val", "mean", "worst_class", "constant", 0, "round", "holdout", {})


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "cinic10", "clothing1m", "mnli",
                                  "qqp"])
def test_paper_configs_carry_the_official_training_settings(name):
  c = _config(name)
  assert c.experts.select_on == "train_pool"
  assert c.experts.loss_normalisation == "weight_sum"
  assert c.selection.k_rounding == "floor"
  assert c.optimizer.schedule == "constant"
  nlp = name in ("mnli", "qqp")
  assert c.model_selection == ("worst_class" if nlp else "auto")
  if nlp:
    assert (c.batch_size, configuration.num_selected(c), c.experts.gamma) == (32, 3, 9.0)
  if name == "clothing1m":
    assert (c.selection.eta, c.selection.holdout_source) == (1.0, "val")


def _without_added_fields(config):
  """The config as recorded before the fields of configuration.ADDED_FIELDS existed."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = config.to_dict()
  for name in configuration.ADDED_FIELDS:
    *path, last = name.split(".")
    node = d
    for part in path:
      node = node[part]
    node.pop(last, None)        # absent where the field is dataset-specific (cinic10_relevance)
  return ml_collections.ConfigDict(d)


def test_older_workdirs_and_expert_caches_stay_usable(tmp_path):
  from reducr_jax.train import reference_cache  # pylint: disable=g-import-not-at-top
  from reducr_jax.config import workdir  # pylint: disable=g-import-not-at-top
  old, new = _without_added_fields(_config()), _config()
  assert reference_cache.fingerprint(old, "experts") == reference_cache.fingerprint(
      new, "experts")
  workdir.check_config(tmp_path, old)
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  workdir.check_config(tmp_path, new)                    # same run: resumes
  workdir.check_config(tmp_path, old)                    # (re-record the old layout)
  with pytest.raises(configuration.ConfigError, match=r"experts.select_on \('val' -> "
                     r"'train_pool'\)"):
    workdir.check_config(tmp_path, _config(**{"experts.select_on": "train_pool"}))
  assert reference_cache.fingerprint(_config(**{"experts.select_on": "train_pool"}),
                                    "experts") != reference_cache.fingerprint(new, "experts")

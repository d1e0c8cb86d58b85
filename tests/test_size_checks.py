"""size_checks: a batch larger than the split it samples is one line with the largest
value that works (no data read, no model built)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax.config import size_checks
from reducr_jax.data import split_types


def _splits(train, holdout, val):
  def split(n):
    return split_types.Split(x=np.zeros((n, 2), np.float32), y=np.zeros(n, np.int32),
                             y_clean=np.zeros(n, np.int32), index=np.arange(n))
  return split_types.Splits(train=split(train), holdout=split(holdout), val=split(val),
                            test=split(3), num_classes=2, class_names=["a", "b"])


def _config(**overrides):
  config = configuration.load_config(os.path.join("configs", "default.py"))
  return configuration.with_overrides(config, overrides)


def test_batch_larger_than_a_split():
  splits = _splits(train=101, holdout=20, val=9)
  config = _config(**{"batch_size": 320, "selection.percent_selected": 0.1})
  with pytest.raises(configuration.ConfigError) as e:
    size_checks.check_batch_sizes(config, splits, num_devices=8)
  # The largest B <= 101 with B and k = round(0.1 B) divisible by 8: not 96 (k=10), 80 (k=8).
  assert str(e.value) == ("config.batch_size=320 exceeds the 101 examples of the train "
                          "split; the largest value that works is 80 on 8 devices")
  config = _config(**{"batch_size": 100, "selection.percent_selected": 0.1,
                      "selection.method": "reducr", "selection.use_expert": False,
                      "experts.batch_size": 21})
  size_checks.check_batch_sizes(config, splits, num_devices=1)  # B fits, no experts
  config.selection.use_expert = True
  with pytest.raises(configuration.ConfigError, match=r"experts.batch_size=21 exceeds the 20 "
                     r"examples of the holdout split; the largest value that works is 20$"):
    size_checks.check_batch_sizes(config, splits, num_devices=1)
  config.selection.method = "uniform"                                 # no experts trained
  size_checks.check_batch_sizes(config, splits, num_devices=1)
  # Meta-reweighting's clean validation batch is drawn from the holdout split.
  config = _config(**{"batch_size": 100, "reweight": "meta", "meta.val_batch_size": 22,
                      "selection.method": "uniform"})
  with pytest.raises(configuration.ConfigError,
                     match="val_batch_size=22 exceeds the 20 examples of the holdout split; "
                           "the largest value that works is 20 on 2 devices"):
    size_checks.check_batch_sizes(config, splits, num_devices=2)

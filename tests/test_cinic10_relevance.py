"""``dataset.cinic10_relevance``: the official ``CINIC10RelevanceDataModule`` keeps
classes 0–4 (``targets < 4.5``) in valid (= holdout = val) and test; train keeps all ten."""

import numpy as np
import pytest

from reducr_jax import data
from reducr_jax.data import real_specs

import fakes


def test_relevance_keeps_classes_0_to_4_in_holdout_val_and_test(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  manual, pixels = fakes.write_cinic10(tmp_path)
  cfg = real_specs.config_for("cinic10", data_dir=str(tmp_path / "data"),
                            manual_dir=str(manual), cinic10_relevance=True)
  s = data.make_splits(cfg, seed=0)
  # 3 images per class and split: train 30 rows (all classes), valid/test 5 × 3 = 15.
  np.testing.assert_array_equal(s.train.y, np.repeat(np.arange(10), 3))
  assert s.val is s.holdout
  for name, split in (("valid", s.holdout), ("test", s.test)):
    np.testing.assert_array_equal(split.y, np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(split.index, np.arange(15))       # rows of the full split
    want = np.stack([pixels[name, c, j] for c in range(5) for j in range(3)])
    np.testing.assert_array_equal(split.x, want)


@pytest.mark.parametrize("name, value", [("cinic10", "yes"), ("cifar10", True)])
def test_relevance_field_is_one_line(name, value):
  with pytest.raises(ValueError) as e:
    data.validate_dataset_config(real_specs.config_for(name, cinic10_relevance=value))
  assert str(e.value) == (f"config.dataset.cinic10_relevance must be True or False (True "
                          f"only for 'cinic10'), got {value!r} for {name!r}")

"""Structured label noise (``dataset.label_noise_mode='structured'``): the official
``_corrupt_dataset(structured_noise=True)`` flip map 3 → 5, 9 → 7, 4 → 9."""

from __future__ import annotations

import numpy as np
import pytest

from reducr_jax import data
from reducr_jax.data import corruption


def _official_structured(targets: np.ndarray, pc_corrupted: float) -> np.ndarray:
  """A NumPy port of the official torch code (``src/datamodules/datamodules.py``)."""
  targets = targets.copy()
  for source, target in ((3, 5), (9, 7), (4, 9)):
    selected = np.nonzero(source == targets)[0]
    selected = selected[: int(len(selected) * pc_corrupted)]
    targets[selected] = target
  return targets


def test_structured_noise_by_hand():
  y = np.array([3, 3, 3, 3, 9, 9, 4, 4, 4, 4, 1, 5], np.int64)
  noisy, flipped = corruption.structured_label_noise(y, 0.5, 10)
  # 3s: int(4·0.5) = 2 first rows → 5; 9s: int(2·0.5) = 1 → 7; 4s: 2 first → 9 (after the
  # 9 → 7 step, so these new 9s stay 9). Classes 1 and 5 untouched.
  np.testing.assert_array_equal(noisy, [5, 5, 3, 3, 7, 9, 9, 9, 4, 4, 1, 5])
  np.testing.assert_array_equal(flipped, noisy != y)
  assert noisy.dtype == y.dtype
  # rate 0 changes nothing; int() truncates: 3 rows of class 3 at 0.5 → 1 flip.
  np.testing.assert_array_equal(corruption.structured_label_noise(y, 0.0, 10)[0], y)
  assert corruption.structured_label_noise(np.array([3, 3, 3]), 0.5, 10)[0].tolist() == [5, 3, 3]


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_structured_noise_matches_a_port_of_the_official_code(rate):
  y = np.random.default_rng(0).integers(0, 10, 5000)
  noisy, _ = corruption.structured_label_noise(y, rate, 10)
  np.testing.assert_array_equal(noisy, _official_structured(y, rate))
  same = np.isin(y, (3, 4, 9), invert=True)
  np.testing.assert_array_equal(noisy[same], y[same])


def test_structured_mode_in_make_splits_keeps_clean_labels():
  cfg = data.dataset_config(name="digits", fractions=(0.5, 0.2, 0.1, 0.2), label_noise=0.4,
                            label_noise_mode="structured", imbalance_class=-1)
  s = data.make_splits(cfg, seed=0)
  y, clean = s.train.y, s.train.y_clean
  np.testing.assert_array_equal(y, _official_structured(clean, 0.4))
  assert set(np.unique(clean[y != clean])) == {3, 4, 9}
  for split in (s.holdout, s.val, s.test):           # train only
    np.testing.assert_array_equal(split.y, split.y_clean)


def test_structured_mode_needs_ten_classes_one_line():
  with pytest.raises(ValueError) as e:
    data.validate_dataset_config(data.dataset_config(name="digits", classes=(4, 9),
                                                     label_noise_mode="structured"))
  assert str(e.value) == ("config.dataset.label_noise_mode='structured' flips classes 3, 4, "
                          "9 into 5, 9, 7 and needs >= 10 classes, got 2")
  with pytest.raises(ValueError, match=r"^config.dataset.label_noise_mode must be one of "
                                       r"\['different', 'any', 'structured'\], got 'flip'$"):
    data.validate_dataset_config(data.dataset_config(name="digits", label_noise_mode="flip"))

"""Tests for the offline dataset pipeline in ``reducr_jax.data``."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from reducr_jax import data
from reducr_jax.data import embedded


def _config(**overrides) -> ml_collections.ConfigDict:
  return data.dataset_config(**{"name": "digits", "fractions": (0.5, 0.2, 0.1, 0.2),
                                **overrides})


# ---------------------------------------------------------------------------- embedded


@pytest.mark.parametrize("name,n,d", [("mnist1d", 5000, 40), ("digits", 1797, 64)])
def test_load_arrays(name, n, d):
  x, y = data.load_arrays(name, seed=0)
  assert x.shape == (n, d) and x.dtype == np.float32
  assert y.shape == (n,) and y.dtype == np.int32
  assert np.array_equal(np.unique(y), np.arange(10))
  assert data.NUM_CLASSES[name] == 10 and data.CLASS_NAMES[name] == [str(c) for c in range(10)]
  x2, _ = data.load_arrays(name, seed=1)  # The source is fixed.
  np.testing.assert_array_equal(x, x2)
  if name == "digits":
    assert x.min() == 0.0 and x.max() == 1.0
  else:
    assert np.array_equal(np.bincount(y), np.full(10, 500))


def test_mnist1d_num_samples_sets_the_generated_size():
  x, y = data.load_arrays("mnist1d", 0, num_samples=1000)
  assert x.shape == (1000, 40) and np.array_equal(np.bincount(y), np.full(10, 100))
  # Stratified 20 % test split: 0.2 · 100 = 20 per class (10 000 → 200, the robustness sweep).
  splits = data.make_splits(_config(name="mnist1d", num_samples=1000), 0)
  assert np.array_equal(np.bincount(splits.test.y), np.full(10, 20))


@pytest.mark.parametrize("name, value, message", [
    ("digits", 3000, "config.dataset.num_samples applies to mnist1d only"),
    ("mnist1d", 50, "config.dataset.num_samples must be -1 (5000) or an int >= 100"),
    ("mnist1d", 2.5e3, "config.dataset.num_samples must be -1 (5000) or an int >= 100"),
])
def test_bad_num_samples_is_one_line(name, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    data.validate_dataset_config(_config(name=name, num_samples=value))


def test_load_arrays_returns_copies_and_keeps_global_rng():
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  embedded._cached_arrays.cache_clear()
  x, _ = data.load_arrays("mnist1d", 0)  # make_dataset reseeds np.random internally.
  assert np.random.rand() == expected
  x[:] = 0.0
  assert data.load_arrays("mnist1d", 0)[0].any()


def test_unknown_name():
  with pytest.raises(ValueError) as e:
    data.load_arrays("x", 0)
  assert str(e.value) == "config.dataset.name must be one of ['digits', 'mnist1d'], got 'x'"


# -------------------------------------------------------------------------- corruption


def test_imbalance_keeps_computed_count():
  y = np.array([0] * 100 + [1] * 50 + [2] * 50)
  x = np.arange(y.size)[:, None].astype(np.float32)
  xo, yo = data.imbalance_class(x, y, 0, 0.1, np.random.default_rng(0))
  # N_rest = 100, round(100 * 0.1 / 0.9) = round(11.1) = 11.
  assert (yo == 0).sum() == 11 and (yo != 0).sum() == 100
  assert abs((yo == 0).mean() - 11 / 111) < 1e-12
  assert np.all(np.diff(xo[:, 0]) > 0)  # Original relative order.
  np.testing.assert_array_equal(y[xo[:, 0].astype(int)], yo)
  # Imbalancing class 1 to 1/3 of 100 (class 0) + 50 (class 2): round(75) = 75 > 50: all kept.
  _, yo = data.imbalance_class(x, y, 1, 1 / 3, np.random.default_rng(0))
  assert (yo == 1).sum() == 50
  _, yo = data.imbalance_class(x, y, 0, 1e-6, np.random.default_rng(0))
  assert (yo == 0).sum() == 1  # At least one kept.
  xo, yo = data.imbalance_class(x, y, -1, 0.1, np.random.default_rng(0))
  np.testing.assert_array_equal(yo, y)
  # Which examples are kept depends on the generator.
  a = data.imbalance_mask(y, 0, 0.1, np.random.default_rng(0))
  b = data.imbalance_mask(y, 0, 0.1, np.random.default_rng(1))
  assert a.sum() == b.sum() and not np.array_equal(a, b)


@pytest.mark.parametrize("kwargs,field", [
    (dict(cls=0, fraction=0.0), "config.dataset.imbalance_fraction"),
    (dict(cls=0, fraction=1.5), "config.dataset.imbalance_fraction"),
    (dict(cls=3, fraction=0.1), "config.dataset.imbalance_class"),
    (dict(cls=-2, fraction=0.1), "config.dataset.imbalance_class"),
])
def test_imbalance_bad_args(kwargs, field):
  y = np.array([0, 1, 2, 0])
  with pytest.raises(ValueError, match=field):
    data.imbalance_class(y[:, None], y, rng=np.random.default_rng(0), **kwargs)


def test_symmetric_label_noise():
  n, k, rate = 200_000, 10, 0.3
  y = np.random.default_rng(0).integers(0, k, n).astype(np.int32)
  y_noisy, flipped = data.symmetric_label_noise(y, rate, k, np.random.default_rng(1))
  assert y_noisy.dtype == np.int32 and flipped.dtype == bool
  np.testing.assert_array_equal(flipped, y_noisy != y)  # Never flips to the same class.
  assert abs(flipped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
  # Targets of flips are uniform over the other 9 classes.
  targets = np.bincount((y_noisy[flipped] - y[flipped]) % k, minlength=k)
  assert targets[0] == 0
  np.testing.assert_allclose(targets[1:] / flipped.sum(), 1 / 9, atol=0.01)
  y0, f0 = data.symmetric_label_noise(y, 0.0, k, np.random.default_rng(1))
  assert not f0.any() and np.array_equal(y0, y)
  with pytest.raises(ValueError, match="config.dataset.label_noise"):
    data.symmetric_label_noise(y, 1.2, k, np.random.default_rng(1))


# ------------------------------------------------------------------------------ splits


def test_splits_partition_source_stratified():
  s = data.make_splits(_config(), seed=0)
  _, y_src = data.load_arrays("digits", 0)
  n_src = y_src.size
  all_index = np.concatenate([getattr(s, n).index for n in data.SPLIT_NAMES])
  assert np.array_equal(np.sort(all_index), np.arange(n_src))  # Disjoint, covering.
  src_counts = np.bincount(y_src)
  for name, frac in zip(data.SPLIT_NAMES, (0.5, 0.2, 0.1, 0.2)):
    sp = getattr(s, name)
    assert sp.x.dtype == np.float32 and sp.y.dtype == np.int32 and sp.x.shape == (len(sp), 64)
    np.testing.assert_array_equal(sp.y, y_src[sp.index])
    assert np.all(np.abs(np.bincount(sp.y, minlength=10) - frac * src_counts) <= 1)
  assert s.num_classes == 10 and s.class_names == [str(c) for c in range(10)]


def test_splits_features_match_source_rows():
  s = data.make_splits(_config(name="mnist1d"), seed=3)
  x_src, _ = data.load_arrays("mnist1d", 0)
  mean = x_src[s.train.index].mean(0)
  std = x_src[s.train.index].std(0)
  np.testing.assert_allclose(s.test.x, (x_src[s.test.index] - mean) / std, atol=1e-4)
  # Train statistics standardise the train split.
  np.testing.assert_allclose(s.train.x.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(s.train.x.std(0), 1.0, atol=1e-4)
  assert np.abs(s.test.x.mean(0)).max() > 1e-3  # Not refitted on test.


def test_digits_constant_features_are_centred_not_blown_up():
  s = data.make_splits(_config(), seed=0)
  x_src, _ = data.load_arrays("digits", 0)
  constant = x_src[s.train.index].std(0) == 0
  assert constant.any()  # e.g. the always-blank corner pixel.
  for name in data.SPLIT_NAMES:
    assert np.abs(getattr(s, name).x).max() < 100


def test_splits_imbalance_and_noise():
  cfg = _config(name="mnist1d", imbalance_class=3, imbalance_fraction=0.02, label_noise=0.2)
  s = data.make_splits(cfg, seed=1)
  clean = data.make_splits(_config(name="mnist1d"), seed=1)
  # mnist1d: 500 per class -> train 250, holdout 100, val 50, test 100 per class.
  for name, per_class in (("train", 250), ("holdout", 100)):
    counts = np.bincount(getattr(s, name).y_clean, minlength=10)
    n_rest = 9 * per_class
    assert counts[3] == int(np.floor(0.02 * n_rest / 0.98 + 0.5))  # 46 and 18.
    assert np.all(np.delete(counts, 3) == per_class)
  for name, per_class in (("val", 50), ("test", 100)):
    sp, sp_clean = getattr(s, name), getattr(clean, name)
    np.testing.assert_array_equal(np.bincount(sp.y, minlength=10), np.full(10, per_class))
    np.testing.assert_array_equal(sp.y, sp.y_clean)
    np.testing.assert_array_equal(sp.index, sp_clean.index)  # Same rows with or w/o corruption.
  np.testing.assert_array_equal(s.holdout.y, s.holdout.y_clean)
  flipped = s.train.y != s.train.y_clean
  assert abs(flipped.mean() - 0.2) < 0.03
  assert s.train.y.min() >= 0 and s.train.y.max() < 10


def test_splits_deterministic_in_seed():
  cfg = _config(imbalance_class=0, imbalance_fraction=0.05, label_noise=0.1)
  a, b, c = (data.make_splits(cfg, seed) for seed in (7, 7, 8))
  for name in data.SPLIT_NAMES:
    for field in ("x", "y", "y_clean", "index"):
      np.testing.assert_array_equal(getattr(getattr(a, name), field),
                                    getattr(getattr(b, name), field))
  assert not np.array_equal(a.train.index, c.train.index)
  assert not np.array_equal(a.train.y, c.train.y)


@pytest.mark.parametrize("overrides,field", [
    (dict(name="cifar"), "config.dataset.name"),
    (dict(fractions=(0.5, 0.5)), "config.dataset.fractions"),
    (dict(fractions=(0.5, 0.2, 0.1, 0.1)), "config.dataset.fractions"),
    (dict(fractions=(0.6, 0.2, 0.2, 0.0)), "config.dataset.fractions"),
    (dict(fractions=(0.7, 0.2, 0.2, -0.1)), "config.dataset.fractions"),
    (dict(fractions=(0.9997, 0.0001, 0.0001, 0.0001)), "config.dataset.fractions"),
    (dict(imbalance_class=10), "config.dataset.imbalance_class"),
    (dict(imbalance_class=1.0), "config.dataset.imbalance_class"),
    (dict(imbalance_fraction=0.0), "config.dataset.imbalance_fraction"),
    (dict(imbalance_fraction=1.01), "config.dataset.imbalance_fraction"),
    (dict(label_noise=1.0), "config.dataset.label_noise"),
    (dict(label_noise=-0.1), "config.dataset.label_noise"),
])
def test_bad_config_raises_naming_field(overrides, field):
  with pytest.raises(ValueError, match=field) as e:
    data.make_splits(_config(**overrides), seed=0)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- sampling


def test_batch_indices_epochs_cover_each_example_once():
  n, b, seed = 10, 4, 5
  stream = np.concatenate([data.batch_indices(seed, s, n, b) for s in range(15)])  # 6 epochs.
  assert all(data.batch_indices(seed, s, n, b).dtype == np.int64 for s in range(3))
  epochs = stream.reshape(6, n)
  for e, perm in enumerate(epochs):
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    np.testing.assert_array_equal(perm, np.random.default_rng([seed, e]).permutation(n))
  assert not np.array_equal(epochs[0], epochs[1])
  # Step 2 = stream[8:12] straddles epochs 0 and 1.
  np.testing.assert_array_equal(data.batch_indices(seed, 2, n, b),
                                np.concatenate([epochs[0][8:], epochs[1][:2]]))
  # Batch starts 0, 4, 8, 12, 16, 20.
  assert [data.epoch_of(s, n, b) for s in range(6)] == [0, 0, 0, 1, 1, 2]


def test_batch_indices_order_independent_and_large_step():
  n, b = 1000, 64
  steps = [123_456, 3, 999_999, 0, 3]
  first = [data.batch_indices(0, s, n, b) for s in steps]
  second = [data.batch_indices(0, s, n, b) for s in reversed(steps)][::-1]
  for u, v in zip(first, second):
    np.testing.assert_array_equal(u, v)
  big = data.batch_indices(0, 999_999, n, b)  # Stream slice [63_999_936, 64_000_000).
  e = 63_999_936 // n
  np.testing.assert_array_equal(big, np.random.default_rng([0, e]).permutation(n)[936:])
  assert not np.array_equal(data.batch_indices(0, 5, n, b), data.batch_indices(1, 5, n, b))


def test_batch_indices_batch_larger_than_dataset():
  n, b = 3, 8
  stream = np.concatenate([np.random.default_rng([2, e]).permutation(n) for e in range(6)])
  for step in range(2):
    np.testing.assert_array_equal(data.batch_indices(2, step, n, b),
                                  stream[step * b:(step + 1) * b])
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(0, 0, n, 0)


def test_iterate_batches_pads_last_batch():
  y = np.arange(10, dtype=np.int32) + 1
  split = data.Split(x=np.stack([y, -y], 1).astype(np.float32), y=y, y_clean=y,
                     index=np.arange(10))
  batches = list(data.iterate_batches(split, 4))
  assert len(batches) == 3
  assert all(xb.shape == (4, 2) and yb.shape == (4,) and m.shape == (4,)
             for xb, yb, m in batches)
  ys = np.concatenate([yb[m] for _, yb, m in batches])
  np.testing.assert_array_equal(ys, y)
  xs = np.concatenate([xb[m] for xb, _, m in batches])
  np.testing.assert_array_equal(xs, split.x)
  xb, yb, m = batches[-1]
  np.testing.assert_array_equal(m, [True, True, False, False])
  assert not xb[2:].any() and not yb[2:].any()
  assert len(list(data.iterate_batches(split, 5))) == 2


def test_iterate_batches_parts_are_the_rows_of_each_global_batch():
  """Process p of 4 gets rows [2p, 2p+2) of every global batch of 8, padded like it."""
  y = np.arange(11, dtype=np.int32) + 1
  split = data.Split(x=(y[:, None] * 10.0).astype(np.float32), y=y, y_clean=y,
                     index=np.arange(11))
  whole = list(data.iterate_batches(split, 8))
  parts = [list(data.iterate_batches(split, 8, 4, p)) for p in range(4)]
  assert all(len(pb) == len(whole) for pb in parts)
  for i, (xb, yb, m) in enumerate(whole):
    for p in range(4):
      pxb, pyb, pm = parts[p][i]
      np.testing.assert_array_equal(pxb, xb[2 * p:2 * p + 2])
      np.testing.assert_array_equal(pyb, yb[2 * p:2 * p + 2])
      np.testing.assert_array_equal(pm, m[2 * p:2 * p + 2])
  assert not parts[3][1][2].any()                   # rows 14, 15 do not exist: all padding
  with pytest.raises(ValueError, match="num_parts must divide"):
    list(data.iterate_batches(split, 8, 3, 0))


def _cfg(**overrides):
  return data.dataset_config(**{"name": "digits", "fractions": (0.5, 0.2, 0.1, 0.2),
                                **overrides})


def test_class_subset_relabels_and_keeps_source_rows():
  _, y_src = data.load_arrays("digits")
  s = data.make_splits(_cfg(classes=(4, 9)), seed=0)
  assert s.num_classes == 2 and s.class_names == ["4", "9"]
  for split in (s.train, s.holdout, s.val, s.test):
    assert set(np.unique(split.y)) == {0, 1}
    np.testing.assert_array_equal(np.where(y_src[split.index] == 4, 0, 1), split.y)
  total = sum(len(p) for p in (s.train, s.holdout, s.val, s.test))
  assert total == int(np.sum((y_src == 4) | (y_src == 9)))


def test_ren_protocol_splits():
  """Minority 0.005 of train only; a balanced 5-per-class clean holdout; balanced test."""
  s = data.make_splits(_cfg(classes=(4, 9), imbalance_class=1, imbalance_fraction=0.005,
                       imbalance_splits=("train",), holdout_per_class=5), seed=1)
  n_major = int(np.sum(s.train.y == 0))
  assert int(np.sum(s.train.y == 1)) == max(1, int(np.floor(0.005 * n_major / 0.995 + 0.5)))
  np.testing.assert_array_equal(np.bincount(s.holdout.y), [5, 5])
  counts = np.bincount(s.test.y)
  assert abs(counts[0] - counts[1]) <= 1


@pytest.mark.parametrize("overrides, field", [
    ({"classes": (4,)}, "config.dataset.classes"),
    ({"classes": (4, 4)}, "config.dataset.classes"),
    ({"classes": (4, 12)}, "config.dataset.classes"),
    ({"imbalance_splits": ("test",)}, "config.dataset.imbalance_splits"),
    ({"holdout_per_class": 0}, "config.dataset.holdout_per_class"),
    ({"classes": (4, 9), "imbalance_class": 2}, "config.dataset.imbalance_class"),
])
def test_bad_subset_config(overrides, field):
  with pytest.raises(ValueError, match=field):
    data.make_splits(_cfg(**overrides), seed=0)


def test_dataset_config_missing_a_field_is_one_line():
  cfg = _cfg()
  del cfg["imbalance_splits"]
  with pytest.raises(ValueError) as e:
    data.make_splits(cfg, seed=0)
  assert str(e.value).startswith("config.dataset lacks ['imbalance_splits']: a 'digits' "
                                 "dataset config defines every field") and "\n" not in str(e.value)
  real_cfg = data.dataset_config("cifar10")
  del real_cfg["label_noise"]
  with pytest.raises(ValueError, match=r"config.dataset lacks \['label_noise'\]: a 'cifar10'"):
    data.validate_dataset_config(real_cfg)


def test_split_fractions_are_checked_by_one_rule():
  """Embedded ``fractions`` (4 parts) and real ``text_fractions`` (3) share one check."""
  from reducr_jax.core import checks  # pylint: disable=g-import-not-at-top
  checks.check_fractions("f", (0.5, 0.25, 0.25), ("a", "b", "c"))
  for bad in [(0.5, 0.5), (0.5, 0.3, 0.3), (0.5, 0.5, 0.0), (0.5, True, 0.5), "0.5,0.5"]:
    with pytest.raises(ValueError, match=r"^f must be 3 positive numbers \(a, b, c\) "
                                         r"summing to 1, got "):
      checks.check_fractions("f", bad, ("a", "b", "c"))
  with pytest.raises(ValueError, match=r"config.dataset.text_fractions must be 3 positive"):
    data.validate_dataset_config(data.dataset_config("qqp", text_fractions=(0.5, 0.5)))

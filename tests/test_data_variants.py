"""Issue #17 data variants: official label noise, weighted sampler, official splits, groups.

Every expected number is computed by hand in the comments.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from reducr_jax import data
from reducr_jax.data import corruption
from reducr_jax.core import groups
from reducr_jax.data import real
from reducr_jax.data import real_specs
from reducr_jax.data import sampling
from reducr_jax.data import streams


def _config(**overrides) -> ml_collections.ConfigDict:
  return data.dataset_config(**{"name": "digits", "fractions": (0.5, 0.2, 0.1, 0.2),
                                **overrides})


# ----------------------------------------------------------------------- label noise


def test_any_mode_redraws_exactly_int_n_rate_rows_over_all_classes():
  y = np.zeros(100_000, np.int32)
  noisy, redrawn = corruption.uniform_label_noise(y, 0.3, 4, np.random.default_rng(0))
  assert redrawn.sum() == 30_000                      # int(100000 · 0.3), no Bernoulli
  assert not (noisy[~redrawn] != 0).any()             # rows not redrawn keep their label
  # A redraw is uniform over 4 classes: it keeps class 0 with prob 1/4, so the changed
  # share is 0.3 · 3/4 = 0.225 (binomial std over 30000 redraws: 0.3·sqrt(.25·.75/30000)
  # ≈ 0.0008).
  assert abs((noisy != 0).mean() - 0.225) < 0.004
  assert abs((noisy[redrawn] == 0).mean() - 0.25) < 0.01
  np.testing.assert_array_equal(np.bincount(noisy[redrawn], minlength=4) > 7000, True)


def test_different_mode_unchanged_and_flips_at_rate():
  y = np.zeros(100_000, np.int32)
  noisy = corruption.label_noise(y, 0.3, 4, np.random.default_rng(0), "different")
  ref, _ = corruption.symmetric_label_noise(y, 0.3, 4, np.random.default_rng(0))
  np.testing.assert_array_equal(noisy, ref)           # the default is the old function
  assert abs((noisy != 0).mean() - 0.3) < 0.005       # every flip changes the label


def test_any_mode_in_make_splits_keeps_clean_labels():
  s = data.make_splits(_config(label_noise=0.5, label_noise_mode="any"), seed=0)
  n = len(s.train)
  changed = (s.train.y != s.train.y_clean).mean()
  # int(n/2) rows redrawn over 10 classes: changed share ≈ 0.5 · 9/10 = 0.45.
  assert abs(changed - 0.45) < 0.05, (changed, n)
  other = data.make_splits(_config(label_noise=0.5), seed=0)
  np.testing.assert_array_equal(other.train.y_clean, s.train.y_clean)   # same rows


# ------------------------------------------------------------------- weighted sampler


def test_sampler_probabilities_by_hand():
  # Official weights for C = 3, rare class 1 at 0.2: w = [0.4, 0.2, 0.4]. Per example
  # w[y] = [.4, .4, .2, .2, .4, .4], sum 2.0 → p = [.2, .2, .1, .1, .2, .2].
  np.testing.assert_allclose(corruption.sampler_class_weights(3, 1, 0.2), [0.4, 0.2, 0.4])
  p = corruption.sampler_probabilities(np.array([0, 0, 1, 1, 2, 2]), 1, 0.2, 3)
  np.testing.assert_allclose(p, [0.2, 0.2, 0.1, 0.1, 0.2, 0.2])
  # Unbalanced classes: y = [0, 0, 0, 1] with w = [0.5, 0.5] (C = 2, fraction 0.5): the
  # official sampler weights examples, not classes, so class 1 gets 0.5/(3·.5+.5) = 0.25.
  p = corruption.sampler_probabilities(np.array([0, 0, 0, 1]), 1, 0.5, 2)
  np.testing.assert_allclose(p, [0.25, 0.25, 0.25, 0.25])


def test_weighted_batches_pure_and_hit_the_target_share():
  y = np.tile(np.arange(4), 250)                      # balanced, 1000 rows
  p = corruption.sampler_probabilities(y, 3, 0.1, 4)
  a = sampling.weighted_batch_indices(5, 7, p, 64)
  np.testing.assert_array_equal(a, sampling.weighted_batch_indices(5, 7, p, 64))
  assert not np.array_equal(a, sampling.weighted_batch_indices(5, 8, p, 64))
  idx = np.concatenate([sampling.weighted_batch_indices(0, t, p, 100) for t in range(200)])
  # 20000 draws of class 3 with prob 0.1: std sqrt(.1·.9/20000) ≈ 0.0021.
  assert abs((y[idx] == 3).mean() - 0.1) < 0.01
  assert len(np.unique(idx)) < len(idx)               # with replacement
  zero = np.array([0.5, 0.0, 0.5])
  assert 1 not in sampling.weighted_batch_indices(0, 0, zero, 1000)


def test_weighted_sampler_keeps_rows_and_samples_train_batches():
  cfg = _config(imbalance_class=3, imbalance_fraction=0.05,
                imbalance_mode="weighted_sampler")
  s = data.make_splits(cfg, seed=0)
  plain = data.make_splits(_config(), seed=0)
  np.testing.assert_array_equal(s.train.index, plain.train.index)   # nothing dropped
  np.testing.assert_array_equal(s.holdout.index, plain.holdout.index)
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=200, dataset=cfg))
  ys = np.concatenate([data.train_batch(config, s, None, t)["y"] for t in range(100)])
  # digits is nearly balanced (≈ 10 % per class), so class 3's share ≈ 0.05.
  assert abs((ys == 3).mean() - 0.05) < 0.012
  h = streams.split_batch_indices(cfg, s.holdout, "holdout", 1, 0, 500, 10)
  assert abs((s.holdout.y[h] == 3).mean() - 0.05) < 0.04
  v = streams.split_batch_indices(cfg, s.val, "val", 1, 0, 10, 10)
  np.testing.assert_array_equal(v, sampling.batch_indices(1, 0, len(s.val), 10))


# -------------------------------------------------------------------- official splits


def test_official_cifar_rows_even_train_odd_holdout():
  ids = [b"train_00003", b"train_00000", b"train_00002", b"train_00001", "train_00004"]
  train, holdout = real.official_cifar_rows(ids)
  np.testing.assert_array_equal(train, [1, 2, 4])     # originals 0, 2, 4
  np.testing.assert_array_equal(holdout, [3, 0])      # originals 1, 3
  with pytest.raises(ValueError, match="split_mode='official'"):
    real.official_cifar_rows([b"abc"])


def test_official_qqp_rows_by_hand():
  # N = 10: train_end = 5, val_end = 5 + int(10 // 2.5) = 9 → test = [9]. Rows 0..8 have
  # class-1 rows [0, 2, 3, 6, 8] → first 5 // 2 = 2 kept: [0, 2]; class 0: [1, 4, 5, 7].
  # List [0, 2, 1, 4, 5, 7]: even positions [0, 1, 5] minus row 1 → train [0, 5];
  # odd positions [2, 4, 7] (row 0 not among them) → holdout [2, 4, 7].
  y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
  train, holdout, test = real.official_qqp_rows(y)
  np.testing.assert_array_equal(train, [0, 5])
  np.testing.assert_array_equal(holdout, [2, 4, 7])
  np.testing.assert_array_equal(test, [9])


def test_official_qqp_counts_at_glue_size():
  # GLUE QQP: 363,846 train (134,378 duplicates) + 40,430 validation (14,885).
  y = np.zeros(404_276, np.int8)
  y[:134_378] = 1
  y[363_846:363_846 + 14_885] = 1
  train, holdout, test = real.official_qqp_rows(y)
  # val_end = 202,138 + 161,710 = 363,848: test 40,428; the 2 validation rows before it
  # are duplicates → 134,380 // 2 = 67,190 kept + 229,468 non-duplicates = 296,658,
  # alternating → 148,329 each. Row 0 sits at position 0 (train) and row 1 at position 1
  # (holdout), so the official filters (train idx != 1, holdout idx != 0) drop nothing.
  assert len(test) == 40_428
  assert len(train) + len(holdout) == 296_658 - (1 in train) - (0 in holdout)
  assert len(train) == 148_329 and len(holdout) == 148_329
  assert abs(y[train].mean() - 67_190 / 296_658) < 1e-3          # ≈ 22.6 % class 1


def test_official_qqp_split_from_glue_tsv(tmp_path):
  pytest.importorskip("tokenizers")
  import fakes  # pylint: disable=g-import-not-at-top
  rows = {"train": [("a b", "c d", i % 3 == 0) for i in range(30)],
          "validation": [("a", "b", i % 2) for i in range(10)]}
  rows = {k: [(a, b, int(y)) for a, b, y in v] for k, v in rows.items()}
  fakes.write_glue(tmp_path / "glue", "qqp", rows)
  cfg = real_specs.config_for("qqp", tokenizer=fakes.write_vocab(tmp_path), max_length=8,
                            manual_dir=str(tmp_path / "glue"), split_mode="official")
  s = data.make_splits(cfg, seed=0)
  # N = 40: val_end = 20 + int(40 // 2.5) = 36 → test 4 rows.
  assert len(s.test) == 4 and s.val is s.holdout
  assert len(s.train) + len(s.holdout) <= 36 and len(s.train) >= len(s.holdout) - 1
  assert not set(s.train.index) & set(s.holdout.index)
  assert s.train.y.mean() < 0.5


def test_official_mnli_rows_are_the_official_contiguous_cut():
  train, holdout, test = real.official_mnli_rows(412_349)    # GLUE train + both dev sets
  assert (len(train), len(holdout), len(test)) == (206_174, 164_939, 41_236)
  np.testing.assert_array_equal(train, np.arange(206_174))
  assert holdout[0] == 206_174 and holdout[-1] == 371_112 and test[0] == 371_113
  assert test[-1] == 412_348 and 392_702 - test[0] == 21_589   # last train rows + dev


def test_official_mnli_split_from_glue_tsv_in_file_order(tmp_path):
  pytest.importorskip("tokenizers")
  import fakes  # pylint: disable=g-import-not-at-top
  from reducr_jax.data import glue_tsv  # pylint: disable=g-import-not-at-top
  rows = {"train": [("a b", "c d", i % 3) for i in range(30)],
          "validation_matched": [("a", "b", 0)] * 5,
          "validation_mismatched": [("c", "d", 2)] * 5}
  fakes.write_glue(tmp_path / "glue", "mnli", rows)
  cfg = real_specs.config_for("mnli", tokenizer=fakes.write_vocab(tmp_path), max_length=8,
                            manual_dir=str(tmp_path / "glue"), split_mode="official")
  s = data.make_splits(cfg, seed=0)
  again = data.make_splits(cfg, seed=7)                        # fixed: no seed in it
  # N = 40: train = pool rows 0..19, holdout = 20 .. 20 + int(40 // 2.5) − 1 = 35, test 4
  assert (len(s.train), len(s.holdout), len(s.test)) == (20, 16, 4) and s.val is s.holdout
  np.testing.assert_array_equal(s.train.index, np.arange(20))
  np.testing.assert_array_equal(s.holdout.index, np.arange(20, 36))
  np.testing.assert_array_equal(s.test.index, np.arange(36, 40))
  np.testing.assert_array_equal(again.train.index, s.train.index)
  # the rows are in the GLUE file's order (as Hugging Face reads it), not TFDS's
  order = [int(r) for r in glue_tsv.tfds_order("train", 30)]
  file_labels = np.empty(30, int)
  file_labels[order] = [y for _, _, y in rows["train"]]
  np.testing.assert_array_equal(s.train.y, file_labels[:20])
  assert not np.array_equal(file_labels, [y for _, _, y in rows["train"]])
  np.testing.assert_array_equal(s.test.y, [2, 2, 2, 2])          # validation_mismatched 1..4


# ---------------------------------------------------------------------------- groups


def test_groups_mapping_and_labels():
  g = groups.group_of((0, 0, 1, 1), 4)
  np.testing.assert_array_equal(groups.group_labels(np.array([3, 0, 2, 1]), g), [1, 0, 1, 0])
  assert groups.num_groups((0, 0, 1, 1), 4) == 2 and groups.num_groups((), 4) == 4
  assert groups.group_names((0, 0, 1, 1), ["a", "b", "c", "d"]) == ["a+b", "c+d"]
  coarse = groups.group_of("cifar100_superclasses", 100)
  np.testing.assert_array_equal(np.bincount(coarse), np.full(20, 5))
  names = real_specs.CLASS_NAMES["cifar100"]
  # Official superclass table: 0 aquatic mammals, 4 fruit and vegetables, 14 people.
  assert {names[c] for c in np.flatnonzero(coarse == 0)} == {
      "beaver", "dolphin", "otter", "seal", "whale"}
  assert {names[c] for c in np.flatnonzero(coarse == 4)} == {
      "apple", "mushroom", "orange", "pear", "sweet_pepper"}
  assert {names[c] for c in np.flatnonzero(coarse == 14)} == {
      "baby", "boy", "girl", "man", "woman"}
  with pytest.raises(ValueError, match="config.dataset.groups"):
    groups.validate_groups("cifar100_superclasses", 10)
  with pytest.raises(ValueError, match="config.dataset.groups"):
    groups.validate_groups((0, 2, 2, 0), 4)                    # group 1 unused


# ------------------------------------------------------------- groups in the trainer


def test_group_metrics_by_hand():
  from reducr_jax.core import metrics  # pylint: disable=g-import-not-at-top
  # 4 classes, groups (0, 0, 1, 1): correct 8/10, 2/10, 9/10, 9/10 → group 0: 10/20 = 0.5,
  # group 1: 18/20 = 0.9; worst group 0.5 while the worst class is 0.2.
  stats = metrics.ClassSums(np.array([8., 2., 9., 9.]), np.array([10., 10., 10., 10.]))
  out = metrics.group_summary(stats, np.array([0, 0, 1, 1]))
  assert out["per_group_accuracy"] == pytest.approx([0.5, 0.9])
  assert out["worst_group_accuracy"] == pytest.approx(0.5)
  assert out["group_counts"] == [20, 20]
  assert float(metrics.worst_class_accuracy(stats)) == pytest.approx(0.2)


def test_grouped_experts_weight_the_group():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from reducr_jax.core import class_weighted_losses  # pylint: disable=g-import-not-at-top
  # Head g of 2, labels [0, 1, 2, 3] in groups (0, 0, 1, 1), γ = 9, per-head losses all 1:
  # head 0 weights [10, 10, 1, 1], head 1 [1, 1, 10, 10] → mean over 8 entries = 44/8.
  logits = jnp.zeros((4, 2, 4))
  loss = class_weighted_losses.multihead_loss(logits, jnp.array([0, 1, 2, 3]), 9.0,
                                              np.array([0, 0, 1, 1]))
  assert float(loss) == pytest.approx(44 / 8 * np.log(4), rel=1e-6)


def test_grouped_run_on_digits(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import trainer as train  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configuration.with_overrides(
      configuration.load_config(os.path.join(repo, "configs/default.py")), {
          "dataset.groups": (0, 1) * 5, "model.hidden": (16,), "batch_size": 40,
          "num_steps": 6, "log_every": 3, "eval_every": 6, "checkpoint_every": 6,
          "experts.num_steps": 6, "experts.eval_every": 6, "experts.batch_size": 32,
          "eval_batch_size": 256, "num_devices": 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert len(results["class_weights"]) == 2                     # MWU over even / odd
  assert results["group_names"] == ["0+2+4+6+8", "1+3+5+7+9"]
  assert len(results["test"]["per_class_accuracy"]) == 10
  per_group, counts = results["test"]["per_group_accuracy"], results["test"]["group_counts"]
  per_class = np.array(results["test"]["per_class_accuracy"])
  class_counts = np.array(results["test"]["class_counts"])
  for g in range(2):   # group accuracy = its classes' correct over its examples
    rows = np.arange(g, 10, 2)
    assert counts[g] == class_counts[rows].sum()
    assert per_group[g] == pytest.approx(
        (per_class[rows] * class_counts[rows]).sum() / class_counts[rows].sum())
  assert results["test"]["worst_group_accuracy"] == pytest.approx(min(per_group))
  assert len(os.listdir(tmp_path / "experts")) == 1
  from reducr_jax.train import references  # pylint: disable=g-import-not-at-top
  splits = data.make_splits(config.dataset, config.seed)
  assert references.reference_model_fns(config, splits, "experts")[2] == 2   # one expert per group


def test_four_class_toy_groups_give_two_experts_and_two_weights():
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
  from reducr_jax.core import registry  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import references  # pylint: disable=g-import-not-at-top
  from reducr_jax.train import train_state  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = configuration.with_overrides(
      configuration.load_config(os.path.join(repo, "configs/default.py")),
      {"dataset.classes": (0, 1, 2, 3), "dataset.groups": (0, 0, 1, 1),
       "dataset.imbalance_class": -1})
  configuration.validate_config(config, 1)
  splits = data.make_splits(config.dataset, config.seed)
  assert splits.num_classes == 4
  assert references.reference_model_fns(config, splits, "experts")[2] == 2   # experts = groups
  # Class sizes 5, 7, 3, 1 → group sizes 12, 4.
  cfg = train_state.StepConfig.from_config(config, 4, 1, "table", (5, 7, 3, 1))
  assert cfg.num_classes == 2 and cfg.group_of == (0, 0, 1, 1)
  assert cfg.train_class_counts == (12, 4)
  w = registry.class_weights(cfg.selector, cfg.selector.init(cfg.num_classes), 2)
  np.testing.assert_allclose(np.asarray(w), [0.5, 0.5])              # MWU weights [2]
  assert jax.numpy.shape(w) == (2,)


def test_official_cifar_split_through_make_splits(monkeypatch):
  from reducr_jax.data import tfds_loading  # pylint: disable=g-import-not-at-top
  # A fake TFDS cifar10: 10 train images stored shuffled (ids give the original index),
  # 4 test images. Originals 0, 2, 4, 6, 8 → train; 1, 3, 5, 7, 9 → holdout (= val).
  originals = np.array([7, 2, 9, 0, 4, 1, 8, 3, 6, 5])
  train = {"image": np.zeros((10, 32, 32, 3), np.uint8) + originals[:, None, None, None],
           "label": originals % 10, "id": np.array([f"train_{o:05d}".encode()
                                                     for o in originals])}
  test = {"image": np.zeros((4, 32, 32, 3), np.uint8), "label": np.arange(4),
          "id": np.array([b"test_0", b"test_1", b"test_2", b"test_3"])}
  monkeypatch.setattr(tfds_loading, "catalog_builder", lambda *a, **k: "builder")
  monkeypatch.setattr(tfds_loading, "read_split", lambda b, split, keys, cap=-1: {
      k: (train if split == "train" else test)[k] for k in keys})
  s = data.make_splits(real_specs.config_for("cifar10", split_mode="official"), seed=3)
  assert sorted(s.train.x[:, 0, 0, 0]) == [0, 2, 4, 6, 8]
  assert sorted(s.holdout.x[:, 0, 0, 0]) == [1, 3, 5, 7, 9]
  assert s.val is s.holdout and len(s.test) == 4
  again = data.make_splits(real_specs.config_for("cifar10", split_mode="official"), seed=4)
  np.testing.assert_array_equal(again.train.index, s.train.index)   # seed-independent

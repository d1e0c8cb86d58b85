"""Tests for the real-dataset pipeline: random_access, tfds_loading, cinic10, clothing1m, real.

Nothing downloads: CIFAR and GLUE come from ``tfds.testing.mock_data`` (random examples
generated from the builders' features), CINIC-10 and Clothing1M from tiny fake
``manual_dir`` trees written here and prepared by our own builders.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

import fakes
from reducr_jax import data
from reducr_jax.data import random_access
from reducr_jax.data import real_specs


def _cfg(name, **overrides):
  return real_specs.config_for(name, **overrides)


# ------------------------------------------------------------------------ random_access


class _Records:
  """A random-access source without ``__getitems__``; records are ``(row, array)``."""

  def __init__(self, arrays):
    self.arrays = arrays
    self.reads = []

  def __len__(self):
    return len(self.arrays)

  def __getitem__(self, i):
    self.reads.append(i)
    return (i, self.arrays[i])


def _lazy(ref):
  src = _Records(ref)
  rows = random_access.DataSourceRows(src, lambda rec: rec[1] + 1, ref.shape[1:], ref.dtype)
  return random_access.LazyArray([rows]), src


def test_lazy_array_indexes_like_numpy():
  ref = np.arange(50 * 2 * 3, dtype=np.int32).reshape(50, 2, 3)
  x, src = _lazy(ref)
  want = ref + 1
  assert x.shape == (50, 2, 3) and x.dtype == np.int32 and x.ndim == 3 and len(x) == 50
  np.testing.assert_array_equal(x[7], want[7])
  np.testing.assert_array_equal(x[np.int64(-1)], want[-1])
  np.testing.assert_array_equal(x[3:40:4], want[3:40:4])
  idx = np.array([[49, 0], [-50, 7]])
  np.testing.assert_array_equal(x[idx], want[idx])
  mask = np.arange(50) % 3 == 0
  np.testing.assert_array_equal(x[mask], want[mask])
  np.testing.assert_array_equal(x[[5, 2], 1], want[[5, 2], 1])
  np.testing.assert_array_equal(x[4, :, 2], want[4, :, 2])
  assert x[np.array([], np.int64)].shape == (0, 2, 3)
  np.testing.assert_array_equal(np.asarray(x), want)       # decoded by the thread pool
  src.reads.clear()
  np.testing.assert_array_equal(x[np.array([9, 1, 9, 9])], want[[9, 1, 9, 9]])
  assert sorted(src.reads) == [1, 9]                       # repeats decoded once
  with pytest.raises(IndexError):
    x[50]
  with pytest.raises(IndexError):
    x[np.array([0.5])]


def test_lazy_take_and_concatenate():
  ref = np.arange(20, dtype=np.float32).reshape(10, 2)
  x, _ = _lazy(ref)
  other = np.full((3, 2), -1.0, np.float32)
  view = x.take(np.array([8, 2, 2]))
  assert isinstance(view, random_access.LazyArray) and view.shape == (3, 2)
  np.testing.assert_array_equal(view[:], ref[[8, 2, 2]] + 1)
  cat = random_access.concatenate([view, other, x.take(np.arange(10) < 2)])
  assert isinstance(cat, random_access.LazyArray) and cat.shape == (8, 2)
  assert len(cat.sources) == 2                             # x's source kept once
  np.testing.assert_array_equal(
      cat[:], np.concatenate([ref[[8, 2, 2]] + 1, other, ref[:2] + 1]))
  np.testing.assert_array_equal(cat[np.array([3, 0, 7])], [[-1, -1], [17, 18], [3, 4]])
  both_numpy = random_access.concatenate([ref, other])
  assert isinstance(both_numpy, np.ndarray) and both_numpy.shape == (13, 2)
  with pytest.raises(ValueError, match="row shape"):
    random_access.concatenate([x, np.zeros((2, 3), np.float32)])


def test_iterate_batches_slices_lazy_x_without_materialising():
  ref = np.arange(11 * 2, dtype=np.int32).reshape(11, 2)
  x, src = _lazy(ref)
  split = data.Split(x=x, y=np.arange(11, dtype=np.int32), y_clean=np.arange(11),
                     index=np.arange(11))
  batches = list(data.iterate_batches(split, 4))
  assert len(batches) == 3 and all(xb.shape == (4, 2) for xb, _, _ in batches)
  np.testing.assert_array_equal(np.concatenate([xb[m] for xb, _, m in batches]), ref + 1)
  assert not batches[-1][0][3:].any() and batches[-1][2].tolist() == [True] * 3 + [False]
  assert len(src.reads) == 11                              # every row decoded exactly once


# ----------------------------------------------------------------------- config checks


@pytest.mark.parametrize("name,overrides,field", [
    ("cifar10", dict(holdout_fraction=1.0), "config.dataset.holdout_fraction"),
    ("cifar10", dict(imbalance_class=10), "config.dataset.imbalance_class"),
    ("cifar10", dict(imbalance_fraction=0.0), "config.dataset.imbalance_fraction"),
    ("cifar10", dict(imbalance_splits=("test",)), "config.dataset.imbalance_splits"),
    ("cifar10", dict(label_noise=1.0), "config.dataset.label_noise"),
    ("cifar10", dict(download="yes"), "config.dataset.download"),
    ("cifar10", dict(data_dir=None), "config.dataset.data_dir"),
    ("cifar10", dict(max_examples=0), "config.dataset.max_examples"),
    ("cifar10", dict(classes=(3, 5)), "config.dataset.classes"),
    ("clothing1m", dict(clothing1m_holdout_extra=-1), "config.dataset.clothing1m_holdout_extra"),
    ("mnli", dict(text_fractions=(0.5, 0.5)), "config.dataset.text_fractions"),
    ("mnli", dict(text_fractions=(0.5, 0.4, 0.2)), "config.dataset.text_fractions"),
    ("mnli", dict(tokenizer=""), "config.dataset.tokenizer"),
    ("qqp", dict(tokenizer="/no/such/vocab.txt"), "config.dataset.tokenizer"),
    ("qqp", dict(qqp_class1_fraction=0.0), "config.dataset.qqp_class1_fraction"),
    ("qqp", dict(max_length=1000), "config.dataset.max_length"),
])
def test_bad_real_config_raises_naming_field(name, overrides, field, tmp_path):
  overrides.setdefault("tokenizer", str(tmp_path))
  cfg = _cfg(name, **overrides)
  for check in (data.validate_dataset_config, lambda c: data.make_splits(c, 0)):
    with pytest.raises(ValueError, match=field) as e:
      check(cfg)
    assert "\n" not in str(e.value)


def test_names_and_num_classes_without_data():
  with pytest.raises(ValueError) as e:
    data.validate_dataset_config(ml_collections.ConfigDict({"name": "cifar"}))
  assert str(e.value) == (
      "config.dataset.name must be one of ['digits', 'mnist1d', 'cifar10', 'cifar100', "
      "'cinic10', 'clothing1m', 'mnli', 'qqp'], got 'cifar'")
  expected = {"cifar10": 10, "cifar100": 100, "cinic10": 10, "clothing1m": 14, "mnli": 3,
              "qqp": 2}
  for name, k in expected.items():
    cfg = _cfg(name, tokenizer="/")
    assert data.num_classes(cfg) == k and len(data.class_names(cfg)) == k
  assert data.class_names(_cfg("cifar100"))[:3] == ["apple", "aquarium_fish", "baby"]
  assert data.class_names(_cfg("clothing1m"))[-1] == "Underwear"
  embedded = data.dataset_config("digits", classes=(4, 9))
  assert data.num_classes(embedded) == 2 and data.class_names(embedded) == ["4", "9"]


def test_missing_data_one_line_errors(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  empty = str(tmp_path / "empty")
  for name, needles in [
      ("cifar10", ["cifar10", empty, "config.dataset.download=True"]),
      ("cinic10", ["cinic10", "datashare.ed.ac.uk", os.path.join(empty, "downloads", "manual"),
                   "without network"]),
      ("clothing1m", ["clothing1m", "Cysu/noisy_label", "annotations", "without network"]),
  ]:
    with pytest.raises(FileNotFoundError) as e:
      data.make_splits(_cfg(name, data_dir=empty), 0)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
  assert not os.path.exists(os.path.join(empty, "cifar10", "3.0.2", "dataset_info.json"))


# ------------------------------------------------------------------------- TFDS catalog


def test_cifar_halves_stratified_and_tfds_test(tmp_path):
  tfds, mock = fakes.mock_tfds(120)
  with mock:
    src = tfds.as_numpy(tfds.builder("cifar10").as_dataset(split="train"))
    src = list(src)
    x_src = np.stack([e["image"] for e in src])
    y_src = np.array([e["label"] for e in src])
    s = data.make_splits(_cfg("cifar10", download=True, data_dir=str(tmp_path)), seed=1)
    s2 = data.make_splits(_cfg("cifar100", download=True, label_noise=0.5), seed=1)
    s3 = data.make_splits(_cfg("cifar10", download=True, imbalance_class=7,
                               imbalance_fraction=0.05, imbalance_splits=("train",)), seed=1)
  assert s.num_classes == 10 and s.class_names[0] == "airplane"
  assert s.val is s.holdout
  counts = np.bincount(y_src, minlength=10)
  # Every class cut in half; an odd class gives its extra example to train.
  for split, want in ((s.train, (counts + 1) // 2), (s.holdout, counts // 2)):
    assert split.x.dtype == np.uint8 and split.x.shape[1:] == (32, 32, 3)
    assert split.y.dtype == np.int32 and split.index.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(split.y, minlength=10), want)
    np.testing.assert_array_equal(split.x, x_src[split.index])
    np.testing.assert_array_equal(split.y, y_src[split.index])
  assert len(s.train) + len(s.holdout) == 120
  assert not set(s.train.index) & set(s.holdout.index)
  # The mocked TFDS test split generates the same random examples as its train split.
  assert len(s.test) == 120
  np.testing.assert_array_equal(s.test.x, x_src)
  np.testing.assert_array_equal(s.test.index, np.arange(120))
  # cifar100: label noise on train only; holdout is val.
  assert s2.num_classes == 100 and len(s2.class_names) == 100 and s2.val is s2.holdout
  assert np.array_equal(s2.holdout.y, s2.holdout.y_clean)
  assert 0.3 < (s2.train.y != s2.train.y_clean).mean() < 0.7
  # §5.3 imbalance on train only: class 7 keeps round(0.05 * rest / 0.95) examples; the
  # holdout, no longer equal to an imbalanced split, stays the val split.
  m, rest = (s.train.y == 7).sum(), (s.train.y != 7).sum()
  assert (s3.train.y == 7).sum() == min(max(int(np.floor(0.05 * rest / 0.95 + 0.5)), 1), m)
  np.testing.assert_array_equal(s3.train.index[s3.train.y != 7],
                                s.train.index[s.train.y != 7])
  assert s3.val is s3.holdout


def test_mnli_pool_and_fractions(tmp_path):
  pytest.importorskip("tokenizers")
  tfds, mock = fakes.mock_tfds(100)
  with mock:
    b = tfds.builder("glue/mnli")
    ex = next(iter(tfds.as_numpy(b.as_dataset(split="train"))))
    s = data.make_splits(_cfg("mnli", download=True, tokenizer=fakes.write_vocab(tmp_path),
                              max_length=16), seed=0)
  assert s.class_names == ["entailment", "neutral", "contradiction"]
  assert (len(s.train), len(s.holdout), len(s.test)) == (150, 120, 30)  # 300 pooled pairs
  assert s.val is s.holdout
  index = np.concatenate([s.train.index, s.holdout.index, s.test.index])
  np.testing.assert_array_equal(np.sort(index), np.arange(300))
  for split in (s.train, s.holdout, s.test):
    assert split.x.dtype == np.int32 and split.x.shape[1:] == (2, 16)
    assert split.y.dtype == np.int32 and set(np.unique(split.y)) <= {0, 1, 2}
  # Row 0 of train/validation_matched/validation_mismatched (same mocked text): ids from
  # the tokenizer; [CLS] first, two [SEP], type ids 0 then 1.
  from reducr_jax.data import text
  tok = text.load_tokenizer(fakes.write_vocab(tmp_path))
  want = text.encode_pairs(tok, [ex["premise"].decode()], [ex["hypothesis"].decode()], 16)[0]
  for split in (s.train, s.holdout, s.test):
    for i in np.flatnonzero(split.index % 100 == 0):
      np.testing.assert_array_equal(split.x[i], want)
  assert want[0, 0] == 2 and (want[0] == 3).sum() == 2 and want[1].max() == 1


def test_qqp_class1_share_and_untouched_test(tmp_path):
  pytest.importorskip("tokenizers")
  _, mock = fakes.mock_tfds(400)
  with mock:
    s = data.make_splits(_cfg("qqp", download=True, tokenizer=fakes.write_vocab(tmp_path),
                              max_length=12), seed=3)
  assert s.class_names == ["not_duplicate", "duplicate"]
  pool_y = np.concatenate([s.train.y, s.holdout.y])
  n1, n0 = int((pool_y == 1).sum()), int((pool_y == 0).sum())
  assert n1 == int(np.floor(0.22 * n0 / 0.78 + 0.5))       # class 1 cut to 22 % of the pool
  assert abs(n1 / len(pool_y) - 0.22) < 2 / len(pool_y)
  assert abs(len(s.train) - len(pool_y) * 5 / 9) <= 1       # text_fractions[:2] renormalised
  assert len(s.test) == 400 and 0.35 < s.test.y.mean() < 0.65   # validation untouched
  np.testing.assert_array_equal(s.test.index, np.arange(400))
  assert not set(s.train.index) & set(s.holdout.index)
  assert s.train.x.shape[1:] == (2, 12) and s.val is s.holdout


# --------------------------------------------------------------------------- CINIC-10


def test_cinic10_builder_from_manual_dir(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from reducr_jax.data import cinic10
  manual, pixels = fakes.write_cinic10(tmp_path)
  cfg = _cfg("cinic10", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
  s = data.make_splits(cfg, seed=0)
  assert s.val is s.holdout and s.class_names == list(cinic10.CLASS_NAMES)
  for name, split in (("train", s.train), ("valid", s.holdout), ("test", s.test)):
    assert isinstance(split.x, np.ndarray) and split.x.dtype == np.uint8
    assert split.x.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(split.y, np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(split.index, np.arange(30))
    want = np.stack([pixels[name, c, j] for c in range(10) for j in range(3)])
    np.testing.assert_array_equal(split.x, want)            # lossless, sorted per class
  # Prepared once: a second call reads the prepared data, even without manual_dir.
  cfg.manual_dir = str(tmp_path / "gone")
  s2 = data.make_splits(cfg, seed=0)
  np.testing.assert_array_equal(s2.test.x, s.test.x)


# --------------------------------------------------------------------------- Clothing1M


def test_clothing1m_protocol_and_lazy_pool(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from PIL import Image
  from reducr_jax.data import clothing1m, tfds_loading
  manual, keys, clean_kv, noisy_kv, files = fakes.write_clothing1m(tmp_path)
  cfg = _cfg("clothing1m", data_dir=str(tmp_path / "data"), manual_dir=str(manual),
             clothing1m_holdout_extra=5)
  s = data.make_splits(cfg, seed=0)
  assert s.num_classes == 14 and s.class_names[0] == "T-Shirt"
  pool_keys = keys["clean_train"] + keys["clean_val"] + keys["noisy_train"]
  np.testing.assert_array_equal(
      s.train.y, [clean_kv[k] for k in keys["clean_train"] + keys["clean_val"]] +
      [noisy_kv[k] for k in keys["noisy_train"]])
  np.testing.assert_array_equal(s.train.y, s.train.y_clean)
  # index: row in clean_train ‖ clean_val ‖ clean_test ‖ noisy_train.
  np.testing.assert_array_equal(s.train.index, np.r_[0:14, 20:40])
  np.testing.assert_array_equal(s.val.index, np.arange(8, 14))
  np.testing.assert_array_equal(s.test.index, np.arange(14, 20))
  np.testing.assert_array_equal(s.val.y, [clean_kv[k] for k in keys["clean_val"]])
  np.testing.assert_array_equal(s.test.y, [clean_kv[k] for k in keys["clean_test"]])
  assert len(s.holdout) == 6 + 5
  np.testing.assert_array_equal(s.holdout.index[:6], s.val.index)
  extra = s.holdout.index[6:]
  assert set(extra) <= set(s.train.index) - set(s.val.index) and len(set(extra)) == 5
  np.testing.assert_array_equal(s.holdout.y[6:], s.train.y[np.searchsorted(s.train.index,
                                                                             extra)])
  other = data.make_splits(cfg, seed=1)
  assert not np.array_equal(other.holdout.index, s.holdout.index)

  # Lazy images: decoded on demand, rows equal the build-time preprocessing of the file.
  x = s.train.x
  assert isinstance(x, random_access.LazyArray) and x.shape == (34, 224, 224, 3)
  rows = x[np.array([3, 0, 3])]
  assert rows.dtype == np.uint8 and rows.shape == (3, 224, 224, 3)
  np.testing.assert_array_equal(rows[0], rows[2])
  np.testing.assert_array_equal(
      rows[1], tfds_loading.decode_image(clothing1m.preprocess(str(manual / pool_keys[0]))))
  src = Image.fromarray(files[pool_keys[3]]).resize((256, 256), Image.BILINEAR)
  want = np.asarray(src)[16:240, 16:240].astype(np.float64)
  assert np.abs(rows[0] - want).mean() < 3.0               # JPEG round trip of a smooth image
  np.testing.assert_array_equal(s.holdout.x[:6], s.val.x[:])
  np.testing.assert_array_equal(s.holdout.x[6:], x[np.searchsorted(s.train.index, extra)])
  batches = list(data.iterate_batches(s.test, 4))
  np.testing.assert_array_equal(np.concatenate([b[0][b[2]] for b in batches]), s.test.x[:])

  with pytest.raises(ValueError, match="config.dataset.clothing1m_holdout_extra"):
    data.make_splits(_cfg("clothing1m", data_dir=str(tmp_path / "data"),
                          clothing1m_holdout_extra=29), seed=0)
  capped = data.make_splits(_cfg("clothing1m", data_dir=str(tmp_path / "data"),
                                 clothing1m_holdout_extra=2, max_examples=4), seed=0)
  assert (len(capped.train), len(capped.holdout), len(capped.test)) == (12, 6, 4)


# --------------------------------------------------------------------------- GLUE TSV


@pytest.mark.parametrize("task", ["mnli", "qqp"])
def test_glue_tsv_and_tfds_give_the_same_splits(task, tmp_path):
  """The GLUE release's TSV files (with malformed rows) and TFDS glue/<task> holding the
  same examples give identical token arrays, labels and indices."""
  pytest.importorskip("tokenizers")
  tfds, mock = fakes.mock_tfds(40)
  vocab = fakes.write_vocab(tmp_path)
  splits = (("train", "validation_matched", "validation_mismatched") if task == "mnli"
            else ("train", "validation"))
  keys = ("premise", "hypothesis") if task == "mnli" else ("question1", "question2")
  common = dict(tokenizer=vocab, max_length=12, manual_dir=str(tmp_path / "glue_data"))
  with mock:
    b = tfds.builder(f"glue/{task}")
    rows = {s: [(e[keys[0]].decode(), e[keys[1]].decode(), int(e["label"]))
                for e in tfds.as_numpy(b.as_dataset(split=s))] for s in splits}
    from_tfds = data.make_splits(_cfg(task, download=True, glue_source="tfds", **common), 4)
  folder = fakes.write_glue(tmp_path / "glue_data", task, rows, malformed=2)
  for manual in (tmp_path / "glue_data", folder):      # the parent or the task folder
    common["manual_dir"] = str(manual)
    from_tsv = data.make_splits(_cfg(task, glue_source="auto", **common), 4)
    for name in data.SPLIT_NAMES:
      a, b = getattr(from_tfds, name), getattr(from_tsv, name)
      np.testing.assert_array_equal(a.x, b.x)
      np.testing.assert_array_equal(a.y, b.y)
      np.testing.assert_array_equal(a.index, b.index)
  assert len(from_tsv.train) > 10 and from_tsv.train.x.shape[1:] == (2, 12)


def test_glue_tsv_parsing(tmp_path):
  from reducr_jax.data import glue_tsv
  pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core import hashing
  hasher = hashing.Hasher("validation")                # TFDS's own shuffling order
  np.testing.assert_array_equal(glue_tsv.tfds_order("validation", 50),
                                sorted(range(50), key=hasher.hash_key))
  rows = [('He said "hi', "it's 'fine'\""), ("a", "b"), ("c", "d")]
  folder = fakes.write_glue(tmp_path, "mnli", {
      "train": [(a, b, y) for (a, b), y in zip(rows, (2, 0, 1))],
      "validation_matched": [("x", "y", 1)], "validation_mismatched": [("z", "w", 0)]},
                            malformed=1)
  first, second, y, index, n = glue_tsv.read_split(str(folder), "mnli", "train")
  assert sorted(zip(first, second, y.tolist())) == sorted(
      [(a, b, l) for (a, b), l in zip(rows, (2, 0, 1))])     # quotes kept verbatim
  assert n == 3 and index.tolist() == [0, 1, 2]
  qqp = fakes.write_glue(tmp_path, "qqp", {"train": [("q1", "q2", 1)] * 4,
                                           "validation": [("q", "r", 0)]}, malformed=3)
  first, _, y, _, n = glue_tsv.read_split(str(qqp), "qqp", "train", max_examples=2)
  assert n == 2 and y.tolist() == [1, 1] and first == ["q1", "q1"]
  assert glue_tsv.task_dir(str(tmp_path), "qqp") == str(qqp)
  assert glue_tsv.task_dir(str(qqp), "qqp") == str(qqp)
  assert glue_tsv.task_dir(str(tmp_path / "nowhere"), "qqp") is None
  with pytest.raises(FileNotFoundError, match="glue_source='tsv'.*QQP") as e:
    data.make_splits(_cfg("qqp", tokenizer=fakes.write_vocab(tmp_path), glue_source="tsv",
                          manual_dir=str(tmp_path / "nowhere")), 0)
  assert "\n" not in str(e.value)


def test_clothing1m_bad_images_named_or_skipped(tmp_path):
  """Every undecodable file is named in one line (nothing prepared); skip_bad_images
  leaves them out of their splits and labels and lists them in the prepared directory."""
  pytest.importorskip("tensorflow_datasets")
  from reducr_jax.core import errors
  from reducr_jax.data import clothing1m
  manual, keys, clean_kv, noisy_kv, _ = fakes.write_clothing1m(tmp_path)
  truncated = fakes.truncate_file(manual / keys["noisy_train"][3])
  garbage = manual / keys["clean_test"][0]
  garbage.write_text("not a JPEG")
  data_dir = tmp_path / "data"
  cfg = _cfg("clothing1m", data_dir=str(data_dir), manual_dir=str(manual),
             clothing1m_holdout_extra=29)
  # A holdout larger than the pool fails from the key lists, before preparing anything.
  with pytest.raises(errors.ConfigError, match="the largest value that works is 28$"):
    data.make_splits(cfg, seed=0)
  assert not data_dir.exists()
  cfg.clothing1m_holdout_extra = 3
  with pytest.raises(errors.ConfigError, match="2 image file.*skip_bad_images=True") as e:
    data.make_splits(cfg, seed=0)
  msg = str(e.value)
  assert "\n" not in msg and truncated in msg and str(garbage) in msg and "truncated" in msg
  assert not (data_dir / "clothing1m" / "1.0.0").exists()

  cfg.skip_bad_images = True
  s = data.make_splits(cfg, seed=0)
  assert (len(s.train), len(s.val), len(s.test)) == (33, 6, 5)
  np.testing.assert_array_equal(s.test.y, [clean_kv[k] for k in keys["clean_test"][1:]])
  np.testing.assert_array_equal(s.train.y[14:], [noisy_kv[k] for i, k in enumerate(
      keys["noisy_train"]) if i != 3])
  assert s.test.x[:].shape == (5, 224, 224, 3) and s.train.x[-1:].shape[0] == 1
  listed = (data_dir / "clothing1m" / "1.0.0" / "skipped_images.txt").read_text().splitlines()
  assert sorted(line.split("\t")[:2] for line in listed) == sorted(
      [["clean_test", str(garbage)], ["noisy_train", truncated]])
  assert clothing1m.split_sizes(cfg)["noisy_train"] == 19    # the prepared, skipped count


def test_embedded_holdout_per_class_says_largest_value():
  from reducr_jax.core import errors
  cfg = data.dataset_config("digits", fractions=(0.5, 0.2, 0.1, 0.2), holdout_per_class=1000)
  with pytest.raises(errors.ConfigError, match=r"the largest value that works is (\d+) ") as e:
    data.make_splits(cfg, seed=0)
  largest = int(e.value.args[0].split("works is ")[1].split()[0])
  cfg.holdout_per_class = largest
  assert len(data.make_splits(cfg, seed=0).holdout) == largest * 10

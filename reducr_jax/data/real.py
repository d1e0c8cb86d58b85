"""The REDUCR paper's real datasets as ``Splits``: CIFAR-10/100, CINIC-10, Clothing1M, MNLI, QQP.

Protocols follow the paper's App. A.5 (Bankes et al., 2024) and the official code; the
``holdout`` split trains the class-irreducible (expert) models and gives the class-holdout
loss (the paper's "validation" set), ``val`` picks checkpoints, ``test`` reports.

* ``cifar10`` / ``cifar100`` (TFDS catalog): TFDS ``train`` cut stratified by the seed into
  train / holdout (``holdout_fraction`` = 0.5: 25k / 25k; ``split_mode='official'``: even
  original indices train, odd holdout, :func:`official_cifar_rows`); ``val`` = holdout (the paper
  measures validation performance on its validation = holdout set); ``test`` = TFDS
  ``test``. ``index``: row in the TFDS split (train, or test for ``test``).
* ``cinic10`` (local builder, :mod:`reducr_jax.data.cinic10`): train = ``train``, holdout =
  val = ``valid``, test = ``test``. ``index``: row in the builder split.
  ``cinic10_relevance``: holdout = val and test keep classes 0–4 only (train all 10).
* ``clothing1m`` (local builder, :mod:`reducr_jax.data.clothing1m`): train = the "dirty"
  pool clean_train ∪ clean_val ∪ noisy_train (1,061,883 images, noisy labels on
  noisy_train); holdout = clean_val ∪ ``clothing1m_holdout_extra`` (100k) pool images drawn
  by the seed among the pool rows that are not clean_val (so they stay in train too, as
  in the official code, and the holdout has no duplicate); val = clean_val; test =
  clean_test. Images are lazy (``random_access.LazyArray``): the pool is never in memory.
  ``index``: row in the concatenation clean_train ‖ clean_val ‖ clean_test ‖ noisy_train
  of the builder splits (each cut to ``max_examples``), so one image has one index.
* ``mnli`` (GLUE ``MNLI/*.tsv`` in ``manual_dir`` or TFDS ``glue/mnli``, chosen by
  ``glue_source``, see :func:`glue_reader`; the same rows either way): pool = train ∪ validation_matched ∪ validation_mismatched
  (labelled rows; 392,702 + 9,815 + 9,832 = 412,349), a seeded random split by
  ``text_fractions`` (0.5, 0.4, 0.1) into train / holdout (= val) / test:
  206,175 / 164,939 / 41,235 (paper: 206k / 164k / 41k). ``split_mode='official'``: the
  official fixed, contiguous cut of that pool in file order (:func:`official_mnli_rows`):
  train = the first 206,174 GLUE train rows, holdout = the next 164,939, test = the rest.
  ``index``: row in the concatenation train ‖ validation_matched ‖ validation_mismatched.
* ``qqp`` (GLUE ``QQP/*.tsv`` or TFDS ``glue/qqp``, as MNLI): test = GLUE validation (40,430 pairs, class balance
  untouched); pool = GLUE train (363,846 pairs, ~37 % class 1) with class-1 pairs removed
  by the seed until class 1 is ``qqp_class1_fraction`` (0.22) of it (~294k pairs: ~229k
  class 0 + ~65k class 1), then split randomly into train / holdout (= val) by
  ``text_fractions[:2]`` renormalised (5/9, 4/9: ~163k / ~131k).
  ``split_mode='official'`` instead reproduces the official code's fixed split
  (:func:`official_qqp_rows`): GLUE train ‖ validation (404,276 pairs, file order), the
  last 40,428 are test, the first half of the class-1 pairs before them is kept and the
  rest alternates train / holdout: ≈148k / ≈148k / 40,428 with class 1 ≈ 22.6 % of train.
  That reconciles the paper's train 148k, test 40k and 22 %; its "validation 67k" is the
  official ``small_val`` option (balanced validation, ≈2 × 33.6k; not reproduced), and its
  "431k labelled pairs" matches neither (GLUE has 404,276).
  ``index``: row in the GLUE split (train, or validation for ``test``).

Text is tokenised with ``config.dataset.tokenizer`` (a local ``bert-base-uncased``
directory, ``vocab.txt`` or ``tokenizer.json``; :mod:`reducr_jax.data.text`) to
``max_length`` (128) tokens: ``x`` int32 [N, 2, L] (token ids, token type ids).
Images are uint8 [N, H, W, 3] in 0..255, unnormalised (the models normalise).

Then, on every dataset, as for the embedded ones: the §5.3 class imbalance
(``imbalance_class`` / ``imbalance_fraction`` on ``imbalance_splits``) and symmetric
``label_noise`` on ``train`` (``y_clean`` keeps the labels before noise). Each random
stage draws from its own child of ``np.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

from reducr_jax.core import checks
from reducr_jax.core import errors
from reducr_jax.data import corruption
from reducr_jax.data import random_access
from reducr_jax.data import real_specs
from reducr_jax.data import split_types
from reducr_jax.data import variants

_SPLIT_NAMES = ("train", "holdout", "val", "test")

# ----------------------------------------------------------------------------- protocols


def _cut(n: int, fractions, rng: np.random.Generator) -> list[np.ndarray]:
  """A random permutation of ``range(n)`` cut in ``fractions`` (cumulative rounding)."""
  bounds = np.floor(np.cumsum([0.0] + list(fractions)) / math.fsum(fractions) * n + 0.5)
  bounds = bounds.astype(np.int64)
  bounds[-1] = n
  perm = rng.permutation(n)
  return [perm[bounds[i]:bounds[i + 1]] for i in range(len(fractions))]


def _stratified_cut(y: np.ndarray, fractions, rng: np.random.Generator) -> list[np.ndarray]:
  """Row indices of each part: every class cut in ``fractions`` (cumulative rounding)."""
  return split_types.stratified_parts(y, fractions, rng)


def _cap(cfg) -> int:
  return int(cfg.max_examples)


def _cifar(cfg, rng: np.random.Generator) -> dict:
  from reducr_jax.data import tfds_loading  # pylint: disable=g-import-not-at-top
  name = cfg.name
  builder = tfds_loading.catalog_builder(name, cfg, name)
  train = tfds_loading.read_split(builder, "train", ("image", "label"), _cap(cfg))
  test = tfds_loading.read_split(builder, "test", ("image", "label"), _cap(cfg))
  x, y = train["image"].astype(np.uint8), train["label"].astype(np.int32)
  if cfg.split_mode == "official":
    ids = tfds_loading.read_split(builder, "train", ("id",), _cap(cfg))["id"]
    train_rows, holdout_rows = official_cifar_rows(ids)
  else:
    h = float(cfg.holdout_fraction)
    train_rows, holdout_rows = _stratified_cut(y, [1.0 - h, h], rng)
  holdout = (x[holdout_rows], y[holdout_rows], holdout_rows)
  return {"train": (x[train_rows], y[train_rows], train_rows), "holdout": holdout,
          "val": holdout,
          "test": (test["image"].astype(np.uint8), test["label"].astype(np.int32),
                   np.arange(len(test["label"])))}


def official_cifar_rows(ids) -> tuple[np.ndarray, np.ndarray]:
  """The official CIFAR train / holdout cut: even original indices train, odd holdout.

  Official ``src/datamodules/datamodules.py`` (``CIFAR10DataModule``, ``CIFAR100DataModule``):
  ``train_subset = range(0, 50000, 2)``, ``val_subset = range(1, 50000, 2)`` of the
  torchvision (= original batch file) order; the paper's validation set is our holdout.
  TFDS stores CIFAR shuffled, so the original index comes from the ``id`` feature
  (``b"train_16399"`` is original image 16399).

  Args:
    ids: [n] TFDS ``id`` values (bytes or str), ``<split>_<original index>``.

  Returns:
    ``(train_rows, holdout_rows)``: int64 rows into ``ids`` (TFDS order), each sorted by
    original index.
  """
  original = np.empty(len(ids), np.int64)
  for i, v in enumerate(ids):
    text = v.decode("utf-8") if isinstance(v, bytes) else str(v)
    tail = text.rsplit("_", 1)[-1]
    if not tail.isdigit():
      raise ValueError(f"config.dataset.split_mode='official' needs TFDS ids like "
                       f"'train_123' (the original CIFAR index), got {text!r}")
    original[i] = int(tail)
  order = np.argsort(original, kind="stable")
  even = original[order] % 2 == 0
  return order[even].astype(np.int64), order[~even].astype(np.int64)


def official_qqp_rows(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The official QQP split of the pool GLUE train ‖ GLUE validation (file order).

  Official ``src/datamodules/nlp_datamodules.py`` ``QQPDataModule.train_test_val_split``:
  with N pool rows, ``train_end = N // 2`` and ``val_end = train_end + int(N // 2.5)``;
  rows ``[val_end, N)`` are the test set; of rows ``[0, val_end)`` the class-1 rows keep
  their first half (``len // 2``, in order), followed by all class-0 rows; train = even
  positions of that list, validation (our holdout) = odd positions; then, as there,
  ``filter(idx != 1)`` drops pool row 1 from train and ``filter(idx != 0)`` pool row 0
  from validation (a quirk: at most one row each).

  On GLUE QQP (N = 363,846 + 40,430 = 404,276): test = 40,428 rows; train and holdout
  ≈ 148k each with class 1 ≈ 22.6 % (half of ≈134k duplicates over ≈297k pairs), which is
  the paper's "148k" train, "40k" test and 22 % class-1 share; the paper's "67k"
  validation matches the official ``small_val=True`` option (the validation's ≈33.6k
  duplicates plus as many non-duplicates; off by default in ``configs/datamodule/
  QQPDataModule.yaml``, not reproduced here) and also the ≈67k class-1 pairs kept.

  Args:
    y: int labels [N] of the pool in file order.

  Returns:
    ``(train, holdout, test)`` int64 positions into the pool.
  """
  y = np.asarray(y)
  n = y.size
  train_end = n // 2
  val_end = int(train_end + n // 2.5)
  head = np.arange(val_end)
  positives = head[y[head] == 1]
  kept = np.concatenate([positives[:positives.size // 2], head[y[head] == 0]])
  train, holdout = kept[::2], kept[1::2]
  return (train[train != 1].astype(np.int64), holdout[holdout != 0].astype(np.int64),
          np.arange(val_end, n, dtype=np.int64))


def _cinic10(cfg) -> dict:
  from reducr_jax.data import cinic10  # pylint: disable=g-import-not-at-top
  src = cinic10.load(cfg)

  def part(split):
    x, y = src[split]
    return x, y, np.arange(len(y))

  valid, test = part("valid"), part("test")
  if cfg.cinic10_relevance:
    valid, test = variants.relevant_rows(valid), variants.relevant_rows(test)
  return {"train": part("train"), "holdout": valid, "val": valid, "test": test}


def _check_holdout_extra(cfg, outside_clean_val: int) -> None:
  extra = int(cfg.clothing1m_holdout_extra)
  if extra > outside_clean_val:
    cap = f", each split cut to max_examples={_cap(cfg)}" if _cap(cfg) >= 0 else ""
    raise errors.ConfigError(
        f"config.dataset.clothing1m_holdout_extra={extra} exceeds the {outside_clean_val} "
        f"pool images outside clean_val (clean_train + noisy_train{cap}); the largest "
        f"value that works is {outside_clean_val}")


def _clothing1m(cfg, rng: np.random.Generator) -> dict:
  from reducr_jax.data import clothing1m  # pylint: disable=g-import-not-at-top
  sizes = clothing1m.split_sizes(cfg)     # before preparing 1M images: from the key lists
  if sizes is not None:
    _check_holdout_extra(cfg, sizes["clean_train"] + sizes["noisy_train"])
  src = clothing1m.load(cfg)
  offsets = dict(zip(clothing1m.SPLITS, np.cumsum(
      [0] + [len(src[s][1]) for s in clothing1m.SPLITS[:-1]])))

  def part(split):
    x, y = src[split]
    return x, y, offsets[split] + np.arange(len(y), dtype=np.int64)

  pool = [part(s) for s in ("clean_train", "clean_val", "noisy_train")]
  pool_x = random_access.concatenate([p[0] for p in pool])
  pool_y = np.concatenate([p[1] for p in pool])
  pool_index = np.concatenate([p[2] for p in pool])
  val = part("clean_val")
  n_ct, n_cv = len(pool[0][1]), len(pool[1][1])
  candidates = np.concatenate([np.arange(n_ct), np.arange(n_ct + n_cv, len(pool_y))])
  extra = int(cfg.clothing1m_holdout_extra)
  _check_holdout_extra(cfg, candidates.size)   # again: skip_bad_images may have cut some
  picked = np.sort(rng.choice(candidates, size=extra, replace=False))
  holdout = (random_access.concatenate([val[0], pool_x.take(picked)]),
             np.concatenate([val[1], pool_y[picked]]),
             np.concatenate([val[2], pool_index[picked]]))
  return {"train": (pool_x, pool_y, pool_index), "holdout": holdout, "val": val,
          "test": part("clean_test")}


def _read_text(builder, split: str, keys: tuple[str, str], cap: int,
               file_order: bool = False):
  """(first, second, label int32 [n], row int64 [n], rows read) of a split's labelled rows;
  ``file_order``: sorted by the ``idx`` feature (the record number in the GLUE file)."""
  from reducr_jax.data import tfds_loading  # pylint: disable=g-import-not-at-top
  d = tfds_loading.read_split(builder, split, keys + ("label",) + (
      ("idx",) if file_order else ()), cap)
  rows = np.flatnonzero(d["label"] >= 0)
  if file_order:
    rows = rows[np.argsort(d["idx"][rows], kind="stable")]
  text = [[v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in d[k][rows]]
          for k in keys]
  return (text[0], text[1], d["label"][rows].astype(np.int32), rows.astype(np.int64),
          len(d["label"]))


def glue_reader(cfg, task: str, file_order: bool = False):
  """``split -> _read_text(...)`` for GLUE ``task`` from the source
  ``config.dataset.glue_source`` picks:

  * ``'tsv'``: the GLUE release's TSV files in ``manual_dir`` (the task folder itself,
    e.g. ``glue_data/MNLI``, or its parent ``glue_data``); :mod:`reducr_jax.data.glue_tsv`;
  * ``'tfds'``: prepared TFDS ``glue/<task>`` under ``data_dir`` (or downloaded when
    ``download``);
  * ``'auto'`` (default): the TSV files when ``manual_dir`` holds them, else TFDS.

  Both give the same rows in the same order, hence the same splits for a seed.
  ``file_order``: rows in the GLUE files' record order (as Hugging Face ``datasets``,
  which the official code reads, holds them) instead of TFDS's.
  """
  from reducr_jax.data import glue_tsv  # pylint: disable=g-import-not-at-top
  from reducr_jax.data import tfds_loading  # pylint: disable=g-import-not-at-top
  source, cap = cfg.glue_source, _cap(cfg)
  root = os.path.expanduser(cfg.manual_dir or os.path.join(
      tfds_loading.data_dir(cfg), "downloads", "manual"))
  directory = glue_tsv.task_dir(root, task) if source != "tfds" else None
  if source == "tsv" and directory is None:
    raise FileNotFoundError(
        f"{task}: config.dataset.glue_source='tsv' but {root!r} holds no "
        f"{glue_tsv.expected_files(task)} (nor does {root!r} itself); point "
        f"config.dataset.manual_dir at the extracted GLUE folder (or its {task.upper()} "
        f"folder), or set config.dataset.glue_source='tfds'")
  if directory is not None:
    return lambda split: glue_tsv.read_split(directory, task, split, cap, file_order)
  builder = tfds_loading.catalog_builder(f"glue/{task}", cfg, task, hint=(
      f"or put the GLUE release's {glue_tsv.expected_files(task)} in "
      f"config.dataset.manual_dir (now {root!r})"))
  keys = ("premise", "hypothesis") if task == "mnli" else ("question1", "question2")
  return lambda split: _read_text(builder, split, keys, cap, file_order)


def _tokenize(cfg, first: list[str], second: list[str]) -> np.ndarray:
  from reducr_jax.data import text  # pylint: disable=g-import-not-at-top
  tokenizer = text.load_tokenizer(os.path.expanduser(cfg.tokenizer))
  return text.encode_pairs(tokenizer, first, second, int(cfg.max_length))


def official_mnli_rows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The official MNLI split of the pool train ‖ validation_matched ‖ validation_mismatched
  (file order): fixed and contiguous.

  Official ``src/datamodules/nlp_datamodules.py`` ``MNLIDataModule.train_test_val_split``:
  with N pool rows, train = rows ``[0, N // 2)``, validation (our holdout = val) = rows
  ``[N // 2, N // 2 + int(N // 2.5))``, test = the rest. On GLUE MNLI (N = 392,702 +
  9,815 + 9,832 = 412,349): train = the first 206,174 GLUE *train* rows, holdout = the next
  164,939 train rows, test = the last 21,589 train rows + both validation sets (41,236) —
  the paper's 206k / 164k / 41k.

  Returns:
    ``(train, holdout, test)`` int64 positions into the pool.
  """
  train_end = n // 2
  val_end = int(train_end + n // 2.5)
  return (np.arange(train_end, dtype=np.int64), np.arange(train_end, val_end, dtype=np.int64),
          np.arange(val_end, n, dtype=np.int64))


def _mnli(cfg, rng: np.random.Generator) -> dict:
  official = cfg.split_mode == "official"
  read = glue_reader(cfg, "mnli", file_order=official)
  first, second, ys, index = [], [], [], []
  offset = 0
  for split in ("train", "validation_matched", "validation_mismatched"):
    a, b, y, rows, n_read = read(split)
    first += a
    second += b
    ys.append(y)
    index.append(offset + rows)
    offset += n_read
  x = _tokenize(cfg, first, second)
  y, index = np.concatenate(ys), np.concatenate(index)
  if official:
    train, holdout, test = official_mnli_rows(len(y))
  else:
    train, holdout, test = _cut(len(y), cfg.text_fractions, rng)
  hold = (x[holdout], y[holdout], index[holdout])
  return {"train": (x[train], y[train], index[train]), "holdout": hold, "val": hold,
          "test": (x[test], y[test], index[test])}


def _qqp_official(cfg) -> dict:
  """``split_mode='official'``: :func:`official_qqp_rows` on GLUE train ‖ validation."""
  read = glue_reader(cfg, "qqp", file_order=True)
  a, b, y, rows, n_read = read("train")
  ta, tb, ty, trows, _ = read("validation")
  x = _tokenize(cfg, a + ta, b + tb)
  y, index = np.concatenate([y, ty]), np.concatenate([rows, n_read + trows])
  train, holdout, test = official_qqp_rows(y)
  hold = (x[holdout], y[holdout], index[holdout])
  return {"train": (x[train], y[train], index[train]), "holdout": hold, "val": hold,
          "test": (x[test], y[test], index[test])}


def _qqp(cfg, rng: np.random.Generator) -> dict:
  if cfg.split_mode == "official":
    return _qqp_official(cfg)
  read = glue_reader(cfg, "qqp")
  a, b, y, rows, _ = read("train")
  ta, tb, ty, trows, _ = read("validation")
  keep = np.flatnonzero(corruption.imbalance_mask(
      y, 1, float(cfg.qqp_class1_fraction), rng, 2))
  fr = cfg.text_fractions
  train, holdout = _cut(keep.size, (fr[0], fr[1]), rng)
  x = _tokenize(cfg, [a[i] for i in keep] + ta, [b[i] for i in keep] + tb)
  x_pool, x_test = x[:keep.size], x[keep.size:]
  y_pool, i_pool = y[keep], rows[keep]
  hold = (x_pool[holdout], y_pool[holdout], i_pool[holdout])
  return {"train": (x_pool[train], y_pool[train], i_pool[train]), "holdout": hold,
          "val": hold, "test": (x_test, ty, trows)}


_PROTOCOLS = {"cifar10": _cifar, "cifar100": _cifar, "cinic10": lambda cfg, rng: _cinic10(cfg),
              "clothing1m": _clothing1m, "mnli": _mnli, "qqp": _qqp}


def make_real_splits(dataset_config: ml_collections.ConfigDict, seed: int):
  """Builds the train/holdout/val/test ``Splits`` of a real dataset (module docstring).

  Args:
    dataset_config: ``config.dataset`` with ``name`` in ``real_specs.REAL_DATASETS`` and the fields
      of ``real_specs.DEFAULTS`` (missing ones take the default).
    seed: non-negative int; the result is a pure function of (config, seed, data).

  Returns:
    ``Splits``: ``x`` uint8 [n, H, W, 3] (a lazy ``random_access.LazyArray`` for
    Clothing1M) or int32 [n, 2, L] (text), ``y`` / ``y_clean`` int32 [n], ``index``
    int64 [n]. ``val`` is the same ``Split`` object as ``holdout`` where the protocol
    makes them equal and no corruption told them apart.

  Raises:
    ValueError: a bad field (one line).
    FileNotFoundError: the data is not prepared and cannot be (one line: where it
      looked and how to get it).
    ImportError: tensorflow-datasets (or ``tokenizers`` for text) is not installed.
  """
  cfg = dataset_config
  real_specs.validate_real_dataset_config(cfg)
  if not checks.is_int(seed) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  k = real_specs.NUM_CLASSES[cfg.name]
  split_ss, imb_ss, noise_ss = np.random.SeedSequence(seed).spawn(3)
  parts = _PROTOCOLS[cfg.name](cfg, np.random.default_rng(split_ss))

  imb_rngs = dict(zip(("train", "holdout", "val"),
                      (np.random.default_rng(s) for s in imb_ss.spawn(3))))
  imb_splits = cfg.imbalance_splits
  if cfg.imbalance_mode == "weighted_sampler":
    imb_splits = ()          # rows kept; batches drawn by the weighted sampler (streams.py)
  for name in imb_splits:
    x, y, index = parts[name]
    keep = corruption.imbalance_mask(y, int(cfg.imbalance_class),
                                     float(cfg.imbalance_fraction),
                                     imb_rngs[name], k)
    if not keep.all():
      rows = np.flatnonzero(keep)
      parts[name] = (random_access.take(x, rows), y[rows], index[rows])
  for name in _SPLIT_NAMES:
    if len(parts[name][1]) == 0:
      raise errors.ConfigError(f"the {name} split of {cfg.name!r} is empty; raise "
                               f"config.dataset.max_examples (now {_cap(cfg)})")

  built = {}
  for name in _SPLIT_NAMES:
    x, y, index = parts[name]
    y_seen = y
    if name == "train":
      y_seen = corruption.label_noise(y, float(cfg.label_noise), k,
                                      np.random.default_rng(noise_ss),
                                      cfg.label_noise_mode)
    if name == "val" and parts["val"] is parts["holdout"]:
      built[name] = built["holdout"]
      continue
    built[name] = split_types.Split(x=x, y=np.asarray(y_seen, np.int32),
                                   y_clean=np.asarray(y, np.int32),
                                   index=np.asarray(index, np.int64))
  return split_types.Splits(**built, num_classes=k,
                            class_names=list(real_specs.CLASS_NAMES[cfg.name]))

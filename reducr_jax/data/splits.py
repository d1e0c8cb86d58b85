"""The four splits REDUCR needs, built deterministically from an embedded dataset.

Split roles (and how they map to the REDUCR paper's names):

* ``train``: the pool the target model selects its batches from.
* ``holdout``: trains the per-class expert ("amortised") models and measures the
  per-class holdout loss. This is what the paper calls its *validation* set.
* ``val``: model selection by worst-class accuracy; never corrupted.
* ``test``: final report.

Pipeline of ``make_splits``:

1. load the source arrays (``embedded.load_arrays``);
2. stratified shuffle split: each class's rows are shuffled and cut in the proportions
   ``config.dataset.fractions`` (so every split, in particular test, has the source's
   class balance up to rounding);
3. class imbalance (``corruption.imbalance_mask``) on ``train`` and ``holdout`` only. The
   paper (section 5.3) "only artificially imbalance[s] the training and validation
   sets", and its validation set is our ``holdout``; ``val`` and ``test`` stay balanced.
   With ``imbalance_mode='weighted_sampler'`` (official) no row is dropped: the batches of
   those splits are drawn with replacement instead (:mod:`reducr_jax.data.streams`);
4. symmetric label noise on ``train`` only (``y_clean`` keeps the true labels), of
   ``label_noise_mode`` (:mod:`reducr_jax.data.corruption`);
5. standardisation of every split with the train split's per-feature mean and std.

Each stage draws from its own child of ``np.random.SeedSequence(seed)``, so e.g.
changing ``label_noise`` does not change which rows form each split.
"""

from __future__ import annotations


import ml_collections
import numpy as np

from reducr_jax.core import checks
from reducr_jax.core import errors
from reducr_jax.data import corruption
from reducr_jax.data import embedded
from reducr_jax.data import real
from reducr_jax.data import real_specs
from reducr_jax.data import variants
from reducr_jax.data.split_types import SPLIT_NAMES
from reducr_jax.data.split_types import Split
from reducr_jax.data.split_types import Splits
from reducr_jax.data.split_types import stratified_parts

_STD_EPS = 1e-6

# Every field of an embedded dataset's ``config.dataset`` (``configs/default.py`` defines
# them all, with comments) and the value :func:`dataset_config` gives it. The library reads
# the fields directly: a config that lacks one is a one-line error, not a silent default.
EMBEDDED_DEFAULTS: dict[str, object] = {
    "fractions": (0.4, 0.2, 0.2, 0.2),   # train / holdout / val / test
    "imbalance_class": -1,               # §5.3 imbalance: -1 none
    "imbalance_fraction": 1.0,
    "imbalance_splits": ("train", "holdout"),
    "label_noise": 0.0,                  # symmetric label noise on train
    "classes": (),                       # () = all; else a relabelled subset
    "holdout_per_class": -1,             # >0: a balanced holdout of n per class
    "num_samples": -1,                   # mnist1d: examples generated (-1: 5 000)
    "augment": "none",
    **variants.DEFAULTS,                 # imbalance_mode, label_noise_mode, split_mode, groups
}


def dataset_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """A complete ``config.dataset`` for dataset ``name`` (embedded: ``EMBEDDED_DEFAULTS``,
  real: ``real_specs.DEFAULTS``) with ``overrides``, for scripts and tests."""
  if name in real_specs.REAL_DATASETS:
    return real_specs.config_for(name, **overrides)
  return ml_collections.ConfigDict(dict(EMBEDDED_DEFAULTS, name=name, **overrides))


def check_fields(cfg: ml_collections.ConfigDict, fields) -> None:
  """One-line ``ValueError`` when ``config.dataset`` lacks any of ``fields``."""
  missing = sorted(f for f in fields if f not in cfg)
  if missing:
    raise ValueError(f"config.dataset lacks {missing}: a {cfg.name!r} dataset config "
                     f"defines every field (reducr_jax.data.dataset_config({cfg.name!r}) "
                     f"builds a complete one)")


def validate_dataset_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises a one-line ``ValueError`` naming the first bad ``config.dataset`` field.

  Real datasets (``real_specs.REAL_DATASETS``) are checked by
  ``real_specs.validate_real_dataset_config``; an unknown name lists every allowed name.
  """
  name = cfg.name if "name" in cfg else None
  if name in real_specs.REAL_DATASETS:
    real_specs.validate_real_dataset_config(cfg)
    return
  if name not in embedded.NUM_CLASSES:
    raise ValueError(f"config.dataset.name must be one of "
                     f"{sorted(embedded.NUM_CLASSES) + list(real_specs.REAL_DATASETS)}, "
                     f"got {name!r}")
  check_fields(cfg, EMBEDDED_DEFAULTS)
  embedded.check_num_samples(cfg.name, cfg.num_samples)
  source_k = embedded.NUM_CLASSES[cfg.name]
  classes = tuple(cfg.classes)
  if classes and (len(classes) < 2 or len(set(classes)) != len(classes) or
                  not all(checks.is_int(c) and 0 <= c < source_k for c in classes)):
    raise ValueError(f"config.dataset.classes must be () (all) or >= 2 distinct ints in "
                     f"[0, {source_k}), got {classes!r}")
  imb_splits = tuple(cfg.imbalance_splits)
  if not set(imb_splits) <= {"train", "holdout", "val"}:
    raise ValueError("config.dataset.imbalance_splits must be a subset of "
                     f"('train', 'holdout', 'val'), got {imb_splits!r}")
  per_class = cfg.holdout_per_class
  if not checks.is_int(per_class) or not (per_class == -1 or per_class >= 1):
    raise ValueError(f"config.dataset.holdout_per_class must be -1 (use fractions) or an "
                     f"int >= 1, got {per_class!r}")
  checks.check_fractions("config.dataset.fractions", cfg.fractions,
                         ("train", "holdout", "val", "test"))
  k = len(classes) or source_k
  if not checks.is_int(cfg.imbalance_class) or not -1 <= cfg.imbalance_class < k:
    raise ValueError(f"config.dataset.imbalance_class must be -1 (none) or an int in "
                     f"[0, {k}), got {cfg.imbalance_class!r}")
  if not checks.is_real(cfg.imbalance_fraction) or not 0 < cfg.imbalance_fraction <= 1:
    raise ValueError(f"config.dataset.imbalance_fraction must be in (0, 1], "
                     f"got {cfg.imbalance_fraction!r}")
  if not checks.is_real(cfg.label_noise) or not 0 <= cfg.label_noise < 1:
    raise ValueError(f"config.dataset.label_noise must be in [0, 1), got {cfg.label_noise!r}")
  variants.validate_variants(cfg, k)


def num_classes(dataset_config: ml_collections.ConfigDict) -> int:
  """Classes of the splits ``make_splits(dataset_config, ...)`` builds, without reading data."""
  validate_dataset_config(dataset_config)
  if dataset_config.name in real_specs.REAL_DATASETS:
    return real_specs.NUM_CLASSES[dataset_config.name]
  return len(tuple(dataset_config.classes)) or embedded.NUM_CLASSES[
      dataset_config.name]


def class_names(dataset_config: ml_collections.ConfigDict) -> list[str]:
  """Class names of the splits ``make_splits(dataset_config, ...)`` builds, without reading data."""
  validate_dataset_config(dataset_config)
  if dataset_config.name in real_specs.REAL_DATASETS:
    return list(real_specs.CLASS_NAMES[dataset_config.name])
  names = embedded.CLASS_NAMES[dataset_config.name]
  classes = tuple(dataset_config.classes)
  return [names[c] for c in classes] if classes else list(names)


def make_splits(dataset_config: ml_collections.ConfigDict, seed: int) -> Splits:
  """Builds the train/holdout/val/test splits (see the module docstring).

  Args:
    dataset_config: ``config.dataset`` with ``name`` (str), ``fractions`` (4 floats for
      train/holdout/val/test, > 0, summing to 1), ``imbalance_class`` (int, -1 none),
      ``imbalance_fraction`` (float in (0, 1]) and ``label_noise`` (float in [0, 1)).
    seed: non-negative int; the result is a pure function of (config, seed).

  Returns:
    ``Splits``; every example of the source is in exactly one split, except those that
    the imbalance removed from train/holdout. For a name in ``real_specs.REAL_DATASETS``
    (CIFAR-10/100, CINIC-10, Clothing1M, MNLI, QQP) the paper's protocol of
    ``real.make_real_splits`` instead.
  """
  cfg = dataset_config
  validate_dataset_config(cfg)
  if not checks.is_int(seed) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  if cfg.name in real_specs.REAL_DATASETS:
    return real.make_real_splits(cfg, seed)
  x, y = embedded.load_arrays(cfg.name, seed, cfg.num_samples)
  source_rows = np.arange(len(y))
  class_names = list(embedded.CLASS_NAMES[cfg.name])
  classes = tuple(cfg.classes)
  if classes:                         # keep a subset of classes, relabelled 0..len-1
    source_rows = np.flatnonzero(np.isin(y, classes))
    relabel = np.full(embedded.NUM_CLASSES[cfg.name], -1, np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    x, y = x[source_rows], relabel[y[source_rows]]
    class_names = [class_names[c] for c in classes]
  k = len(class_names)
  split_ss, imb_train_ss, imb_holdout_ss, noise_ss = np.random.SeedSequence(seed).spawn(4)

  parts = dict(zip(SPLIT_NAMES, stratified_parts(
      y, [float(f) for f in cfg.fractions], np.random.default_rng(split_ss))))
  imb_splits = tuple(cfg.imbalance_splits)
  imb_rngs = {"train": imb_train_ss, "holdout": imb_holdout_ss,
              "val": np.random.SeedSequence([seed, 3])}
  if cfg.imbalance_mode == "weighted_sampler":
    imb_splits = ()                   # rows kept; batches drawn by the weighted sampler
  for name in imb_splits:
    keep = corruption.imbalance_mask(y[parts[name]], cfg.imbalance_class,
                                     cfg.imbalance_fraction,
                                     np.random.default_rng(imb_rngs[name]), k)
    parts[name] = parts[name][keep]
  per_class = cfg.holdout_per_class
  if per_class > 0:                   # a small, balanced, clean holdout (Ren et al.)
    rows = parts["holdout"]
    picked = [rows[y[rows] == c][:per_class] for c in range(k)]
    fewest = min(range(k), key=lambda c: len(picked[c]))
    if len(picked[fewest]) < per_class:
      n = len(picked[fewest])
      largest = (f"the largest value that works is {n}" if n else
                 "no value works")
      raise errors.ConfigError(
          f"config.dataset.holdout_per_class={per_class} exceeds the {n} holdout examples "
          f"of class {class_names[fewest]!r}; {largest} (or raise config.dataset.fractions[1])")
    parts["holdout"] = np.sort(np.concatenate(picked))
  for name, rows in parts.items():
    if rows.size == 0:
      raise errors.ConfigError(f"config.dataset.fractions {tuple(cfg.fractions)!r} leave the "
                       f"{name} split of {cfg.name!r} empty")

  labels = {name: (y[rows], y[rows]) for name, rows in parts.items()}
  y_noisy = corruption.label_noise(labels["train"][1], cfg.label_noise, k,
                                   np.random.default_rng(noise_ss),
                                   cfg.label_noise_mode)
  labels["train"] = (y_noisy, labels["train"][1])

  x_train = x[parts["train"]].astype(np.float64)
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  # A feature (near-)constant on train is only centred: dividing by a floored std
  # would blow up the rare test examples where it is non-zero (digits has such pixels).
  std = np.where(std < _STD_EPS, 1.0, std)

  def build(name: str) -> Split:
    rows = parts[name]
    xs = ((x[rows] - mean) / std).astype(np.float32)
    y_seen, y_clean = labels[name]
    return Split(x=xs, y=y_seen.astype(np.int32), y_clean=y_clean.astype(np.int32),
                 index=source_rows[rows].astype(np.int64))

  return Splits(**{name: build(name) for name in SPLIT_NAMES}, num_classes=k,
                class_names=class_names)

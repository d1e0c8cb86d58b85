"""What each of the paper's real datasets is, known without reading any data: names, classes,
image shapes, the ``config.dataset`` fields with their defaults, and their validation.

A light module (no JAX, no TFDS): configs and config validation read it;
:mod:`reducr_jax.data.real` loads the datasets themselves.
"""

from __future__ import annotations

import os

import ml_collections

from reducr_jax.core import checks
from reducr_jax.data import variants

REAL_DATASETS = ("cifar10", "cifar100", "cinic10", "clothing1m", "mnli", "qqp")
TEXT_DATASETS = ("mnli", "qqp")

_CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
    "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster "
    "house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel "
    "streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()

# The TFDS label names (CIFAR's batches.meta / fine_label_names, GLUE's ClassLabel), and
# the official class lists of CINIC-10 and Clothing1M; known without reading any data.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
    "cifar100": tuple(_CIFAR100_NAMES),
    "cinic10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
    "clothing1m": ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie",
                   "Windbreaker", "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest",
                   "Underwear"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qqp": ("not_duplicate", "duplicate"),
}
NUM_CLASSES: dict[str, int] = {k: len(v) for k, v in CLASS_NAMES.items()}
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "cinic10": (32, 32, 3),
    "clothing1m": (224, 224, 3)}

# config.dataset fields of the real datasets and their defaults (a missing field takes it).
DEFAULTS: dict[str, object] = {
    "data_dir": "",                  # '' = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    "manual_dir": "",                # '' = <data_dir>/downloads/manual (CINIC-10, Clothing1M)
    "download": False,               # False: never touch the network
    "holdout_fraction": 0.5,         # CIFAR: share of TFDS train that becomes holdout (= val)
    "imbalance_class": -1,           # §5.3 imbalance: -1 none
    "imbalance_fraction": 1.0,
    "imbalance_splits": ("train", "holdout"),
    "label_noise": 0.0,              # symmetric label noise on train
    "clothing1m_holdout_extra": 100_000,
    "text_fractions": (0.5, 0.4, 0.1),  # MNLI train / holdout (= val) / test; QQP uses [:2]
    "qqp_class1_fraction": 0.22,
    "tokenizer": "",                 # MNLI/QQP: bert-base-uncased dir, vocab.txt or tokenizer.json
    "max_length": 128,
    "max_examples": -1,              # -1 = all; else first n rows of each source split
    "glue_source": "auto",           # MNLI/QQP: 'tsv' (GLUE files), 'tfds', 'auto' (see below)
    "skip_bad_images": False,        # CINIC-10/Clothing1M preparation: skip undecodable files
    "cinic10_relevance": False,      # official CINIC10RelevanceDataModule (variants.py)
    **variants.DEFAULTS,             # imbalance_mode, label_noise_mode, split_mode, groups
}
GLUE_SOURCES = ("auto", "tsv", "tfds")
_MAX_BERT_LENGTH = 512


def config_for(name: str, **overrides) -> ml_collections.ConfigDict:
  """A complete ``config.dataset`` for real dataset ``name`` (``DEFAULTS`` + overrides)."""
  check_real_name(name)
  return ml_collections.ConfigDict(dict(DEFAULTS, name=name, **overrides))


def check_real_name(name) -> None:
  """Raises a one-line ``ValueError`` unless ``name`` is one of ``REAL_DATASETS``."""
  if name not in REAL_DATASETS:
    raise ValueError(f"config.dataset.name must be one of {list(REAL_DATASETS)}, got {name!r}")




def validate_real_dataset_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises a one-line ``ValueError`` naming the first bad ``config.dataset`` field.

  Fields and allowed values are those of ``DEFAULTS`` (every one must be present:
  :func:`default_config` builds a complete config);
  the embedded datasets' ``classes`` / ``holdout_per_class`` must be unset or off, and
  MNLI/QQP need ``tokenizer`` pointing at an existing file or directory.
  """
  name = cfg.name if "name" in cfg else None
  check_real_name(name)
  missing = sorted(f for f in DEFAULTS if f not in cfg)
  if missing:
    raise ValueError(f"config.dataset lacks {missing}: a {name!r} dataset config defines "
                     f"every field (reducr_jax.data.dataset_config({name!r}) builds a "
                     f"complete one)")
  k = NUM_CLASSES[name]
  for field in ("data_dir", "manual_dir", "tokenizer"):
    if not isinstance(cfg[field], str):
      raise ValueError(f"config.dataset.{field} must be a str path ('' for the default), "
                       f"got {cfg[field]!r}")
  if not isinstance(cfg.download, bool):
    raise ValueError(f"config.dataset.download must be True or False, "
                     f"got {cfg.download!r}")
  h = cfg.holdout_fraction
  if not checks.is_real(h) or not 0 < h < 1:
    raise ValueError(f"config.dataset.holdout_fraction must be in (0, 1), got {h!r}")
  ic = cfg.imbalance_class
  if not checks.is_int(ic) or not -1 <= ic < k:
    raise ValueError(f"config.dataset.imbalance_class must be -1 (none) or an int in "
                     f"[0, {k}), got {ic!r}")
  f = cfg.imbalance_fraction
  if not checks.is_real(f) or not 0 < f <= 1:
    raise ValueError(f"config.dataset.imbalance_fraction must be in (0, 1], got {f!r}")
  imb = cfg.imbalance_splits
  if not isinstance(imb, (tuple, list)) or not set(imb) <= {"train", "holdout", "val"}:
    raise ValueError("config.dataset.imbalance_splits must be a subset of "
                     f"('train', 'holdout', 'val'), got {imb!r}")
  noise = cfg.label_noise
  if not checks.is_real(noise) or not 0 <= noise < 1:
    raise ValueError(f"config.dataset.label_noise must be in [0, 1), got {noise!r}")
  extra = cfg.clothing1m_holdout_extra
  if not checks.is_int(extra) or extra < 0:
    raise ValueError(f"config.dataset.clothing1m_holdout_extra must be an int >= 0, "
                     f"got {extra!r}")
  checks.check_fractions("config.dataset.text_fractions", cfg.text_fractions,
                         ("train", "holdout", "test"))
  q = cfg.qqp_class1_fraction
  if not checks.is_real(q) or not 0 < q < 1:
    raise ValueError(f"config.dataset.qqp_class1_fraction must be in (0, 1), got {q!r}")
  length = cfg.max_length
  if not checks.is_int(length) or not 3 <= length <= _MAX_BERT_LENGTH:
    raise ValueError(f"config.dataset.max_length must be an int in [3, {_MAX_BERT_LENGTH}], "
                     f"got {length!r}")
  cap = cfg.max_examples
  if not checks.is_int(cap) or not (cap == -1 or cap >= 1):
    raise ValueError(f"config.dataset.max_examples must be -1 (all) or an int >= 1, "
                     f"got {cap!r}")
  if cfg.glue_source not in GLUE_SOURCES:
    raise ValueError(f"config.dataset.glue_source must be one of {list(GLUE_SOURCES)}, "
                     f"got {cfg.glue_source!r}")
  if not isinstance(cfg.skip_bad_images, bool):
    raise ValueError(f"config.dataset.skip_bad_images must be True or False, "
                     f"got {cfg.skip_bad_images!r}")
  if "classes" in cfg and tuple(cfg.classes):        # embedded-only fields: absent or off
    raise ValueError(f"config.dataset.classes must be () for {name!r} (class subsets are "
                     f"only supported for the embedded datasets), got {tuple(cfg.classes)!r}")
  if "holdout_per_class" in cfg and cfg.holdout_per_class != -1:
    raise ValueError(f"config.dataset.holdout_per_class must be -1 for {name!r} (only "
                     f"supported for the embedded datasets), got {cfg.holdout_per_class!r}")
  variants.validate_variants(cfg, k)
  if name in TEXT_DATASETS:
    tok = cfg.tokenizer
    if not tok or not os.path.exists(os.path.expanduser(tok)):
      raise ValueError(f"config.dataset.tokenizer must name a local bert-base-uncased "
                       f"directory, vocab.txt or tokenizer.json for {name!r}, got {tok!r}")

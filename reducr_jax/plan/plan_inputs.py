"""The data a plan needs without the data: split sizes, input shapes and decode rates.

The paper's datasets are not read (they need not be on disk): their split sizes under the
default protocol (:mod:`reducr_jax.data.real`, from the releases' known sizes) and input
shapes are tabled here, and :func:`abstract_splits` builds :class:`reducr_jax.data.Splits`
whose ``x`` is a zero-strided view (``np.broadcast_to``: no memory) of the right shape and
dtype, with balanced labels, so the trainer's own batch code (``data.train_batch``) makes
the planned programs' arguments. The embedded datasets (``digits``, ``mnist1d``) are
generated as in a run (a second or two).

Decode rates: host images/s one core decodes and augments for the trainer, as measured by
``benchmarks/pipeline.py`` (``benchmarks/README.md``): Clothing1M's 224×224 JPEGs decode
at ≈ 700 images/s per core (PIL with libjpeg-turbo, 1.44 ms per image). CIFAR, CINIC-10
(32×32) and the tokenised text sets are held in memory as arrays: a batch is a gather, no
decode (``None``: not a limit at any rate a chip consumes).
"""

from __future__ import annotations

import numpy as np

from reducr_jax import data
from reducr_jax.data import real_specs
from reducr_jax.data import split_types

# (train, holdout, val, test) rows under the default protocol; val = holdout except for
# Clothing1M. CIFAR: TFDS train 50k cut in halves, test 10k; CINIC-10: 90k per split;
# Clothing1M: the dirty pool 1,061,883, holdout = clean val 14,313 + 100k pool images,
# clean test 10,526; MNLI: 412,349 labelled rows cut 0.5 / 0.4 / 0.1; QQP: GLUE train
# 363,846 with class-1 pairs dropped to 22 % (~294k), cut 5/9 : 4/9, test = GLUE val.
SPLIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (25_000, 25_000, 25_000, 10_000),
    "cifar100": (25_000, 25_000, 25_000, 10_000),
    "cinic10": (90_000, 90_000, 90_000, 90_000),
    "clothing1m": (1_061_883, 114_313, 14_313, 10_526),
    "mnli": (206_175, 164_939, 164_939, 41_235),
    "qqp": (163_439, 130_751, 130_751, 40_430),
}
# Host images (or texts) per second one core prepares, measured (see the docstring).
DECODE_PER_CORE: dict[str, float | None] = {
    "clothing1m": 700.0, "cifar10": None, "cifar100": None, "cinic10": None, "mnli": None,
    "qqp": None}
DECODE_SOURCE = ("benchmarks/pipeline.py, benchmarks/README.md 'Input pipeline': PIL "
                 "decodes a stored 224x224 Clothing1M JPEG in 1.44 ms (~700 images/s per core)")


def input_shape(dataset) -> tuple[tuple[int, ...], np.dtype]:
  """``(shape of one example, dtype)`` of a real dataset's ``x``."""
  if dataset.name in real_specs.TEXT_DATASETS:
    return (2, int(dataset.get("max_length", 128))), np.dtype(np.int32)
  return real_specs.IMAGE_SHAPES[dataset.name], np.dtype(np.uint8)


def _abstract_split(n: int, shape, dtype, num_classes: int) -> split_types.Split:
  y = (np.arange(n) % num_classes).astype(np.int32)
  return split_types.Split(x=np.broadcast_to(np.zeros((1,) + tuple(shape), dtype),
                                             (n,) + tuple(shape)),
                           y=y, y_clean=y, index=np.arange(n))


def abstract_splits(config) -> data.Splits:
  """Splits with the run's sizes, shapes and dtypes and no data (see the module
  docstring); the embedded datasets are generated as in a run."""
  name = config.dataset.name
  if name not in real_specs.REAL_DATASETS:
    return data.make_splits(config.dataset, config.seed)
  max_examples = int(config.dataset.get("max_examples", -1))
  sizes = SPLIT_SIZES[name]
  if max_examples > 0:
    sizes = tuple(min(s, max_examples) for s in sizes)
  shape, dtype = input_shape(config.dataset)
  c = real_specs.NUM_CLASSES[name]
  parts = [_abstract_split(s, shape, dtype, c) for s in sizes]
  if sizes[1] == sizes[2] and name != "clothing1m":
    parts[2] = parts[1]                     # val is the holdout
  return data.Splits(*parts, num_classes=c, class_names=list(real_specs.CLASS_NAMES[name]))


def decode_per_core(config) -> float | None:
  """Examples/s one host core prepares for this dataset (``None``: in memory, no decode)."""
  return DECODE_PER_CORE.get(config.dataset.name)

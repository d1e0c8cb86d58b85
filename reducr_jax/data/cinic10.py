"""CINIC-10 (Darlow et al., 2018, https://arxiv.org/abs/1810.03505) as a local TFDS builder.

CINIC-10 is not in the TFDS catalog. The official archive ``CINIC-10.tar.gz``
(https://datashare.ed.ac.uk/handle/10283/3192) extracts to ``train/``, ``valid/`` and
``test/``, each with ten class folders (``airplane`` ... ``truck``) of 32x32 PNGs, 90,000
images per split. :func:`builder` prepares them once from ``manual_dir`` (no network) into
``<data_dir>/cinic10/1.0.0`` as ``array_record``:

* features: ``image`` uint8 [32, 32, 3] (PNG, lossless; grayscale files become RGB),
  ``label`` (class folder), ``filename`` (``<split>/<class>/<file>``);
* rows in a fixed order: classes in ``CLASS_NAMES`` order, files sorted by name within a
  class (``disable_shuffling``), so row i of a split is file i of that listing;
* labels also stored in the builder's ``metadata.json`` (read without decoding images).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from reducr_jax.data import tfds_loading

NAME = "cinic10"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")
SPLITS = ("train", "valid", "test")
IMAGE_SHAPE = (32, 32, 3)
VERSION = "1.0.0"
DOWNLOAD_HINT = ("download CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 "
                 "and extract it so that <manual_dir>/train, valid and test hold the ten class "
                 "folders (config.dataset.manual_dir, default <data_dir>/downloads/manual); the "
                 "builder then prepares it from there without network")


def list_files(manual: str, split: str) -> tuple[list[str], list[int]]:
  """Relative PNG paths (``<class>/<file>``) and labels of ``split``, in row order."""
  files, labels = [], []
  for label, cls in enumerate(CLASS_NAMES):
    folder = os.path.join(manual, split, cls)
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png"))
    files += [f"{cls}/{f}" for f in names]
    labels += [label] * len(names)
  return files, labels


def missing(manual: str) -> str | None:
  """What is missing from ``manual`` for CINIC-10, or ``None`` when it is complete."""
  for split in SPLITS:
    for cls in CLASS_NAMES:
      if not os.path.isdir(os.path.join(manual, split, cls)):
        return f"no folder {os.path.join(manual, split, cls)!r}"
  return None


def _load_png(path: str) -> np.ndarray:
  """uint8 [32, 32, 3] of a CINIC-10 PNG (grayscale / palette files converted to RGB)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
  if arr.shape != IMAGE_SHAPE:
    raise ValueError(f"CINIC-10 image {path!r} has shape {arr.shape}, expected {IMAGE_SHAPE}")
  return arr


@functools.lru_cache(maxsize=None)
def builder_class():
  """The ``tfds.core.GeneratorBasedBuilder`` subclass (defined once, not registered)."""
  def list_splits(manual):
    out = {}
    for split in SPLITS:
      files, labels = list_files(manual, split)
      out[split] = ([os.path.join(split, f) for f in files], labels)
    return out
  return tfds_loading.manual_image_builder(
      "Cinic10", __name__, version=VERSION, instructions=DOWNLOAD_HINT,
      homepage="https://github.com/BayesWatch/cinic-10", image_shape=IMAGE_SHAPE,
      encoding_format="png", class_names=CLASS_NAMES, id_feature="filename",
      list_splits=list_splits, load=_load_png)


def builder(cfg):
  """The prepared CINIC-10 builder; prepares it from ``manual_dir`` first if needed.

  Raises:
    FileNotFoundError: (one line) neither prepared data nor the official files.
  """
  return tfds_loading.prepared_manual_builder(cfg, NAME, builder_class(), missing,
                                              DOWNLOAD_HINT)


def load(cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every split as ``(x uint8 [n, 32, 32, 3], y int32 [n])``, rows in builder order.

  ``config.dataset.max_examples`` (-1 = all) keeps the first rows of each split. Images
  are decoded by the thread pool (90,000 x 3 kB = 276 MB a split).
  """
  b = builder(cfg)
  cap = int(cfg.max_examples)
  out = {}
  for split in SPLITS:
    y = tfds_loading.metadata_labels(b, split)
    n = len(y) if cap < 0 else min(cap, len(y))
    x = np.asarray(tfds_loading.lazy_images(b, split, IMAGE_SHAPE, num_rows=n))
    out[split] = (x, y[:n])
  return out

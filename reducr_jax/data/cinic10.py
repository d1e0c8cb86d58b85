"""CINIC-10 (Darlow et al., 2018, https://arxiv.org/abs/1810.03505) as a local TFDS builder.

CINIC-10 is not in the TFDS catalog. The official archive ``CINIC-10.tar.gz``
(https://datashare.ed.ac.uk/handle/10283/3192) extracts to ``train/``, ``valid/`` and
``test/``, each with ten class folders (``airplane`` ... ``truck``) of 32x32 PNGs, 90,000
images per split. :func:`builder` prepares them once from ``manual_dir`` (no network) into
``<data_dir>/cinic10/1.0.0`` as ``array_record``:

* features: ``image`` uint8 [32, 32, 3] (PNG, lossless; grayscale files become RGB),
  ``label`` (class folder), ``filename`` (``<class>/<file>``);
* rows in a fixed order: classes in ``CLASS_NAMES`` order, files sorted by name within a
  class (``disable_shuffling``), so row i of a split is file i of that listing;
* labels also stored in the builder's ``metadata.json`` (read without decoding images).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import numpy as np

from reducr_jax.data import random_access
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
  tfds = tfds_loading.import_tfds()

  with tfds.core.registered.skip_registration():

    class Cinic10(tfds.core.GeneratorBasedBuilder):
      """CINIC-10 from the official folders in ``manual_dir``."""
      VERSION = tfds.core.Version(VERSION)
      MANUAL_DOWNLOAD_INSTRUCTIONS = DOWNLOAD_HINT

      def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="png"),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/BayesWatch/cinic-10",
        )

      def _split_generators(self, dl_manager):
        manual = str(dl_manager.manual_dir)
        gens, labels = {}, {}
        for split in SPLITS:
          files, labels[split] = list_files(manual, split)
          gens[split] = self._generate_examples(manual, split, files, labels[split])
        self.info.metadata["labels"] = labels
        return gens

      def _generate_examples(self, manual, split, files, labels):
        paths = [os.path.join(manual, split, f) for f in files]
        with concurrent.futures.ThreadPoolExecutor(
            random_access.default_num_threads()) as pool:
          for i, img in enumerate(pool.map(_load_png, paths, chunksize=64)):
            yield i, {"image": img, "label": labels[i], "filename": files[i]}

  return Cinic10


def builder(cfg):
  """The prepared CINIC-10 builder; prepares it from ``manual_dir`` first if needed.

  Raises:
    FileNotFoundError: (one line) neither prepared data nor the extracted archive.
  """
  tfds_loading.import_tfds()
  root = tfds_loading.data_dir(cfg)
  b = builder_class()(data_dir=root)
  if not b.is_prepared():
    manual = tfds_loading.manual_dir(cfg, NAME)
    problem = missing(manual)
    if problem:
      raise FileNotFoundError(f"cinic10: no prepared data under {root!r} and {problem}; "
                              f"{DOWNLOAD_HINT}")
    tfds_loading.prepare_from_manual(b, manual)
  return b


def load(cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every split as ``(x uint8 [n, 32, 32, 3], y int32 [n])``, rows in builder order.

  ``config.dataset.max_examples`` (-1 = all) keeps the first rows of each split. Images
  are decoded by the thread pool (90,000 x 3 kB = 276 MB a split).
  """
  b = builder(cfg)
  cap = int(cfg.get("max_examples", -1))
  out = {}
  for split in SPLITS:
    y = tfds_loading.metadata_labels(b, split)
    n = len(y) if cap < 0 else min(cap, len(y))
    x = np.asarray(tfds_loading.lazy_images(b, split, IMAGE_SHAPE, num_rows=n))
    out[split] = (x, y[:n])
  return out

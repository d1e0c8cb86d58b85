"""Clothing1M (Xiao et al., CVPR 2015) as a local TFDS builder read by random access.

Clothing1M is distributed on request by its authors (https://github.com/Cysu/noisy_label),
not by TFDS. Extracted, its root (``manual_dir``) holds

* ``images/``: the ten archives ``0.tar`` ... ``9.tar`` extracted (``images/3/12/x.jpg``);
* ``annotations/``: ``clean_label_kv.txt`` and ``noisy_label_kv.txt`` (lines
  ``<image path> <label 0-13>``) and the key lists ``clean_train_key_list.txt``,
  ``clean_val_key_list.txt``, ``clean_test_key_list.txt``, ``noisy_train_key_list.txt``
  (one image path a line). A top-level layout with the annotation files next to
  ``images/`` is accepted too.

:func:`builder` prepares it once (no network) into ``<data_dir>/clothing1m/1.0.0`` as
``array_record`` with splits ``clean_train`` / ``clean_val`` / ``clean_test`` (clean labels,
47,570 / 14,313 / 10,526 images) and ``noisy_train`` (noisy labels, 1,000,000 images):

* preprocessing at build time (the REDUCR / official setup): RGB, resize to 256x256
  (bilinear), centre crop 224x224, stored as JPEG (quality ``JPEG_QUALITY``), so a row
  decodes to uint8 [224, 224, 3]; random flips and normalisation happen in training;
* rows in key-list order (``disable_shuffling``): row i of a split is line i of its key
  list; features ``image``, ``label``, ``path``;
* labels also stored in the builder's ``metadata.json``, so the 1M labels are read
  without touching an image record;
* a file that cannot be decoded (public mirrors have a few truncated JPEGs) stops the
  preparation with one line naming every such file; with
  ``config.dataset.skip_bad_images=True`` it is left out of its split instead (so row i
  is then the i-th *decodable* file of the key list) and listed in
  ``<data_dir>/clothing1m/1.0.0/skipped_images.txt``.

:func:`load` returns each split's images as a lazy random-access array (decoded only for
the rows asked for), never the pool in memory.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

from reducr_jax.data import random_access
from reducr_jax.data import tfds_loading

NAME = "clothing1m"
CLASS_NAMES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
               "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear")
SPLITS = ("clean_train", "clean_val", "clean_test", "noisy_train")
RESIZE = 256
CROP = 224
IMAGE_SHAPE = (CROP, CROP, 3)
JPEG_QUALITY = 90
VERSION = "1.0.0"
KV_FILES = {"clean": "clean_label_kv.txt", "noisy": "noisy_label_kv.txt"}
DOWNLOAD_HINT = ("request Clothing1M from its authors (https://github.com/Cysu/noisy_label), "
                 "extract images/0.tar ... 9.tar into <manual_dir>/images and the annotation "
                 "files (clean_label_kv.txt, noisy_label_kv.txt, clean_{train,val,test}_key_list"
                 ".txt, noisy_train_key_list.txt) into <manual_dir>/annotations "
                 "(config.dataset.manual_dir, default <data_dir>/downloads/manual); the builder "
                 "then prepares it from there without network")


def _annotation_dir(manual: str) -> str:
  sub = os.path.join(manual, "annotations")
  return sub if os.path.isdir(sub) else manual


def _key_list_file(split: str) -> str:
  return f"{split}_key_list.txt"


def missing(manual: str) -> str | None:
  """What is missing from ``manual`` for Clothing1M, or ``None`` when it is complete."""
  if not os.path.isdir(os.path.join(manual, "images")):
    return f"no folder {os.path.join(manual, 'images')!r}"
  ann = _annotation_dir(manual)
  for f in list(KV_FILES.values()) + [_key_list_file(s) for s in SPLITS]:
    if not os.path.isfile(os.path.join(ann, f)):
      return f"no file {os.path.join(ann, f)!r}"
  return None


def _read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def _read_kv(path: str) -> dict[str, int]:
  kv = {}
  for line in _read_lines(path):
    key, label = line.rsplit(None, 1)
    kv[key] = int(label)
  return kv


def read_annotations(manual: str) -> dict[str, tuple[list[str], list[int]]]:
  """``{split: (image paths, labels)}`` in key-list order; clean labels for the clean
  splits, noisy labels for ``noisy_train``.

  Raises:
    ValueError: (one line) a key without a label, or a label outside [0, 14).
  """
  ann = _annotation_dir(manual)
  kv = {kind: _read_kv(os.path.join(ann, f)) for kind, f in KV_FILES.items()}
  out = {}
  for split in SPLITS:
    table = kv["noisy" if split.startswith("noisy") else "clean"]
    keys = _read_lines(os.path.join(ann, _key_list_file(split)))
    absent = [k for k in keys if k not in table]
    if absent:
      raise ValueError(f"clothing1m: {len(absent)} keys of {_key_list_file(split)} have no "
                       f"label in {KV_FILES['noisy' if split.startswith('noisy') else 'clean']}"
                       f", e.g. {absent[0]!r}")
    labels = [table[k] for k in keys]
    bad = [v for v in labels if not 0 <= v < len(CLASS_NAMES)]
    if bad:
      raise ValueError(f"clothing1m: label {bad[0]} in {split} is outside "
                       f"[0, {len(CLASS_NAMES)})")
    out[split] = (keys, labels)
  return out


def preprocess(path: str) -> bytes:
  """One Clothing1M image file -> JPEG bytes of RGB, resized to 256x256, centre 224x224."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    img = img.convert("RGB").resize((RESIZE, RESIZE), Image.BILINEAR)
  off = (RESIZE - CROP) // 2
  img = img.crop((off, off, off + CROP, off + CROP))
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=JPEG_QUALITY)
  return buf.getvalue()


@functools.lru_cache(maxsize=None)
def builder_class():
  """The ``tfds.core.GeneratorBasedBuilder`` subclass (defined once, not registered)."""
  return tfds_loading.manual_image_builder(
      "Clothing1m", __name__, version=VERSION, instructions=DOWNLOAD_HINT,
      homepage="https://github.com/Cysu/noisy_label", image_shape=IMAGE_SHAPE,
      encoding_format="jpeg", class_names=CLASS_NAMES, id_feature="path",
      list_splits=read_annotations, load=preprocess)


def builder(cfg):
  """The prepared Clothing1M builder; prepares it from ``manual_dir`` first if needed.

  Raises:
    FileNotFoundError: (one line) neither prepared data nor the official files.
  """
  return tfds_loading.prepared_manual_builder(cfg, NAME, builder_class(), missing,
                                              DOWNLOAD_HINT)


def split_sizes(cfg) -> dict[str, int] | None:
  """Rows of every split, known without preparing anything: the prepared builder's stored
  labels, else the line counts of the key lists in ``manual_dir`` (each cut to
  ``config.dataset.max_examples``); ``None`` when neither exists. Preparation with
  ``skip_bad_images`` may leave fewer rows than the key lists name."""
  b = builder_class()(data_dir=tfds_loading.data_dir(cfg))
  cap = int(cfg.max_examples)
  if b.is_prepared():
    sizes = {s: len(tfds_loading.metadata_labels(b, s)) for s in SPLITS}
  else:
    manual = tfds_loading.manual_dir(cfg, NAME)
    if missing(manual):
      return None
    ann = _annotation_dir(manual)
    sizes = {s: len(_read_lines(os.path.join(ann, _key_list_file(s)))) for s in SPLITS}
  return {s: n if cap < 0 else min(cap, n) for s, n in sizes.items()}


def load(cfg) -> dict[str, tuple[random_access.LazyArray, np.ndarray]]:
  """Every builder split as ``(x LazyArray uint8 [n, 224, 224, 3], y int32 [n])``.

  ``config.dataset.max_examples`` (-1 = all) keeps the first rows of each split.
  """
  b = builder(cfg)
  cap = int(cfg.max_examples)
  out = {}
  for split in SPLITS:
    y = tfds_loading.metadata_labels(b, split)
    n = len(y) if cap < 0 else min(cap, len(y))
    out[split] = (tfds_loading.lazy_images(b, split, IMAGE_SHAPE, num_rows=n), y[:n])
  return out

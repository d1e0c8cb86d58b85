"""TensorFlow Datasets plumbing for the real datasets: builders, reading, lazy images.

* :func:`import_tfds`: ``tensorflow_datasets``, imported lazily (one-line ``ImportError``
  naming ``pip install "reducr_jax[data]"`` when missing). TensorFlow is hidden from the
  GPUs so ``tf.data`` never takes accelerator memory from JAX.
* :func:`data_dir` / :func:`manual_dir`: where prepared data and manual downloads live
  (``config.dataset.data_dir``, ``config.dataset.manual_dir``; TFDS defaults when '').
* :func:`catalog_builder`: a prepared TFDS catalog builder (CIFAR, GLUE). It downloads
  only when ``config.dataset.download`` is True (then prepared as ``array_record``);
  otherwise missing data is a one-line ``FileNotFoundError`` saying how to get it.
* :func:`prepare_from_manual`: prepares one of our own builders (CINIC-10, Clothing1M)
  from files in ``manual_dir``; they have no URLs, so this never touches the network.
* :func:`read_split`: a whole (small) split as NumPy arrays through ``tf.data``, which
  reads both ``tfrecord`` and ``array_record`` preparations.
* :func:`lazy_images`: a split's images as a :class:`~reducr_jax.data.random_access.LazyArray`
  over ``builder.as_data_source`` (``array_record`` random access), JPEG/PNG bytes
  decoded with PIL by a thread pool only for the rows asked for.
* :func:`metadata_labels`: labels our builders store in their ``metadata.json`` at
  preparation, so 1M labels are known without reading a single image record.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import sys
import types
from typing import Any, Sequence

from absl import logging
import numpy as np

from reducr_jax.core import errors
from reducr_jax.data import random_access

INSTALL_HINT = 'pip install "reducr_jax[data]"'
READ_BATCH = 1024


def _alias_importlib_resources() -> None:
  """Lets TFDS 4.9.x prepare datasets without the ``importlib_resources`` backport.

  ``DatasetBuilder.code_path`` (reached by every ``download_and_prepare``) evaluates
  ``importlib_resources.abc.Traversable``, but TFDS requires the backport only on
  Python < 3.9, so on newer Pythons without it preparing fails with
  ``ModuleNotFoundError``. The standard library's ``importlib.resources`` is the same
  API; register it under the backport's name when the backport is absent.
  """
  if "importlib_resources" in sys.modules:
    return
  try:
    import importlib_resources  # pylint: disable=g-import-not-at-top,unused-import
    return
  except ImportError:
    pass
  import importlib.resources  # pylint: disable=g-import-not-at-top
  try:
    import importlib.resources.abc as abc_module  # pylint: disable=g-import-not-at-top
  except ImportError:  # Python 3.10
    import importlib.abc as abc_module  # pylint: disable=g-import-not-at-top
  shim = types.ModuleType("importlib_resources")
  shim.abc = abc_module
  shim.files = importlib.resources.files
  sys.modules["importlib_resources"] = shim


def import_tfds(tensorflow: bool = True):
  """Returns the ``tensorflow_datasets`` module, or raises a one-line ``ImportError``.

  ``tensorflow=False`` for what runs without TensorFlow (our manual builders' preparation
  and ``array_record`` random access, decoded with PIL): importing it costs ≈ 0.58 GiB
  resident for the rest of the process (measured: 0.35 → 0.93 GiB), 15 % of the issue-23
  CPU smoke run's 4 GB. TensorFlow is imported (and hidden from the GPUs) only for
  ``tf.data`` (:func:`read_split`, :func:`catalog_builder`), or when already loaded.
  """
  _alias_importlib_resources()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up chatter
  os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")   # if TFDS imports it itself
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"the real datasets need tensorflow-datasets and tensorflow: "
                      f"{INSTALL_HINT} ({e})") from None
  if not tensorflow and "tensorflow" not in sys.modules:
    return tfds
  try:  # tf.data must not reserve GPU memory that JAX needs.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError, ValueError):
    pass  # No TensorFlow (data sources still work) or devices already initialised.
  return tfds


def data_dir(cfg) -> str:
  """``config.dataset.data_dir``, or TFDS's default ($TFDS_DATA_DIR, ~/tensorflow_datasets)."""
  d = cfg.get("data_dir", "") or os.environ.get(
      "TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
  return os.path.expanduser(d)


def manual_dir(cfg, name: str) -> str:
  """Directory holding the manually downloaded files of dataset ``name``.

  ``config.dataset.manual_dir``, or ``<data_dir>/downloads/manual`` when ''. As in TFDS,
  a sub-directory named after the dataset (e.g. ``<manual_dir>/clothing1m``) is used
  when it exists, so one manual directory can hold several datasets.
  """
  root = os.path.expanduser(cfg.manual_dir or
                            os.path.join(data_dir(cfg), "downloads", "manual"))
  sub = os.path.join(root, name)
  return sub if os.path.isdir(sub) else root


def catalog_builder(tfds_name: str, cfg, what: str, hint: str = ""):
  """A prepared TFDS catalog builder (e.g. ``"cifar10"``, ``"glue/mnli"``).

  Args:
    tfds_name: TFDS catalog name.
    cfg: ``config.dataset`` (``data_dir``, ``download``).
    what: the dataset's name in messages (``config.dataset.name``).
    hint: another way to get the data, appended to the missing-data message.

  Raises:
    FileNotFoundError: (one line) not prepared under ``data_dir`` and ``download`` is
      False: nothing is fetched then.
  """
  tfds = import_tfds()
  root = data_dir(cfg)
  builder = tfds.builder(tfds_name, data_dir=root)
  if not builder.is_prepared():
    if not cfg.download:
      raise FileNotFoundError(
          f"{what}: no prepared TFDS data {builder.info.full_name!r} under {root!r}; set "
          f"config.dataset.download=True once with internet, or copy a prepared TFDS "
          f"data_dir and point config.dataset.data_dir at it{', ' + hint if hint else ''}")
    builder.download_and_prepare(file_format="array_record")
  return builder


def prepare_from_manual(builder, manual: str) -> None:
  """Prepares ``builder`` (one of ours) from ``manual`` as ``array_record``; no network."""
  tfds = import_tfds(tensorflow=False)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual),
      file_format="array_record")


SKIPPED_KEY = "skipped_images"
SKIPPED_FILE = "skipped_images.txt"


class BadImagesError(errors.ConfigError):
  """Files that cannot be decoded (truncated, not an image, ...), all named in one line."""

  def __init__(self, name: str, bad: Sequence[Sequence[str]]):
    shown = "; ".join(f"{path} ({error})" for path, error in bad[:20])
    more = f"; ... ({len(bad)} in all)" if len(bad) > 20 else ""
    super().__init__(
        f"{name}: {len(bad)} image file(s) cannot be decoded: {shown}{more}; replace them, "
        f"or set config.dataset.skip_bad_images=True to leave them out of their splits "
        f"(then listed in {SKIPPED_FILE} in the prepared data directory)")
    self.bad = [tuple(b) for b in bad]


def _trying(load):
  """``path -> (load(path), None)``, or ``(None, "<error>")`` when the file cannot be read
  or decoded (PIL's truncated/unidentified images, wrong shapes, I/O errors)."""
  def run(path):
    try:
      return load(path), None
    except Exception as e:  # pylint: disable=broad-except  # any per-file failure
      return None, f"{type(e).__name__}: {e}".replace("\n", " ")
  return run


def manual_image_builder(class_name: str, module: str, *, version: str, instructions: str,
                         homepage: str,
                         image_shape: tuple[int, int, int], encoding_format: str,
                         class_names: Sequence[str], id_feature: str, list_splits, load):
  """A TFDS builder class (not registered) for an image dataset read from ``manual_dir``.

  Features ``image`` (``image_shape``, stored as ``encoding_format``), ``label``
  (``class_names``) and ``id_feature`` (the file's relative path); rows keep file-list
  order (``disable_shuffling``), and every split's labels are also stored in the
  dataset metadata (``metadata["labels"]``) so they load without reading any image.
  A file that cannot be decoded fails preparation with a :class:`BadImagesError` naming
  every such file, unless the builder's ``skip_bad_images`` attribute is True: then it
  is left out of its split and its labels, and listed in ``metadata["skipped_images"]``.

  Args:
    class_name: the builder's class name (its TFDS name in snake case).
    module: the defining module's ``__name__`` (TFDS locates the builder's code by it).
    list_splits: ``manual -> {split: (ids, labels)}``, file paths relative to ``manual``.
    load: ``path -> image`` (array or encoded bytes), run on a thread pool.
  """
  tfds = import_tfds(tensorflow=False)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=image_shape, encoding_format=encoding_format),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            id_feature: tfds.features.Text(),
        }),
        supervised_keys=("image", "label"), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(), homepage=homepage)

  def _split_generators(self, dl_manager):
    manual = str(dl_manager.manual_dir)
    splits = list_splits(manual)
    self.info.metadata["labels"] = {s: list(labels) for s, (_, labels) in splits.items()}
    self.info.metadata[SKIPPED_KEY] = {}
    self._splits_left = set(splits)
    return {s: self._generate_examples(manual, ids, labels, s)
            for s, (ids, labels) in splits.items()}

  def _generate_examples(self, manual, ids, labels, split):
    """Every decodable file of ``split``; undecodable ones are collected, then skipped
    (``skip_bad_images``: the split's stored labels lose them too) or, once every split
    has been read, raised as one :class:`BadImagesError` naming all of them."""
    paths = [os.path.join(manual, i) for i in ids]
    skip = bool(getattr(self, "skip_bad_images", False))
    bad, kept = self.info.metadata[SKIPPED_KEY].setdefault(split, []), []
    for row, (image, error) in enumerate(map_files(_trying(load), paths)):
      if error is not None:
        bad.append([paths[row], error])
      else:
        kept.append(labels[row])
        yield row, {"image": image, "label": labels[row], id_feature: ids[row]}
    self.info.metadata["labels"][split] = kept
    if ids and not kept:                 # TFDS cannot write an empty split
      raise BadImagesError(class_name.lower(), bad)
    self._splits_left.discard(split)
    every = [b for rows in self.info.metadata[SKIPPED_KEY].values() for b in rows]
    if every and not skip and not self._splits_left:
      raise BadImagesError(class_name.lower(), every)

  with tfds.core.registered.skip_registration():
    return type(class_name, (tfds.core.GeneratorBasedBuilder,), {
        "__module__": module, "VERSION": tfds.core.Version(version),
        "MANUAL_DOWNLOAD_INSTRUCTIONS": instructions,
        "__doc__": f"{class_name} from the official files in ``manual_dir``.",
        "_info": _info, "_split_generators": _split_generators,
        "_generate_examples": _generate_examples})


def prepared_manual_builder(cfg, name: str, builder_cls, missing, hint: str):
  """The prepared builder of a dataset read from ``manual_dir`` (CINIC-10, Clothing1M).

  Prepares it from :func:`manual_dir` first when needed (no network).

  Args:
    cfg: ``config.dataset``.
    name: dataset name (for messages and the ``<manual_dir>/<name>`` lookup).
    builder_cls: the TFDS builder class.
    missing: ``manual -> str | None``, what is missing from a manual directory.
    hint: where to get the files and where to put them.

  Raises:
    FileNotFoundError: (one line) neither prepared data nor the official files.
  """
  import_tfds(tensorflow=False)
  root = data_dir(cfg)
  builder = builder_cls(data_dir=root)
  if not builder.is_prepared():
    manual = manual_dir(cfg, name)
    problem = missing(manual)
    if problem:
      raise FileNotFoundError(f"{name}: no prepared data under {root!r} and {problem}; {hint}")
    builder.skip_bad_images = bool(cfg.skip_bad_images)
    try:
      prepare_from_manual(builder, manual)
    except BadImagesError as e:
      raise BadImagesError(name, e.bad) from None
    builder = builder_cls(data_dir=root)
    write_skipped_list(builder, name)
  return builder


def write_skipped_list(builder, name: str) -> None:
  """Writes the files preparation skipped (``split<TAB>path<TAB>error`` lines) to
  ``<prepared dir>/skipped_images.txt`` and logs how many, when there are any."""
  skipped = builder.info.metadata.get(SKIPPED_KEY) or {}
  rows = [(split, path, error) for split, bad in skipped.items() for path, error in bad]
  if not rows:
    return
  path = os.path.join(str(builder.data_dir), SKIPPED_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(f"{split}\t{p}\t{error}\n" for split, p, error in rows)
  logging.warning("%s: skipped %d undecodable image file(s) (config.dataset.skip_bad_images"
                  "=True), e.g. %s; all listed in %s", name, len(rows), rows[0][1], path)


def map_files(fn, paths: Sequence[str]):
  """Yields ``fn(path)`` for every path, in order, computed on a thread pool (decoding
  and re-encoding images while a builder prepares a split)."""
  with concurrent.futures.ThreadPoolExecutor(random_access.default_num_threads()) as pool:
    yield from pool.map(fn, paths, chunksize=64)


def read_split(builder, split: str, keys: Sequence[str],
               max_examples: int = -1) -> dict[str, np.ndarray]:
  """Reads features ``keys`` of a whole split, in file order, into NumPy arrays.

  Args:
    builder: a prepared TFDS builder.
    split: split name, e.g. ``"train"``.
    keys: top-level feature names, e.g. ``("image", "label")``.
    max_examples: -1 for all rows, else only the first ``max_examples``.

  Returns:
    ``{key: array [n, ...]}`` (images uint8 [n, H, W, C], labels int64 [n], text as
    object arrays of ``bytes``); row i is row i of the split (files read one after the
    other, no shuffling).
  """
  tfds = import_tfds()
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(interleave_cycle_length=1))
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  if max_examples >= 0:
    ds = ds.take(max_examples)
  chunks = list(tfds.as_numpy(ds.batch(READ_BATCH)))
  if not chunks:
    spec = builder.info.features
    return {k: np.zeros((0,) + tuple(spec[k].shape), spec[k].np_dtype) for k in keys}
  return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def decode_image(data: bytes) -> np.ndarray:
  """PNG/JPEG bytes -> uint8 [H, W, 3] (RGB, via PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def lazy_images(builder, split: str, row_shape: Sequence[int],
                num_rows: int | None = None,
                image_key: str = "image") -> random_access.LazyArray:
  """A split's images, decoded only when indexed (needs an ``array_record`` preparation).

  Args:
    builder: a prepared builder whose feature ``image_key`` is a ``tfds.features.Image``.
    split: split name.
    row_shape: decoded image shape, e.g. ``(224, 224, 3)``.
    num_rows: expose only the first ``num_rows`` rows (default: all).
    image_key: the image feature.

  Returns:
    ``LazyArray`` uint8 [n, *row_shape].
  """
  tfds = import_tfds(tensorflow=False)
  source = builder.as_data_source(
      split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  n = len(source) if num_rows is None else min(int(num_rows), len(source))

  def decode(record: Any) -> np.ndarray:
    return decode_image(record[image_key])

  rows = random_access.DataSourceRows(source, decode, row_shape, np.uint8, num_rows=n)
  return random_access.LazyArray([rows])


def metadata_labels(builder, split: str) -> np.ndarray:
  """int32 [n]: labels of ``split`` that our builders store in ``info.metadata``."""
  labels = builder.info.metadata.get("labels", {}).get(split)
  if labels is None:
    raise FileNotFoundError(
        f"{builder.name}: no labels for split {split!r} in {builder.data_dir}/metadata.json; "
        f"delete {builder.data_dir} and prepare it again")
  return np.asarray(labels, dtype=np.int32)

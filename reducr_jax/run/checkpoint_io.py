"""The parts of :mod:`reducr_jax.run.checkpointing` that need no orbax manager.

Template leaves → restore targets and restored values → the template's types
(:func:`restore_target`, :func:`coerce`, :func:`like_template`), the non-finite check of
an unverified step (:func:`non_finite`), and what a step holds on disk: its manifest
(:func:`write_manifest`, :func:`check_manifest`, the :func:`content_digest` it holds),
the config saved with it (:func:`stored_config`, read by :mod:`reducr_jax.config.workdir`) and
the array shapes of a stored tree; and quieter orbax logging (:func:`quiet_orbax_logging`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from typing import Any, Optional

from etils import epath
import jax
import numpy as np

from reducr_jax.run import caches

PyTree = Any

MANIFEST = "reducr_manifest.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
STATE = "state"
METADATA = "metadata"


def content_digest(step_dir: str | os.PathLike) -> str:
  """SHA-256 over every file of a step directory except the manifest (path, size, bytes)."""
  root = epath.Path(step_dir)
  files = sorted((os.path.relpath(os.fspath(d / n), os.fspath(root)), d / n)
                 for d, _, names in root.walk() for n in names)
  files = [(rel, p) for rel, p in files if rel != MANIFEST]
  h = hashlib.sha256()
  for rel, path in files:
    file_hash, size = hashlib.sha256(), 0
    with path.open("rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):  # pylint: disable=cell-var-from-loop
        file_hash.update(block)
        size += len(block)
    h.update(f"{rel}\0{size}\0{file_hash.hexdigest()}\n".encode())
  return h.hexdigest()


def write_manifest(step_dir: str | os.PathLike, step: int) -> None:
  """Writes ``<step_dir>/reducr_manifest.json``: the step and its :func:`content_digest`."""
  manifest = {"step": int(step), "sha256": content_digest(step_dir)}
  caches.atomic_write(epath.Path(step_dir, MANIFEST),
                      json.dumps(manifest, sort_keys=True).encode())


def check_manifest(step_dir: str | os.PathLike, missing: str) -> Optional[str]:
  """``None`` when ``step_dir`` matches its manifest, ``missing`` when it has none, else
  what is wrong (one phrase)."""
  try:
    manifest = json.loads(epath.Path(step_dir, MANIFEST).read_text())
  except FileNotFoundError:
    return missing
  except (OSError, ValueError, AttributeError):
    return "unreadable manifest"
  try:
    actual = content_digest(step_dir)
  except OSError as e:
    return f"unreadable file ({e.strerror or e})"
  if not isinstance(manifest, dict) or manifest.get("sha256") != actual:
    return "content hash does not match its manifest (a file was altered or truncated)"
  return None


def stored_config(step_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
  """The config dict saved with a step, read without orbax (``None`` when absent or
  unreadable). orbax 0.12's ``JsonSave`` writes the item ``metadata`` as the file
  ``<step>/metadata/metadata``, holding ``{"config": ...}``."""
  try:
    value = json.loads(epath.Path(step_dir, METADATA, METADATA).read_text())
  except (OSError, ValueError):
    return None
  config = value.get("config") if isinstance(value, dict) else None
  return config if isinstance(config, dict) else None


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  raise TypeError(f"config value of type {type(obj).__name__} is not JSON serialisable")


def to_json(config: Any) -> dict[str, Any]:
  """``config`` as plain JSON (numpy/jax scalars → Python); it must be a dict."""
  if not isinstance(config, dict):
    raise TypeError(f"config must be a dict, got {type(config).__name__}")
  return json.loads(json.dumps(config, default=_json_default))


def shape_list(leaves) -> list[tuple[int, ...]]:
  """Sorted shapes of the array leaves (rank ≥ 1) of a tree: what a config decides.
  Typed PRNG keys count with the shape of their key data (as they are stored)."""
  shapes = [getattr(jax.random.key_data(leaf) if is_key_array(leaf) else leaf, "shape", None)
            for leaf in leaves]
  return sorted(tuple(int(d) for d in shape) for shape in shapes
                if shape is not None and len(shape) >= 1)


def is_key_array(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def restore_target(path: Any, leaf: Any) -> Any:
  """Template leaf → what ``StandardRestore`` needs to restore it with the same type."""
  if isinstance(leaf, (bool, int, float)):  # Python scalars: orbax restores them as such.
    return leaf
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  if isinstance(leaf, jax.Array):
    if is_key_array(leaf):  # Typed PRNG keys: orbax needs the array itself.
      return leaf
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if isinstance(leaf, np.ndarray):
    return leaf
  if isinstance(leaf, np.generic):
    return np.asarray(leaf)
  raise TypeError(
      f"Unsupported template leaf at {jax.tree_util.keystr(path)}: {type(leaf).__name__}. "
      "Leaves must be jax/numpy arrays, numpy scalars, Python int/float/bool or "
      "jax.ShapeDtypeStruct.")


def coerce(path: Any, leaf: Any, value: Any) -> Any:
  """Restored value → the type, dtype and shape of the template leaf."""
  where = jax.tree_util.keystr(path)
  if isinstance(leaf, (bool, int, float)):
    return type(leaf)(np.asarray(value).item())
  if isinstance(leaf, np.generic):
    return leaf.dtype.type(np.asarray(value, dtype=leaf.dtype))
  shape, dtype = tuple(leaf.shape), leaf.dtype
  if tuple(np.shape(value)) != shape:
    raise ValueError(f"Checkpoint leaf {where} has shape {np.shape(value)}; template "
                     f"expects {shape}.")
  if isinstance(leaf, np.ndarray):
    return np.asarray(value, dtype=dtype)
  if isinstance(leaf, jax.Array):
    if is_key_array(leaf):
      if not (isinstance(value, jax.Array) and value.dtype == dtype):
        value = jax.random.wrap_key_data(np.asarray(value), impl=jax.random.key_impl(leaf))
      return jax.device_put(value, leaf.sharding)
    if not isinstance(value, jax.Array):
      value = jax.device_put(np.asarray(value, dtype=dtype), leaf.sharding)
    return value if value.dtype == dtype else value.astype(dtype)
  # jax.ShapeDtypeStruct template: a jax array (numpy if it came back as numpy).
  if isinstance(value, jax.Array):
    return value if value.dtype == dtype else value.astype(dtype)
  return np.asarray(value, dtype=dtype)


def like_template(template: PyTree | None, restored: PyTree) -> PyTree:
  """A restored tree with the structure and leaf types of ``template`` (:func:`coerce`);
  ``template`` ``None``: the restored tree with numpy leaves."""
  if template is None:
    return jax.tree.map(np.asarray, restored)
  values = jax.tree_util.tree_structure(template).flatten_up_to(restored)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(
      treedef, [coerce(p, l, v) for (p, l), v in zip(paths_leaves, values)])


def non_finite(template: PyTree | None, state: PyTree) -> list[str]:
  """Paths of float leaves that are finite in ``template`` but not in ``state``
  (``template`` ``None``: every float leaf must be finite)."""
  if template is None:
    template = jax.tree.map(lambda v: np.zeros_like(np.asarray(v)), state)
  bad = []
  t_leaves = jax.tree_util.tree_flatten_with_path(template)[0]
  for (path, t), v in zip(t_leaves, jax.tree.leaves(state)):
    if is_key_array(t) or isinstance(t, jax.ShapeDtypeStruct):
      continue
    t = np.asarray(t)
    if t.dtype.kind != "f" and str(t.dtype) != "bfloat16":
      continue
    v = np.asarray(v, np.float64)
    if np.all(np.isfinite(np.asarray(t, np.float64))) and not np.all(np.isfinite(v)):
      bad.append(jax.tree_util.keystr(path))
  return bad


class _OrbaxInfoFilter(logging.Filter):
  """Drops orbax's absl records below WARNING (it logs a lot at INFO) and its background
  threads' errors (with tracebacks) of a full disk, which the failed save reports."""

  _marker = os.sep + "orbax" + os.sep

  def filter(self, record: logging.LogRecord) -> bool:
    if self._marker not in (record.pathname or ""):
      return True
    if record.levelno >= logging.WARNING:
      return not caches.is_disk_full(RuntimeError(record.getMessage()))
    return False


_ORBAX_FILTER = _OrbaxInfoFilter()


def quiet_orbax_logging(quiet: bool = True) -> None:
  """Hides (``quiet=True``) or shows again orbax's INFO/DEBUG absl log records (only
  records from an ``orbax`` package; every WARNING/ERROR is kept). Idempotent."""
  absl_logger = logging.getLogger("absl")
  if quiet:
    if _ORBAX_FILTER not in absl_logger.filters:
      absl_logger.addFilter(_ORBAX_FILTER)
  else:
    absl_logger.removeFilter(_ORBAX_FILTER)


def drop_closed_loop_tracebacks():
  """Drops unraisable ``RuntimeError: Event loop is closed`` (anything else goes to the
  previous ``sys.unraisablehook``) until the returned function is called: after a failed
  write (full disk) tensorstore's pending writes complete into orbax's closed event loops
  and report these, a traceback each, around the one-line error."""
  previous = sys.unraisablehook

  def hook(u):
    if str(u.exc_value) != "Event loop is closed" or u.exc_type is not RuntimeError:
      previous(u)
  sys.unraisablehook = hook
  return lambda: setattr(sys, "unraisablehook", previous) if sys.unraisablehook is hook else None

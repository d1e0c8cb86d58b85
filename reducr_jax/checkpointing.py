"""Atomic, resumable checkpoints of a train-state pytree plus a small JSON metadata dict.

:class:`Checkpointer` is a thin wrapper around :class:`orbax.checkpoint.CheckpointManager`
that saves, per step, two composite items into ``<directory>/<step>/``:

  * ``state``: the train-state pytree (``args.StandardSave`` / ``args.StandardRestore``;
    tensorstore/OCDBT array storage, so jax arrays, numpy arrays, bfloat16, raw
    ``uint32[2]`` PRNG keys and typed key arrays all round-trip bit-exactly);
  * ``metadata``: a small JSON-able dict (``args.JsonSave`` / ``args.JsonRestore``).

Atomicity (orbax-checkpoint 0.12.x, local / POSIX file systems). A save of step ``s``
writes everything into ``<directory>/s.orbax-checkpoint-tmp``, then writes
``commit_success.txt`` inside it and finally renames it to ``<directory>/s`` (a single
atomic ``rename(2)``; ``AtomicRenameTemporaryPath``). Step discovery only accepts
directories whose name is a bare integer and does not contain ``.orbax-checkpoint-tmp``,
so a save killed at any point before the rename (even ``kill -9`` right before it) is
never reported by :meth:`Checkpointer.latest_step` nor restored. Leftover temporary
directories are deleted (by process 0, synchronously) when a writable
:class:`Checkpointer` is opened, and a re-save of the same step also replaces its stale
temporary directory. On GCS orbax instead writes in place and marks completion with
``commit_success.txt`` (``CommitFileTemporaryPath``); discovery then requires that file.
Old steps beyond ``max_to_keep`` are deleted only after the new step is finalised *and*
its manifest written (see Integrity), counting only steps with a manifest, so a crash
never leaves fewer complete checkpoints than before and the newest verified step is kept
until a newer verified one exists. (This is crash consistency
against the process dying; orbax 0.12's v0 API does not ``fsync`` the rename, so
durability across a power loss is up to the file system.)

Several processes (``jax.process_count() > 1``): every method that touches checkpoints
(``__init__``, :meth:`~Checkpointer.save`, :meth:`~Checkpointer.restore`,
:meth:`~Checkpointer.close`) is collective and must be called by *all* processes, in the
same order, with the same arguments, on a directory every process can see. Orbax
synchronises them with barriers: each process writes its own array shards, the primary
process (0) writes the JSON metadata and the step metadata and performs the final rename
and the deletion of old steps. This module never writes files itself. Restoring places
each array with the sharding of the corresponding template leaf, so a sharded template
restores sharded arrays. A :class:`Checkpointer` must not be opened writable on a
directory that another *job* is writing to (it would delete that job's in-flight
temporary directories); evaluators should pass ``read_only=True``.

Integrity. Orbax's rename protects against a writer that dies, not against a file that
is damaged later (a truncated copy, a flipped bit, a deleted file). After each save,
process 0 writes ``<step>/reducr_manifest.json`` *last*: the SHA-256 over every file of
the step (relative path, size and bytes). :meth:`Checkpointer.verify` recomputes it;
:meth:`Checkpointer.restore_newest_intact` walks the steps newest first, warns in one line
naming each damaged step (hash mismatch, or a step that fails to load), deletes it (else a
re-run would refuse to overwrite it when it reaches that step again) and restores the
newest intact one. A finalised step without a manifest (its writer was killed between
orbax's rename and the manifest, or it predates manifests) is complete as far as orbax
knows: it is restored with a warning that it is unverified; it falls back like a damaged
one if it does not load or holds non-finite floats where the template's are finite.
A step whose stored tree (orbax's metadata) has other shapes than the template, or an
intact (manifest-verified) step that does not load, was written by another config: that
is :class:`CheckpointMismatch` (a ``ConfigError``, exit 2), and the step is kept. A save
that fails with a full disk removes its temporary directory and raises
:class:`reducr_jax.caches.DiskFullError`. Temporary directories of a dead writer
(``<step>.orbax-checkpoint-tmp*``) are deleted when a writable Checkpointer opens.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Mapping, Optional

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from reducr_jax import caches
from reducr_jax import checkpoint_io
from reducr_jax import errors
from reducr_jax.checkpoint_io import content_digest, is_key_array  # noqa: F401  (re-exported)
from reducr_jax.checkpoint_io import remove_temporary_directories
from reducr_jax.checkpoint_io import stored_metadata  # noqa: F401  (re-exported)

__all__ = ["Checkpointer", "CheckpointDamaged", "CheckpointMismatch", "MANIFEST",
           "quiet_orbax_logging", "stored_metadata"]

MANIFEST = checkpoint_io.MANIFEST
NO_MANIFEST = "no manifest (its writer stopped right after orbax's rename)"

PyTree = Any

_STATE = checkpoint_io.STATE
_METADATA = checkpoint_io.METADATA


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
  """Hides (``quiet=True``) or shows again orbax's INFO/DEBUG absl log records.

  Only records whose source file lies in an ``orbax`` package are affected; the
  application's own absl logging and every WARNING/ERROR are left alone. Idempotent.
  """
  absl_logger = logging.getLogger("absl")
  if quiet:
    if _ORBAX_FILTER not in absl_logger.filters:
      absl_logger.addFilter(_ORBAX_FILTER)
  else:
    absl_logger.removeFilter(_ORBAX_FILTER)


def _drop_closed_loop_tracebacks():
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


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  raise TypeError(f"Metadata value of type {type(obj).__name__} is not JSON serialisable.")


def _to_json(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
  """Validates and normalises metadata (numpy/jax scalars → Python) before saving."""
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
  return json.loads(json.dumps(dict(metadata), default=_json_default))


class CheckpointDamaged(ValueError):
  """A checkpoint step failed verification (missing manifest, hash mismatch, unreadable)."""


class CheckpointMismatch(errors.ConfigError):
  """An intact checkpoint holds another state than the template (written by another
  config): a bad input (exit 2), never damage; the checkpoint is kept."""


class Checkpointer:
  """Atomic, resumable checkpoints of a train-state pytree plus a small JSON metadata dict.

  Example::

    with Checkpointer("runs/exp1/ckpt", max_to_keep=2) as ckpt:
      if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)          # `state` is the template
      ...
      ckpt.save(step, state, {"epoch": epoch})     # returns once finalised

  ``save`` is synchronous: when it returns the step directory has been renamed into
  place (complete), and steps beyond the newest ``max_to_keep`` have been deleted.
  ``restore`` returns a pytree with the template's structure (NamedTuples, optax states,
  dicts) and, leaf by leaf, its type, dtype and shape: numpy leaves come back as numpy
  arrays, jax leaves as jax arrays with the template leaf's sharding (the default device
  for ordinary single-device arrays), Python scalars as Python scalars. Values are
  bit-identical to what was saved.

  See the module docstring for how atomicity works and for multi-process use (all
  processes must call every method).

  Args:
    directory: checkpoint root; relative paths are made absolute (orbax requires it).
      Created if missing (unless ``read_only``).
    max_to_keep: number of most recent steps kept (``None``: keep all).
    read_only: open for restoring only (no directory creation, no clean-up of temporary
      directories, ``save`` raises). Use it from evaluators reading a live run.
    quiet: hide orbax's INFO logging (see :func:`quiet_orbax_logging`).
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2, *,
               read_only: bool = False, quiet: bool = True):
    if max_to_keep is not None and (isinstance(max_to_keep, bool) or
                                    int(max_to_keep) != max_to_keep or max_to_keep < 1):
      raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
    if quiet:
      quiet_orbax_logging(True)
    self._directory = caches.absolute(directory)
    self._max_to_keep = None if max_to_keep is None else int(max_to_keep)
    self._read_only = bool(read_only)
    options = ocp.CheckpointManagerOptions(
        # Settings that read_only would otherwise override with a warning.
        save_interval_steps=0 if self._read_only else 1,
        # Old steps are deleted by :meth:`_rotate` once the new step's manifest is
        # written (orbax would delete them before it, and could delete the last verified
        # step while the newer ones have no manifest).
        max_to_keep=None,
        create=not self._read_only,
        # Stale temporary directories are removed synchronously below (process 0);
        # orbax's own clean-up runs in a background thread that raced with it (a directory
        # listed there and removed here made its rmtree, and so the next save, fail).
        cleanup_tmp_directories=False,
        read_only=self._read_only,
        enable_async_checkpointing=False,
    )
    if self._read_only and not epath.Path(self._directory).is_dir():
      raise FileNotFoundError(f"Checkpoint directory {self._directory} does not exist.")
    if not self._read_only and jax.process_index() == 0:
      remove_temporary_directories(self._directory)
    self._manager = ocp.CheckpointManager(self._directory, options=options)
    self._closed = False

  @property
  def directory(self) -> str:
    """The absolute checkpoint root."""
    return self._directory

  @property
  def max_to_keep(self) -> int | None:
    """How many of the most recent steps are kept (``None``: all)."""
    return self._max_to_keep

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("Checkpointer is closed.")

  def all_steps(self) -> list[int]:
    """All complete (finalised) steps, ascending."""
    self._check_open()
    return sorted(int(s) for s in self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete step, or ``None`` if there is none.

    Interrupted saves (``<step>.orbax-checkpoint-tmp`` directories) are never counted.
    """
    self._check_open()
    step = self._manager.latest_step()
    return None if step is None else int(step)

  def save(self, step: int, state: PyTree, metadata: Mapping[str, Any] | None = None
           ) -> None:
    """Saves ``state`` and ``metadata`` as ``step``; returns once the step is finalised.

    Saving a step that already exists is a no-op (with a warning): the existing, complete
    checkpoint is kept, so resuming and immediately re-saving the restored step is safe.
    Collective in multi-process runs.

    Args:
      step: non-negative training step.
      state: pytree of jax/numpy arrays and Python/numpy scalars.
      metadata: small JSON-able dict (numpy/jax scalars and arrays are converted to
        Python numbers/lists).
    """
    self._check_open()
    if self._read_only:
      raise RuntimeError("Checkpointer was opened read_only; cannot save.")
    if isinstance(step, bool) or int(step) != step or int(step) < 0:
      raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    meta = _to_json(metadata)
    if step in self._manager.all_steps():
      logging.getLogger(__name__).warning(
          "Checkpoint for step %d already exists in %s; not overwriting.", step,
          self._directory)
      return
    restore_hook = _drop_closed_loop_tracebacks()   # kept after a full disk (see there)
    try:
      saved = self._manager.save(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardSave(state),
              _METADATA: ocp.args.JsonSave(meta),
          }),
          force=True,
      )
      self._manager.wait_until_finished()  # A no-op for the synchronous checkpointer.
    except Exception as e:  # pylint: disable=broad-except
      if not caches.is_disk_full(e):
        restore_hook()
        raise
      if jax.process_index() == 0:
        remove_temporary_directories(self._directory)
      raise caches.DiskFullError(
          f"disk full while saving checkpoint {step} in {self._directory}: free space and "
          "run the same command again (it resumes from the last checkpoint)") from None
    restore_hook()
    if not saved:
      raise RuntimeError(f"orbax declined to save step {step} in {self._directory}.")
    self._write_manifest(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self._directory, str(int(step)))

  def _write_manifest(self, step: int) -> None:
    """Process 0 writes the content hash of a finalised step, last, then deletes the
    steps it makes obsolete (:meth:`_rotate`) (collective)."""
    if jax.process_index() == 0:
      step_dir = self._step_dir(step)
      manifest = {"step": int(step), "sha256": content_digest(step_dir)}
      caches.atomic_write(os.path.join(step_dir, MANIFEST),
                          json.dumps(manifest, sort_keys=True).encode())
      self._rotate()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"reducr_manifest_{step}")
    self._manager.reload()

  def _rotate(self) -> None:
    """Keeps the newest ``max_to_keep`` steps that have a manifest; deletes older steps
    and steps without a manifest that are older than the newest one with a manifest. So
    the newest verified step is kept until a newer verified one exists."""
    if self._max_to_keep is None:
      return
    steps = sorted((int(s) for s in self._manager.all_steps()), reverse=True)
    verified = [s for s in steps if epath.Path(self._step_dir(s), MANIFEST).exists()]
    keep = set(verified[:self._max_to_keep])
    if not keep:
      return
    for s in steps:
      if s not in keep and s < max(keep):
        epath.Path(self._step_dir(s)).rmtree(missing_ok=True)

  def verify(self, step: int) -> Optional[str]:
    """``None`` when ``step`` matches its manifest, else what is wrong (one phrase)."""
    step_dir = self._step_dir(step)
    try:
      manifest = json.loads(epath.Path(step_dir, MANIFEST).read_text())
    except FileNotFoundError:
      return NO_MANIFEST
    except (OSError, ValueError, AttributeError):
      return "unreadable manifest"
    try:
      actual = content_digest(step_dir)
    except OSError as e:
      return f"unreadable file ({e.strerror or e})"
    if not isinstance(manifest, dict) or manifest.get("sha256") != actual:
      return "content hash does not match its manifest (a file was altered or truncated)"
    return None

  def restore_newest_intact(self, template: PyTree
                            ) -> Optional[tuple[int, PyTree, dict[str, Any]]]:
    """Restores the newest step that verifies and loads; ``None`` when there is none.

    Each damaged step met on the way (see :meth:`verify`, or failing to load) is
    reported in one warning line naming it and deleted, so the run can save that step
    again later. Collective in multi-process runs (every process verifies the same
    files; process 0 deletes).
    """
    log = logging.getLogger(__name__)
    for step in sorted(self.all_steps(), reverse=True):
      problem = self.verify(step)
      unverified = problem == NO_MANIFEST
      if unverified:
        log.warning("checkpoint %s has %s; restoring it unverified", self._step_dir(step),
                    NO_MANIFEST)
        problem = None
      if problem is None:
        self._check_layout(template, step)
        try:
          state, metadata = self.restore(template, step, verify=False)
        except Exception as e:  # pylint: disable=broad-except
          what = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]
          if not unverified:        # its bytes are those written: not damage
            raise self._mismatch(step, f"it does not load: {what}") from None
          problem = f"cannot be restored: {what}"
        else:
          bad = checkpoint_io.non_finite(template, state) if unverified else []
          if not bad:
            return step, state, metadata
          problem = f"non-finite values in {', '.join(bad[:3])}"
      log.warning("checkpoint %s is damaged (%s); deleting it and trying an older one",
                  self._step_dir(step), problem)
      if not self._read_only and jax.process_index() == 0:
        epath.Path(self._step_dir(step)).rmtree(missing_ok=True)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices(f"reducr_damaged_{step}")
      self._manager.reload()
    return None

  def _mismatch(self, step: int, what: str) -> CheckpointMismatch:
    return CheckpointMismatch(
        f"checkpoint {self._step_dir(step)} holds another state than this config builds "
        f"({what}): it was written by another config; it is kept (nothing deleted): use a "
        "new --workdir, or the config that wrote it")

  def _check_layout(self, template: PyTree, step: int) -> None:
    """Raises :class:`CheckpointMismatch` when the step's stored tree (orbax's own
    metadata) has other array shapes than ``template`` (nothing when it is unreadable)."""
    try:
      stored = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self._step_dir(step), _STATE))
      stored = jax.tree.leaves(getattr(stored, "tree", stored),
                               is_leaf=lambda x: hasattr(x, "shape"))
    except Exception:  # pylint: disable=broad-except  # unreadable: restoring decides
      return
    mine = jax.tree.leaves(template)
    a, b = checkpoint_io.shape_list(stored), checkpoint_io.shape_list(mine)
    if a != b:
      diff = sorted(set(a) ^ set(b))[:3]
      raise self._mismatch(step, f"{len(a)} arrays, {len(b)} expected; shapes differ: "
                           f"{', '.join(map(str, diff)) or 'in how many there are'}")

  def restore(self, template: PyTree, step: int | None = None, *, verify: bool = True
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores ``(state, metadata)`` of ``step`` (default: the latest step).

    With ``verify`` (default) the step is first checked against its manifest
    (:meth:`verify`); :meth:`restore_newest_intact` falls back to older steps instead.

    Args:
      template: a pytree with the structure, leaf types, dtypes and shapes (and, for jax
        arrays, shardings) of the state to restore, e.g. a freshly initialised train
        state. Leaves may also be ``jax.ShapeDtypeStruct``.
      step: which step; ``None`` for :meth:`latest_step`.

    Returns:
      The restored state (same treedef as ``template``) and the metadata dict.

    Raises:
      FileNotFoundError: no checkpoint at all, or none for ``step``.
      CheckpointDamaged: ``verify`` and the step does not match its manifest (a step
        without a manifest is restored unverified).
    """
    self._check_open()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint found in {self._directory}.")
    step = int(step)
    if step not in self._manager.all_steps():
      self._manager.reload()  # Possibly written by another job since we listed.
      if step not in self._manager.all_steps():
        raise FileNotFoundError(
            f"No complete checkpoint for step {step} in {self._directory} "
            f"(available: {self.all_steps()}).")
    if verify:
      problem = self.verify(step)
      if problem is not None and problem != NO_MANIFEST:
        raise CheckpointDamaged(f"checkpoint {self._step_dir(step)} is damaged: {problem}")
    target = jax.tree_util.tree_map_with_path(checkpoint_io.restore_target, template)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(target),
            _METADATA: ocp.args.JsonRestore(),
        }),
    )
    values = jax.tree_util.tree_structure(template).flatten_up_to(restored[_STATE])
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    state = jax.tree_util.tree_unflatten(
        treedef, [checkpoint_io.coerce(p, l, v) for (p, l), v in zip(paths_leaves, values)])
    metadata = restored[_METADATA]
    return state, dict(metadata) if metadata is not None else {}

  def close(self) -> None:
    """Waits for outstanding work (e.g. deletions) and releases orbax resources."""
    if not self._closed:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    return (f"Checkpointer(directory={self._directory!r}, max_to_keep={self._max_to_keep}"
            f", read_only={self._read_only})")

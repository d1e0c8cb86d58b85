"""Atomic, verified, asynchronously written checkpoints: the train state and the caches.

:class:`Checkpointer` is :class:`orbax.checkpoint.CheckpointManager` with its async saving
and its temporary-directory clean-up on. It writes, per step, two items into
``<directory>/<step>/``:

  * ``state``: a pytree (``args.StandardSave``; tensorstore/OCDBT storage, so jax and
    numpy arrays, bfloat16, raw ``uint32[2]`` PRNG keys and typed key arrays round-trip
    bit-exactly);
  * ``metadata``: the JSON ``{"config": ...}`` of the config that wrote it (read back by
    :func:`stored_config`, and by :mod:`reducr_jax.config.workdir` to refuse another config).

The same checkpointer holds the caches (the reference models of stage 1, the pruning
scores): :func:`write_cache` / :func:`read_cache`, one step ``0`` per cache directory,
whose config is the cache's fingerprint.

Async saving. :meth:`Checkpointer.save` returns once the state is copied to the host;
orbax writes it in the background, then renames ``<step>.orbax-checkpoint-tmp`` to
``<step>`` (one atomic ``rename(2)``), and a finisher thread of this module then writes the
manifest and rotates old steps (see Integrity). The next ``save``, every method that reads
steps, :meth:`~Checkpointer.wait` and :meth:`~Checkpointer.close` first wait for that
(and raise its error, a full disk as :class:`reducr_jax.run.caches.DiskFullError`). A stop
signal that ends the run at once waits for it too (``preemption.pending_write``), so a
preemption never leaves the step it saved without its manifest.
Interrupted saves (any ``*.orbax-checkpoint-tmp*`` directory) are never listed as steps
and are deleted by orbax when a :class:`Checkpointer` opens.

Integrity. Orbax's rename protects against a writer that dies, not against a file damaged
later. Once a step is in place, process 0 writes ``<step>/reducr_manifest.json`` *last*:
the SHA-256 over every file of the step (relative path, size, bytes), computed once, off
the training thread. :meth:`Checkpointer.verify` recomputes it;
:meth:`Checkpointer.restore_newest_intact` walks the steps newest first, warns in one line
naming each damaged step, deletes it and restores the newest intact one. A step without a
manifest (its writer was killed between the rename and the manifest) is restored with a
warning that it is unverified, and falls back like a damaged one if it does not load or
holds non-finite floats where the template's are finite. A step whose stored shapes differ
from the template's, or a verified step that does not load, was written by another config:
:class:`CheckpointMismatch` (a ``ConfigError``, exit 2), and the step is kept. Steps
beyond ``max_to_keep`` are deleted only after the new step's manifest is written, counting
only steps with a manifest, so the newest verified step stays until a newer one exists.

Several processes: every method is collective (all processes, same order, same
arguments, a directory they all see); orbax writes each process's shards and process 0
renames, writes the manifest and rotates; the others, re-reading the steps while it
deletes one, list them again (:meth:`Checkpointer._reload`). Crash consistency, not
durability: orbax 0.12 does not ``fsync`` the rename.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Mapping, Optional

import jax
from etils import epath
import orbax.checkpoint as ocp

from reducr_jax.run import caches
from reducr_jax.run import checkpoint_io
from reducr_jax.core import errors
from reducr_jax.run import preemption
from reducr_jax.run.checkpoint_io import stored_config  # noqa: F401  (re-exported)

__all__ = ["Checkpointer", "CheckpointDamaged", "CheckpointMismatch", "MANIFEST",
           "read_cache", "stored_config", "write_cache"]

MANIFEST = checkpoint_io.MANIFEST
NO_MANIFEST = "no manifest (its writer stopped right after orbax's rename)"

PyTree = Any

_STATE = checkpoint_io.STATE
_METADATA = checkpoint_io.METADATA
_log = logging.getLogger(__name__)


class CheckpointDamaged(ValueError):
  """A checkpoint step failed verification (hash mismatch, unreadable)."""


class CheckpointMismatch(errors.ConfigError):
  """An intact checkpoint holds another state than the template (written by another
  config): a bad input (exit 2), never damage; the checkpoint is kept."""


class Checkpointer:
  """Atomic, verified, asynchronously written checkpoints of a pytree and its config.

  Example::

    with Checkpointer("runs/exp1/checkpoints", max_to_keep=2) as ckpt:
      found = ckpt.restore_newest_intact(state)      # `state` is the template
      if found is not None:
        step, state = found
      ...
      ckpt.save(step, state, config_dict)            # returns once copied to the host

  ``restore`` returns a pytree with the template's structure and, leaf by leaf, its type,
  dtype and shape (numpy leaves as numpy, jax leaves as jax arrays with the template
  leaf's sharding, Python scalars as Python scalars), bit-identical to what was saved.

  Args:
    directory: checkpoint root (created if missing); relative paths are made absolute.
    max_to_keep: how many of the newest verified steps are kept (``None``: all).
    quiet: hide orbax's INFO logging (:func:`checkpoint_io.quiet_orbax_logging`).
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2, *,
               quiet: bool = True):
    if max_to_keep is not None and (isinstance(max_to_keep, bool) or
                                    int(max_to_keep) != max_to_keep or max_to_keep < 1):
      raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
    if quiet:
      checkpoint_io.quiet_orbax_logging(True)
    self._directory = caches.absolute(directory)
    self._max_to_keep = None if max_to_keep is None else int(max_to_keep)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,             # :meth:`_rotate` deletes, once manifests exist
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=True,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options)
    self._finisher: Optional[threading.Thread] = None
    self._failure: Optional[tuple[int, BaseException]] = None
    self._closed = False

  @property
  def directory(self) -> str:
    """The absolute checkpoint root."""
    return self._directory

  @property
  def max_to_keep(self) -> int | None:
    """How many of the newest verified steps are kept (``None``: all)."""
    return self._max_to_keep

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("Checkpointer is closed.")

  def all_steps(self) -> list[int]:
    """All complete (renamed into place) steps, ascending, once pending saves finished."""
    self._check_open()
    self.wait()
    return sorted(int(s) for s in self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete step, or ``None`` (interrupted saves never count)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: PyTree, config: Mapping[str, Any] | None = None
           ) -> None:
    """Starts saving ``state`` (and ``config``) as ``step``; returns once it is copied
    to the host. The files, the rename, the manifest and the rotation follow in the
    background (:meth:`wait`).

    Saving a step that already exists keeps the existing one (with a warning), so
    resuming and at once re-saving the restored step is safe. Collective.

    Args:
      step: non-negative training step.
      state: pytree of jax/numpy arrays and Python/numpy scalars.
      config: JSON-able dict of the config that wrote the state (:func:`stored_config`).
    """
    self._check_open()
    if isinstance(step, bool) or int(step) != step or int(step) < 0:
      raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    meta = {} if config is None else {"config": checkpoint_io.to_json(config)}
    if step in self.all_steps():
      _log.warning("Checkpoint for step %d already exists in %s; not overwriting.", step,
                   self._directory)
      return
    restore_hook = checkpoint_io.drop_closed_loop_tracebacks()   # kept after a full disk (see there)
    try:
      saved = self._manager.save(
          step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                           _METADATA: ocp.args.JsonSave(meta)}), force=True)
    except Exception as e:  # pylint: disable=broad-except
      if not caches.is_disk_full(e):
        restore_hook()
        raise
      raise self._disk_full(step) from None
    restore_hook()
    if not saved:
      raise RuntimeError(f"orbax declined to save step {step} in {self._directory}.")
    self._finisher = threading.Thread(target=self._finish, args=(step,),
                                      name=f"reducr-checkpoint-{step}", daemon=True)
    self._finisher.start()
    preemption.pending_write(self.wait)

  def _finish(self, step: int) -> None:
    """Finisher thread: waits for orbax's write and rename, then (process 0) writes the
    manifest and rotates. Its error is raised by :meth:`wait`."""
    try:
      self._manager.wait_until_finished()
      self._write_manifest(step)
    except BaseException as e:  # pylint: disable=broad-except
      self._failure = (step, e)

  def wait(self) -> None:
    """Waits until the pending save is renamed into place and has its manifest; raises
    the error it failed with (a full disk: :class:`reducr_jax.run.caches.DiskFullError`)."""
    finisher = self._finisher
    if finisher is None:
      return
    finisher.join()
    if self._finisher is not finisher:  # a stop signal's wait, inside this one, finished it
      return
    self._finisher = None
    preemption.pending_write(None)
    self._reload()                  # steps rotated away by the finisher
    if self._failure is not None:
      (step, e), self._failure = self._failure, None
      if caches.is_disk_full(e):
        raise self._disk_full(step) from None
      raise e

  def _reload(self, attempts: int = 20) -> None:
    """Re-reads the steps on disk. Another process's rotation (process 0's finisher
    deletes old steps while the others re-read) can remove a step between orbax's listing
    and its ``stat`` of it (``FileNotFoundError``, seen in 1 of 10 two-process runs, which
    then hung the other process in its next collective): list again."""
    for attempt in range(attempts):
      try:
        self._manager.reload()
        return
      except FileNotFoundError:
        if attempt == attempts - 1:
          raise
        time.sleep(0.05)

  def _disk_full(self, step: int) -> caches.DiskFullError:
    if jax.process_index() == 0:      # this save's temporary directory
      for p in epath.Path(self._directory).glob(f"{step}{checkpoint_io.TMP_MARKER}*"):
        p.rmtree(missing_ok=True)
    return caches.DiskFullError(
        f"disk full while saving checkpoint {step} in {self._directory}: free space and "
        "run the same command again (it resumes from the last checkpoint)")

  def _step_dir(self, step: int) -> str:
    return os.path.join(self._directory, str(int(step)))

  def _write_manifest(self, step: int) -> None:
    """Process 0 writes the content hash of a finalised step, last, then rotates."""
    if jax.process_index() == 0:
      step_dir = self._step_dir(step)
      checkpoint_io.write_manifest(step_dir, step)
      self._rotate()

  def _rotate(self) -> None:
    """Keeps the newest ``max_to_keep`` steps that have a manifest; deletes older steps
    and steps without a manifest older than the newest one with a manifest."""
    if self._max_to_keep is None:
      return
    steps = sorted((int(p.name) for p in epath.Path(self._directory).iterdir()
                    if p.name.isdigit()), reverse=True)
    verified = [s for s in steps if epath.Path(self._step_dir(s), MANIFEST).exists()]
    keep = set(verified[:self._max_to_keep])
    for s in steps:
      if keep and s not in keep and s < max(keep):
        epath.Path(self._step_dir(s)).rmtree(missing_ok=True)

  def verify(self, step: int) -> Optional[str]:
    """``None`` when ``step`` matches its manifest, else what is wrong (one phrase)."""
    self.wait()
    return checkpoint_io.check_manifest(self._step_dir(step), NO_MANIFEST)

  def restore_newest_intact(self, template: PyTree | None
                            ) -> Optional[tuple[int, PyTree]]:
    """``(step, state)`` of the newest step that verifies and loads; ``None`` if none.

    Each damaged step met on the way (see :meth:`verify`, or failing to load) is
    reported in one warning line naming it and deleted, so the run can save that step
    again. ``template`` ``None``: the tree as stored (numpy leaves; for caches).
    Collective (every process verifies the same files; process 0 deletes).
    """
    for step in sorted(self.all_steps(), reverse=True):
      problem = self.verify(step)
      unverified = problem == NO_MANIFEST
      if unverified:
        _log.warning("checkpoint %s has %s; restoring it unverified", self._step_dir(step),
                     NO_MANIFEST)
        problem = None
      if problem is None:
        self._check_layout(template, step)
        try:
          state = self.restore(template, step, verify=False)
        except Exception as e:  # pylint: disable=broad-except
          what = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]
          if not unverified:        # its bytes are those written: not damage
            raise self._mismatch(step, f"it does not load: {what}") from None
          problem = f"cannot be restored: {what}"
        else:
          bad = checkpoint_io.non_finite(template, state) if unverified else []
          if not bad:
            return step, state
          problem = f"non-finite values in {', '.join(bad[:3])}"
      _log.warning("checkpoint %s is damaged (%s); deleting it and trying an older one",
                   self._step_dir(step), problem)
      self.delete(step)
    return None

  def delete(self, step: int) -> None:
    """Deletes ``step`` (process 0; collective)."""
    if jax.process_index() == 0:
      epath.Path(self._step_dir(step)).rmtree(missing_ok=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"reducr_delete_{step}")
    self._reload()

  def _mismatch(self, step: int, what: str) -> CheckpointMismatch:
    return CheckpointMismatch(
        f"checkpoint {self._step_dir(step)} holds another state than this config builds "
        f"({what}): it was written by another config; it is kept (nothing deleted): use a "
        "new --workdir, or the config that wrote it")

  def _check_layout(self, template: PyTree | None, step: int) -> None:
    """Raises :class:`CheckpointMismatch` when the step's stored tree (orbax's own
    metadata) has other array shapes than ``template`` (nothing when it is unreadable)."""
    if template is None:
      return
    try:
      stored = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self._step_dir(step), _STATE))
      stored = jax.tree.leaves(getattr(stored, "tree", stored),
                               is_leaf=lambda x: hasattr(x, "shape"))
    except Exception:  # pylint: disable=broad-except  # unreadable: restoring decides
      return
    a = checkpoint_io.shape_list(stored)
    b = checkpoint_io.shape_list(jax.tree.leaves(template))
    if a != b:
      diff = sorted(set(a) ^ set(b))[:3]
      raise self._mismatch(step, f"{len(a)} arrays, {len(b)} expected; shapes differ: "
                           f"{', '.join(map(str, diff)) or 'in how many there are'}")

  def restore(self, template: PyTree | None, step: int | None = None, *,
              verify: bool = True) -> PyTree:
    """The state saved as ``step`` (default: the latest step).

    Args:
      template: a pytree with the structure, leaf types, dtypes and shapes (and, for jax
        arrays, shardings) of the state, e.g. a freshly initialised train state; leaves
        may be ``jax.ShapeDtypeStruct``. ``None``: the stored tree, numpy leaves.
      step: which step; ``None`` for :meth:`latest_step`.
      verify: check the step against its manifest first (one without is restored).

    Raises:
      FileNotFoundError: no checkpoint at all, or none for ``step``.
      CheckpointDamaged: ``verify`` and the step does not match its manifest.
    """
    self._check_open()
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"No checkpoint found in {self._directory}.")
    if step not in self.all_steps():
      self._reload()  # Possibly written by another job since we listed.
      if step not in self._manager.all_steps():
        raise FileNotFoundError(
            f"No complete checkpoint for step {step} in {self._directory} "
            f"(available: {self.all_steps()}).")
    if verify:
      problem = self.verify(step)
      if problem is not None and problem != NO_MANIFEST:
        raise CheckpointDamaged(f"checkpoint {self._step_dir(step)} is damaged: {problem}")
    if template is None:
      target = None
    else:
      target = jax.tree_util.tree_map_with_path(checkpoint_io.restore_target, template)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(target)}))[_STATE]
    return checkpoint_io.like_template(template, restored)

  def close(self) -> None:
    """Waits for the pending save (raising its error) and releases orbax's resources."""
    if not self._closed:
      try:
        self.wait()
      finally:
        self._closed = True
        self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, *exc: Any) -> None:
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      if exc_type is None:
        raise
      _log.warning("checkpoint save in %s failed too: %s", self._directory, e)

  def __repr__(self) -> str:
    return f"Checkpointer(directory={self._directory!r}, max_to_keep={self._max_to_keep})"


def write_cache(directory: epath.PathLike, tree: PyTree, fingerprint: str) -> None:
  """Saves ``tree`` (numpy leaves) as the cache ``directory`` (step 0, verified like a
  checkpoint) with the ``fingerprint`` of the config it was computed for; returns once
  written and verified. Collective: every process calls it with the same tree."""
  with Checkpointer(directory, max_to_keep=1) as ckpt:
    ckpt.save(0, tree, {"fingerprint": fingerprint})


def read_cache(directory: epath.PathLike, fingerprint: str) -> Optional[PyTree]:
  """The cached tree (numpy leaves), or ``None`` when it must be (re)built.

  Missing: ``None`` silently. Damaged, or written for another config (another fingerprint
  in its record: a directory copied under this config's name): one warning line naming
  it, deleted, ``None``. An old-format cache file ``<directory>.msgpack`` / ``.npz`` (a
  hashed single file, before caches were checkpoints) is deleted with one line and
  rebuilt once.
  """
  directory = epath.Path(caches.absolute(directory))
  for old in (directory.parent / f"{directory.name}{s}" for s in (".msgpack", ".npz")):
    if old.exists():
      _log.warning("cache %s is in the old single-file format; deleting it and rebuilding "
                   "it as %s", old, directory)
      old.unlink(missing_ok=True)
  if not directory.is_dir():
    return None
  with Checkpointer(directory, max_to_keep=1) as ckpt:
    stored = (stored_config(directory / "0") or {}).get("fingerprint")
    if ckpt.all_steps() == [0] and stored == fingerprint:
      found = ckpt.restore_newest_intact(None)
      if found is not None:
        return found[1]
    else:
      problem = (f"written for another config: fingerprint {stored or '<none>'}, this "
                 f"config's {fingerprint}" if ckpt.all_steps() else "no complete step")
      _log.warning("cache %s is damaged (%s); rebuilding it", directory, problem)
  if jax.process_index() == 0:
    directory.rmtree(missing_ok=True)
  return None

"""The workdir's lock and its record of the run's config.

Lock. ``<workdir>/reducr.lock`` holds the holder's host, PID and start time; a second run
on the same workdir is refused with one line naming the holder. A lock whose process is
gone is taken over (with a warning): on the same host when its PID no longer runs; from
another host (a requeued SLURM job lands on another node) when its heartbeat — the holder
rewrites the file every :data:`HEARTBEAT_S` seconds — is older than
:data:`STALE_AFTER_S`. A multi-process run holds one lock, taken by process 0; every
process learns the outcome. Creation is atomic (``O_EXCL``) on local and NFS-like file
systems; on ``gs://`` two runs starting in the same second can both win (documented in
the README).

Recorded config. ``<workdir>/config.json`` is the config of the run that owns the workdir.
A later run with the same workdir that would resume something (a checkpoint or a
``results.json`` exists) must agree with it in every field except
:data:`RESUMABLE_FIELDS`, otherwise :func:`check_config` refuses it with one line listing
the fields that differ (:class:`reducr_jax.core.errors.ConfigError`, exit 2). Each
checkpoint and ``results.json`` hold the config too, and are compared as well. A workdir
whose run stopped before its first checkpoint has nothing to resume: a new config simply
replaces the record (caches are keyed by their own fingerprints).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any, Iterator, Mapping, Optional

from absl import logging
from etils import epath
import numpy as np

from reducr_jax.run import caches
from reducr_jax.config import config_schema
from reducr_jax.core import errors

LOCK_NAME = "reducr.lock"
CONFIG_NAME = "config.json"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0

# Fields that may change when a run resumes (config_schema.RESUMABLE_FIELDS: how long, how
# often evaluated/logged/saved, on how many devices, where caches and raw data are read).
RESUMABLE_FIELDS = config_schema.RESUMABLE_FIELDS


class WorkdirBusy(errors.RunError):
  """Another live run holds the workdir's lock (exit status 1)."""


# --------------------------------------------------------------------------------------
# Lock.


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _create_exclusive(path: epath.Path, data: bytes) -> bool:
  """Creates ``path`` holding ``data`` unless it exists; True when this call created it."""
  if "://" in os.fspath(path):          # object stores: no O_EXCL, best effort
    if path.exists():
      return False
    path.write_bytes(data)
    return True
  try:
    fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  try:
    os.write(fd, data)
  except OSError as e:
    os.close(fd)
    os.unlink(os.fspath(path))
    if caches.is_disk_full(e):
      raise caches.DiskFullError(f"disk full while writing {path}: free space and run the "
                                 "same command again") from None
    raise
  os.close(fd)
  return True


def read_holder(path: epath.PathLike) -> Optional[dict]:
  """The lock file's holder, ``{}`` for an unreadable file, ``None`` when there is none."""
  path = epath.Path(path)
  try:
    holder = json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def holder_is_gone(holder: Mapping[str, Any], mtime: float,
                   stale_after_s: float = STALE_AFTER_S) -> bool:
  """Whether the process that wrote a lock is certainly gone (see the module docstring)."""
  if not holder or not isinstance(holder.get("pid"), int):
    return time.time() - mtime > stale_after_s      # garbage: only once it is old
  return caches.writer_is_dead(str(holder.get("host", "")), holder["pid"], mtime,
                               stale_after_s)


class Lock:
  """A held workdir lock; :meth:`release` (or the context manager) gives it back."""

  def __init__(self, workdir: epath.PathLike, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.path = epath.Path(workdir) / LOCK_NAME
    self._info = _holder()
    data = json.dumps(self._info).encode()
    for attempt in range(2):
      if _create_exclusive(self.path, data):
        break
      holder = read_holder(self.path)
      if holder is None:                      # released between the two calls
        continue
      try:
        mtime = self.path.stat().mtime
      except OSError:
        continue
      if attempt == 0 and holder_is_gone(holder, mtime, stale_after_s):
        logging.warning("taking over the stale lock %s of %s (that process is gone)",
                        self.path, _describe(holder))
        self.path.unlink(missing_ok=True)
        continue
      raise WorkdirBusy(f"workdir {self.path.parent} is in use by {_describe(holder)} "
                        f"(lock {self.path}); wait for that run to end, or delete the lock "
                        "if that process is gone")
    else:
      raise WorkdirBusy(f"could not take the lock {self.path}; retry")
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
    self._thread.start()

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        if read_holder(self.path) == self._info:
          caches.atomic_write(self.path, json.dumps(self._info).encode())
      except Exception:  # pylint: disable=broad-except  # a missed beat is harmless
        pass

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock file if it is still ours (idempotent)."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join(timeout=5)
    if read_holder(self.path) == self._info:
      self.path.unlink(missing_ok=True)

  def __enter__(self) -> "Lock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _describe(holder: Mapping[str, Any]) -> str:
  if not holder:
    return "an unreadable lock holder"
  return f"PID {holder.get('pid')} on host {holder.get('host')}"


@contextlib.contextmanager
def lock(workdir: epath.PathLike) -> Iterator[Optional[Lock]]:
  """Holds the workdir lock for the block; collective in a multi-process run.

  Process 0 takes the lock; the outcome is broadcast so every process raises the same
  :class:`WorkdirBusy` when it is refused.
  """
  import jax  # pylint: disable=g-import-not-at-top
  held, error = None, None
  if jax.process_index() == 0:
    try:
      held = Lock(workdir)
    except WorkdirBusy as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok) and error is None:
      error = WorkdirBusy(f"workdir {workdir} is in use by another run (see process 0)")
  if error is not None:
    raise error
  if held is not None:
    caches.remove_stale_temp_files(workdir)      # results/config/metrics of a dead writer
  try:
    yield held
  finally:
    if held is not None:
      held.release()


# --------------------------------------------------------------------------------------
# Recorded config.


def flatten(config: Any) -> dict[str, Any]:
  """``{"a.b": value}`` of every leaf field of a ConfigDict or a JSON mapping, values as
  JSON gives them back (tuples → lists), so a live config compares equal to its recorded
  copy."""
  if hasattr(config, "to_json_best_effort"):      # a live ConfigDict
    config = json.loads(config.to_json_best_effort())
  out = {}
  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, Mapping):
        walk(value, name + ".")
      else:
        out[name] = value
  walk(config, "")
  return out


def _with_added_fields(config) -> dict[str, Any]:
  """:func:`flatten`, fields of ``config_schema.ADDED_FIELDS`` filled in where absent."""
  return {**config_schema.ADDED_FIELDS, **flatten(config)}


def changed_fields(recorded: Mapping[str, Any], current: Mapping[str, Any],
                   resumable=RESUMABLE_FIELDS) -> list[str]:
  """Sorted dotted names whose values differ (or exist in one only), except ``resumable``.
  A field of :data:`reducr_jax.config.config_schema.ADDED_FIELDS` absent on one side counts as
  holding its listed value (what runs recorded before it existed did)."""
  a, b = _with_added_fields(recorded), _with_added_fields(current)
  return sorted(k for k in set(a) | set(b)
                if k not in resumable and (k not in a or k not in b or a[k] != b[k]))


def recorded_configs(workdir: epath.PathLike) -> Iterator[tuple[str, Optional[dict]]]:
  """``(where, config)`` of every record of the config that wrote ``workdir``'s run state:
  ``config.json``, each checkpoint step (its stored metadata) and ``results.json``
  (``config`` ``None`` when that record is unreadable or holds none)."""
  from reducr_jax.run import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = epath.Path(workdir)
  path = workdir / CONFIG_NAME
  if path.exists():
    try:
      yield os.fspath(path), json.loads(path.read_text())
    except (OSError, ValueError):
      logging.warning("recorded config %s is unreadable; checking the checkpoints' and "
                      "results' records", path)
  ckpts = workdir / "checkpoints"
  if ckpts.is_dir():
    for step in sorted((p for p in ckpts.iterdir() if p.name.isdigit()),
                       key=lambda p: -int(p.name)):
      yield os.fspath(step), checkpointing.stored_config(step)
  results = workdir / "results.json"
  if results.exists():
    try:
      yield os.fspath(results), json.loads(results.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
      pass


def check_config(workdir: epath.PathLike, config: Any) -> None:
  """Refuses a config that changes the run recorded in ``workdir``; records it otherwise.

  The first run of a workdir writes ``config.json``; later runs compare against it and
  rewrite it (so an extended ``num_steps`` is recorded). The config is also stored in
  every checkpoint and in ``results.json``, and compared with those too: a deleted,
  unreadable or hand-edited ``config.json`` does not let another config resume (or
  overwrite) the run. Only process 0 writes.

  Raises:
    ConfigError: one line listing the fields that differ and cannot change on resume.
  """
  import jax  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / CONFIG_NAME
  current = json.loads(config.to_json_best_effort())
  if has_run_state(workdir):
    for where, recorded in recorded_configs(workdir):
      if not isinstance(recorded, dict):
        continue
      changed = changed_fields(recorded, current)
      if changed:
        a, b = _with_added_fields(recorded), _with_added_fields(current)
        shown = ", ".join(f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})"
                          for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise errors.ConfigError(
            f"--workdir {workdir} holds a run with a different config: {shown}{more}; "
            f"use a new --workdir, or the recorded config ({where})")
  if jax.process_index() == 0:
    caches.atomic_write(path, json.dumps(current, indent=2, sort_keys=True).encode())


def has_run_state(workdir: epath.PathLike) -> bool:
  """Whether ``workdir`` holds something a run would resume: a checkpoint step or results."""
  workdir = epath.Path(workdir)
  ckpts = workdir / "checkpoints"
  steps = ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
  return steps or (workdir / "results.json").exists()


def check_num_steps(config: Any, restored_step: int) -> None:
  """``num_steps`` may be extended on resume, not cut below the checkpointed step."""
  if restored_step > config.num_steps:
    raise errors.ConfigError(
        f"config.num_steps={config.num_steps} is below the checkpointed step "
        f"{restored_step}; it can only be extended on resume")

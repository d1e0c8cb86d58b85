"""Atomic files in the workdir (results, config, metrics), the full-disk error, stale
temporary files.

Every file the trainer writes goes through :func:`atomic_write`: the bytes go to
``<name>.tmp-<host>-<pid>`` next to the target and are renamed over it, so a reader never
sees half a file, whatever kills the writer. A full disk (``ENOSPC``/``EDQUOT``) removes
the temporary file and raises :class:`DiskFullError` (one line; a re-run with space
resumes). Paths are :mod:`etils.epath` paths, so the same code serves local and
``gs://`` directories (only local paths are tested).

The caches (reference models, pruning scores) are checkpoints:
:func:`reducr_jax.run.checkpointing.write_cache`.

:func:`remove_stale_temp_files` deletes the temporary files of dead writers.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from etils import epath

from reducr_jax.core import errors

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
TMP_MARKER = ".tmp-"
# Temporary files of another host cannot be checked for a live writer: they are removed
# only when this old.
FOREIGN_TMP_AGE_S = 24 * 3600


class DiskFullError(errors.RunError):
  """No space left for a file of the run (exit status 1)."""


def absolute(path: epath.PathLike) -> str:
  """``path`` made absolute (``~`` expanded); URLs such as ``gs://b/x`` are kept as they are."""
  path = os.fspath(path)
  if "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def temp_name(path: epath.PathLike) -> epath.Path:
  """The temporary file a writer on this host and process uses for ``path``."""
  path = epath.Path(path)
  return path.parent / f"{path.name}{TMP_MARKER}{socket.gethostname()}-{os.getpid()}"


def is_disk_full(e: BaseException) -> bool:
  """True for an ``OSError`` (or an error whose text says so) meaning the disk is full."""
  if isinstance(e, OSError) and e.errno in _DISK_FULL:
    return True
  return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


def atomic_write(path: epath.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file and a rename.

  Raises:
    DiskFullError: the disk is full; no temporary file is left behind.
  """
  path = epath.Path(path)
  tmp = temp_name(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as f:
      f.write(data)
    tmp.replace(path)
  except BaseException as e:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    if is_disk_full(e):
      raise DiskFullError(f"disk full while writing {path}: free space and run the same "
                          "command again (it resumes)") from None
    raise


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:       # exists, owned by someone else
    return True
  return True


def writer_is_dead(host: str, pid: int, mtime: float,
                   foreign_age_s: float = FOREIGN_TMP_AGE_S) -> bool:
  """Whether a writer identified by ``host``/``pid`` is certainly gone.

  On this host: its PID is not running. On another host: nothing can be checked, so only
  when its file has not changed for ``foreign_age_s`` seconds.
  """
  if host == socket.gethostname():
    return pid != os.getpid() and not _pid_alive(pid)
  return time.time() - mtime > foreign_age_s


def remove_stale_temp_files(directory: epath.PathLike) -> list[str]:
  """Deletes ``*.tmp-<host>-<pid>`` (and older ``*.tmp-<pid>``) files whose writer is dead.

  Returns the names removed.
  """
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  removed = []
  for p in directory.iterdir():
    name = p.name
    if TMP_MARKER not in name or p.is_dir():
      continue
    host, _, pid = name.rsplit(TMP_MARKER, 1)[1].rpartition("-")
    if not pid.isdigit():
      continue
    host = host or socket.gethostname()     # `<name>.tmp-<pid>` of older versions
    try:
      mtime = p.stat().mtime
    except OSError:
      continue
    if writer_is_dead(host, int(pid), mtime):
      p.unlink(missing_ok=True)
      removed.append(name)
  return removed

"""Command-line plumbing shared by ``reducr_jax.main`` and ``reducr_jax.experiments.*``.

Defines ``--config`` (an ml_collections config file, or a built-in config by name or by its
repository path from any directory; every field overridable as ``--config.a.b=value``) and ``--workdir``, and turns bad input into one line on stderr
and exit status 2: flag errors, unknown ``--config.*`` fields, a missing or broken
``--config`` file, and :class:`reducr_jax.config.configuration.ConfigError` raised before any work.
A :class:`reducr_jax.core.errors.RunError` (diverged run, full disk, busy workdir, preemption
signal) is one line ``<prefix>: <message>`` and its own exit status (README "Failure
modes"). Logging: ``--verbosity``/``-v`` is honoured; without it absl logs WARNING and
above (the trainer's progress lines are printed, not logged).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                         lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run (auto-detected on TPU VMs and SLURM).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
MULTI_PROCESS = flags.DEFINE_bool(
    "multi_process", False,
    "Call jax.distributed.initialize() and let JAX detect the cluster (Cloud TPU VM pod "
    "slices, whose workers JAX finds through the metadata server; SLURM; Open MPI).")


def _cluster_detected() -> bool:
  """True under a multi-task SLURM job or on a multi-host TPU VM slice."""
  slurm = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS") or "1"
  return slurm != "1" or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
  """Starts JAX's multi-controller runtime when this is one process of several.

  Explicit ``--coordinator_address/--num_processes/--process_id`` win; otherwise, with
  ``--multi_process`` (what ``launch/tpu_vm.sh`` passes), under SLURM with more than one
  task, or on GKE TPU pods (``TPU_WORKER_HOSTNAMES``), ``jax.distributed.initialize()``
  detects everything itself. A single process does nothing.
  """
  explicit = [COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      fail("--coordinator_address, --num_processes and --process_id must be given together")
    if not 0 <= PROCESS_ID.value < NUM_PROCESSES.value:
      fail(f"--process_id must be in [0, {NUM_PROCESSES.value}), got {PROCESS_ID.value}")
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  elif MULTI_PROCESS.value or _cluster_detected():
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def fail(message: str, exit_code: int = 2, prefix: str = "error") -> None:
  """Prints ``<prefix>: <first line of message>`` to stderr and exits with ``exit_code``."""
  line = f"{prefix}: {message}" if prefix else message
  print(line.splitlines()[0] if line else line, file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


def config():
  """The ``--config`` ConfigDict, or one line and exit 2 when the file is missing, does
  not load (syntax error, failing import, exception in ``get_config``) or does not give
  a ConfigDict."""
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top
  try:
    path = FLAGS["config"].config_filename
  except Exception:  # pylint: disable=broad-except
    path = ""
  if not path:
    fail("--config must name a config file, e.g. --config=configs/default.py")
  if not os.path.isfile(path.partition(":")[0]):
    fail(f"--config file {path.partition(':')[0]} does not exist")
  try:
    value = CONFIG.value
    if type(value).__name__ == "_ErrorConfig":
      value.keys()                   # ml_collections defers load errors to first access
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e.__context__ or e
    fail(f"--config file {path} cannot be loaded: {_last_line(cause if str(cause) else e)}")
  if not isinstance(value, config_dict.ConfigDict):
    fail(f"--config file {path}: get_config() must return a ConfigDict, got "
         f"{type(value).__name__}")
  return value


def _config_arg(argv: list[str]):
  """The value of ``--config=FILE[:ARG]`` / ``--config FILE[:ARG]`` in ``argv``, or None."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _with_built_in_config(argv: list[str]) -> list[str]:
  """``argv`` with a ``--config`` that names no file but a built-in config (``default``,
  ``configs/cifar10.py`` run from another directory) replaced by that config's path
  (:func:`reducr_jax.config.config_files.resolve`)."""
  from reducr_jax.config import config_files  # pylint: disable=g-import-not-at-top  # light
  path = _config_arg(argv)
  file, sep, arg = (path or "").partition(":")
  if not file or os.path.isfile(file):
    return argv
  try:
    found = config_files.resolve(file) + sep + arg
  except ValueError:
    return argv                         # reported as a missing file, as before
  out, i = list(argv), 0
  while i < len(out):
    if out[i].startswith("--config="):
      out[i] = "--config=" + found
    elif out[i] == "--config" and i + 1 < len(out):
      out[i + 1] = found
      i += 1
    i += 1
  return out


def _no_get_config(e: BaseException) -> bool:
  """``e`` says the ``--config`` module has no ``get_config`` (an empty file, a typo)."""
  return "has no attribute 'get_config'" in str(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides, a missing
  ``--config``, a config file without ``get_config`` and a failing ``FILE:ARG``."""
  argv = _with_built_in_config(argv)
  path = _config_arg(argv) or ""
  file, _, arg = path.partition(":")
  overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  if overrides and not path:
    fail(f"{overrides[0]} overrides a field of the config file, but no --config=FILE is "
         "given (e.g. --config=configs/default.py)")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Error whilst parsing config file" in text:    # ml_collections: a traceback follows
      with_arg = f" with argument {arg!r} (get_config({arg!r}))" if arg else ""
      if _no_get_config(e):
        fail(f"--config file {file} defines no get_config() function (an empty file, or "
             "a misspelt name?)")
      fail(f"--config file {file} cannot be loaded{with_arg}: {_last_line(e)}")
    fail(text)

  except AttributeError as e:
    if _no_get_config(e):
      fail(f"--config file {file} defines no get_config() function (an empty file, or a "
           "misspelt name?)")
    _unknown_field(argv, e)
  except KeyError as e:
    _unknown_field(argv, e)
  except Exception as e:  # pylint: disable=broad-except  # the --config file failed to run
    fail(f"--config file {file} cannot be loaded: {_last_line(e)}")
  return []  # unreachable


def _unknown_field(argv: list[str], e: BaseException) -> None:
  """ml_collections reports an unknown field as AttributeError("'name'\nDid you mean ...")."""
  text = str(e).encode().decode("unicode_escape").strip("'\"")
  field, _, hint = text.partition("\n")
  field = field.strip("'\"")
  arg = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
              field in a.split("=")[0].split(".")), f"--config.…{field}")
  hint = f" ({hint.strip()})" if hint.strip() else ""
  fail(f"{arg}: no such config field{hint}")


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)`` with one-line errors for flags and config errors."""
  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:      # honour --verbosity; quiet by default
      logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
    from reducr_jax.core import errors  # pylint: disable=g-import-not-at-top
    try:
      main(argv)
    except configuration.ConfigError as e:
      fail(str(e))
    except errors.RunError as e:
      print(f"{e.prefix}: {e}" if e.prefix else str(e), file=sys.stderr, flush=True)
      exit_at_once(e.exit_code, shutdown=getattr(e, "collective", True))
  app.run(wrapped, flags_parser=parse_flags)


def exit_at_once(code: int, shutdown: bool = True) -> None:
  """Ends the process with ``code`` without the interpreter's teardown (``os._exit``).

  A run that stops (signal, divergence, full disk) may leave the batch-prefetch thread
  inside JAX (``device_put``); a normal exit tears the runtime down under it, which
  crashed with SIGSEGV / SIGABRT after the right line in some trials. Everything the run
  writes is already on disk (atomic files; checkpoints waited for); output streams and
  log handlers are flushed here. ``shutdown``: in a multi-process run, first leave JAX's
  distributed runtime together with the other processes (they stop at the same step).
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  for handler in list(std_logging.getLogger().handlers) + list(
      std_logging.getLogger("absl").handlers):
    try:
      handler.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  jax = sys.modules.get("jax")
  if shutdown and jax is not None:
    try:
      if jax.process_count() > 1:
        jax.distributed.shutdown()
    except Exception:  # pylint: disable=broad-except
      pass
  os._exit(code)  # pylint: disable=protected-access

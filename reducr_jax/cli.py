"""Command-line plumbing shared by ``reducr_jax.main`` and ``reducr_jax.experiments.*``.

Defines ``--config`` (an ml_collections config file; every field overridable as
``--config.a.b=value``) and ``--workdir``, and turns bad input into one line on stderr
and exit status 2: flag errors, unknown ``--config.*`` fields, and
:class:`reducr_jax.configuration.ConfigError` raised before any work.
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


def fail(message: str) -> None:
  """Prints ``error: <first line of message>`` to stderr and exits with status 2."""
  print(f"error: {message}".splitlines()[0], file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field as AttributeError("'name'\nDid you mean ...").
    text = str(e).encode().decode("unicode_escape").strip("'\"")
    field, _, hint = text.partition("\n")
    field = field.strip("'\"")
    arg = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
                field in a.split("=")[0].split(".")), f"--config.…{field}")
    hint = f" ({hint.strip()})" if hint.strip() else ""
    fail(f"{arg}: no such config field{hint}")
  return []  # unreachable


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)`` with one-line errors for flags and config errors."""
  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    from reducr_jax import configuration  # pylint: disable=g-import-not-at-top
    try:
      main(argv)
    except configuration.ConfigError as e:
      fail(str(e))
  app.run(wrapped, flags_parser=parse_flags)

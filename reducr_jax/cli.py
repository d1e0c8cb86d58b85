"""Command-line plumbing shared by ``reducr_jax.main`` and ``reducr_jax.experiments.*``.

Defines ``--config`` (an ml_collections config file; every field overridable as
``--config.a.b=value``) and ``--workdir``, and turns bad input into one line on stderr
and exit status 2: flag errors, unknown ``--config.*`` fields, and
:class:`reducr_jax.configuration.ConfigError` raised before any work.
"""

from __future__ import annotations

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
    from reducr_jax import configuration  # pylint: disable=g-import-not-at-top
    try:
      main(argv)
    except configuration.ConfigError as e:
      fail(str(e))
  app.run(wrapped, flags_parser=parse_flags)

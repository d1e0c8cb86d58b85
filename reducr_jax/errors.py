"""Errors that end a run with one line and a documented exit status (see README "Failure modes").

:class:`RunError` is raised by the trainer for conditions that are not a bug: a diverged
run, a full disk, a busy workdir, a preemption signal. ``reducr_jax.cli`` prints
``error: <message>`` (one line) and exits with :attr:`RunError.exit_code`.
:class:`reducr_jax.configuration.ConfigError` (bad input, exit 2) is separate.
"""

from __future__ import annotations


class RunError(Exception):
  """A run stopped for a reason the user can act on; ``str(e)`` is one line."""

  exit_code: int = 1
  prefix: str = "error"     # the CLI prints "<prefix>: <message>" ("" → the message alone)

  def __init__(self, message: str, exit_code: int | None = None):
    super().__init__(message.splitlines()[0] if message else message)
    if exit_code is not None:
      self.exit_code = exit_code

"""Errors that end a run with one line and a documented exit status (see README "Failure
modes"). A leaf module: nothing from the package is imported.

* :class:`ConfigError` (exit 2): a config field, flag or data-dependent size that is not
  allowed; the message names the field. It lives here, not in
  :mod:`reducr_jax.config.configuration`, so that the data and model code can raise it (a holdout
  larger than the pool, an undecodable image) without importing the configuration module,
  which imports them.
* :class:`RunError` (exit :attr:`RunError.exit_code`): a condition that is not a bug — a
  diverged run, a full disk, a busy workdir, a preemption signal.

``reducr_jax.cli`` prints ``error: <message>`` (one line) for both.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config field has a value that is not allowed; the message names the field."""


class RunError(Exception):
  """A run stopped for a reason the user can act on; ``str(e)`` is one line."""

  exit_code: int = 1
  prefix: str = "error"     # the CLI prints "<prefix>: <message>" ("" → the message alone)

  def __init__(self, message: str, exit_code: int | None = None):
    super().__init__(message.splitlines()[0] if message else message)
    if exit_code is not None:
      self.exit_code = exit_code

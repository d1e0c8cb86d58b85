"""Errors shared by every layer (a leaf module: nothing from the package imported).

:class:`ConfigError` is what the command line prints as one ``error: ...`` line (exit
status 2). It lives here, not in :mod:`reducr_jax.configuration`, so that the data and
model code can raise it for data-dependent problems (a holdout larger than the pool, an
undecodable image) without importing the configuration module, which imports them.
"""


class ConfigError(ValueError):
  """A config field has a value that is not allowed; the message names the field."""

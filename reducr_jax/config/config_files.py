"""Loading config files and the built-in configs: a light module (no JAX, no trainer).

The built-in configs are the files of ``configs/`` shipped with the package (next to
``reducr_jax/``; :data:`CONFIG_DIR`). :func:`load_config` takes a file path, a built-in
name (``"default"``, ``"cifar10"``, ``"cinic10:official"``) or the repository path of one
(``"configs/default.py"``, which works from any directory), so::

  from reducr_jax.config import config_files
  config = config_files.load_config("default")     # = reducr_jax.default_config()

Child configs load their parent with :func:`load_config` too (``configs/cifar100.py``:
``load_config("cifar10")``): it imports only ``ml_collections`` and
:mod:`reducr_jax.core.errors`, not the 50 modules of the trainer.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from reducr_jax.core.errors import ConfigError

# reducr_jax/config/config_files.py -> the folder holding reducr_jax/ and configs/.
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def names() -> tuple:
  """The built-in config names (the ``.py`` files of :data:`CONFIG_DIR`), sorted."""
  if not os.path.isdir(CONFIG_DIR):
    return ()
  return tuple(sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                      if f.endswith(".py") and not f.startswith("_")))


def resolve(path: str) -> str:
  """The file a config argument names: an existing file; else a built-in name
  (``"default"``) or a path ending in ``configs/<name>.py`` → the built-in file.

  Raises:
    ConfigError: neither (one line listing the built-in names).
  """
  if os.path.isfile(path):
    return path
  head, base = os.path.split(path)
  name = base[:-3] if base.endswith(".py") else base
  builtin = (not head and not base.endswith(".py")) or (
      base.endswith(".py") and os.path.basename(os.path.normpath(head)) == "configs")
  candidate = os.path.join(CONFIG_DIR, name + ".py")
  if builtin and name in names():
    return candidate
  raise ConfigError(f"--config file {path} does not exist (built-in configs: "
                    f"{', '.join(names())})")


def load_config(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file or built-in config (:func:`resolve`).

  ``path`` may end with ``:ARG``, passed to ``get_config(ARG)`` like ``config_flags``.

  Raises:
    ConfigError: no such file or built-in name, a file that cannot be executed, one
      without ``get_config()``, or one whose ``get_config()`` returns no ConfigDict.
  """
  path, _, arg = path.partition(":")
  path = resolve(path)
  spec = importlib.util.spec_from_file_location("_reducr_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise ConfigError(f"--config file {path} defines no get_config() function (an empty "
                        "file, or a misspelt name?)")
    config = module.get_config(arg) if arg else module.get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config file {path} cannot be loaded: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config file {path}: get_config() must return a ConfigDict, got "
                      f"{type(config).__name__}")
  return config


def default_config() -> ml_collections.ConfigDict:
  """The default config (``configs/default.py``: REDUCR on the embedded ``digits`` data),
  from any working directory."""
  return load_config("default")

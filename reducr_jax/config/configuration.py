"""The trainer's config entry points: validation, η, method overrides, workdir checks.

One import for the trainer and scripts. The field schema (allowed values, field classes)
is :mod:`reducr_jax.config.config_schema`; its checks, section by section, are
:mod:`reducr_jax.config.config_validation` (:func:`validate_config`, called by
:func:`reducr_jax.train.trainer.train_and_evaluate` before it touches the workdir, loads data or
compiles anything); config files and the built-in configs load through the light
:mod:`reducr_jax.config.config_files` (:func:`load_config`).
"""

from __future__ import annotations

import contextlib
import os
import sys

import ml_collections

from reducr_jax.config import config_files
from reducr_jax.config import config_schema
from reducr_jax.config import config_validation
from reducr_jax.core import selection
from reducr_jax import selectors
from reducr_jax.core.errors import ConfigError  # noqa: F401  (defined in a leaf module, re-exported)

# Allowed values and field classes live in the schema (reducr_jax.config.config_schema); these
# names stay for callers that read them here.
HOLDOUT_LOSSES = config_schema.HOLDOUT_LOSSES
HOLDOUT_SOURCES = config_schema.HOLDOUT_SOURCES
EXPERT_SELECT_ON = config_schema.EXPERT_SELECT_ON
EXPERT_LOSSES = config_schema.EXPERT_LOSSES
EXPERT_STRATEGIES = config_schema.EXPERT_STRATEGIES
ETA_AUTO = config_schema.ETA_AUTO     # config.selection.eta = "auto": see resolve_eta
PRUNING_STRATEGIES = config_schema.PRUNING_STRATEGIES
K_ROUNDINGS = config_schema.K_ROUNDINGS
ADDED_FIELDS = config_schema.ADDED_FIELDS

eta_field = config_schema.eta_field
check_finite = config_validation.check_finite
validate_config = config_validation.validate_config
Rules = config_validation.Rules
load_config = config_files.load_config     # a file, or a built-in name: "default"
k_for = selection.k_for       # the one rule for k (pure; selectors.reducr uses it too)
num_selected = config_validation.num_selected   # k of a config: the step, η='auto', size checks


def resolve_eta(config: ml_collections.ConfigDict, num_classes: int,
                announce=None):
  """``(config, η as used)``: a number as a float; ``"auto"`` as the anytime schedule
  ``{"schedule": "anytime", "eta_1", "eta_T", "num_updates"}`` of
  :func:`reducr_jax.selectors.reducr.resolved_eta` (``η_t = √(8 ln C / (t L²))`` at step t,
  L = k ln C: the anytime Hedge rate, :func:`reducr_jax.core.mwu.anytime_update`), reported in
  one line with ``announce`` (e.g. ``progress.say``). The config is returned unchanged: the
  rule computes η_t from its update count, so ``num_steps`` (resumable) does not change
  the steps already taken — a run extended from T to 2T steps is the 2T-step run.
  """
  eta = selectors.reducr.resolved_eta(config, num_classes)
  if isinstance(eta, dict) and announce is not None:
    c = num_classes
    announce(f"selection.eta = auto -> anytime eta_t = {eta['eta_1']:.4g}/sqrt(t) "
             f"(sqrt(8 ln C / (t L^2)), C = {c}, L = k ln C = {num_selected(config)} ln {c}; "
             f"{eta['eta_T']:.4g} at step T = {config.num_steps})")
  return config, eta


@contextlib.contextmanager
def _stderr_fd_discarded():
  """Discards what C/C++ code writes to file descriptor 2 inside the block (Python's
  ``sys.stderr`` is flushed first, so nothing of it is lost); the descriptor is restored."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "wb") as sink:
      os.dup2(sink.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def check_workdir(workdir: str) -> str:
  """Returns the absolute workdir after checking it can be created and written.

  A ``gs://bucket/dir`` workdir is probed with one read (does it exist?), no write; a
  storage that cannot be reached (no network, no credentials) is one line here instead of
  a traceback from the first write. Every file the trainer writes goes through
  :mod:`etils.epath` and orbax. Other URL schemes are refused.

  Raises:
    ConfigError: naming ``--workdir`` when it cannot be used.
  """
  if not workdir:
    raise ConfigError("--workdir must be a directory path, got ''")
  if "://" in workdir:
    if not workdir.startswith("gs://"):
      raise ConfigError(f"--workdir {workdir}: of storage URLs only gs:// is supported")
    workdir = workdir.rstrip("/")          # created on first write; see README (untested)
    try:
      from etils import epath  # pylint: disable=g-import-not-at-top
      with _stderr_fd_discarded():     # TensorFlow's GCS client logs its retries in C++
        epath.Path(workdir).exists()
    except Exception as e:  # pylint: disable=broad-except  # any storage client's error
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      raise ConfigError(f"--workdir {workdir} cannot be reached: {type(e).__name__}: "
                        f"{lines[0] if lines else ''}") from None
    return workdir
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir {path} exists and is not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir {path} cannot be written: {e.strerror or e}") from None
  return path


def check_output_dirs(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The directories a run writes into (checkpoints, experts and pruning caches, as
  :mod:`reducr_jax.train.reference_cache` / :mod:`reducr_jax.train.prune_stage` name them) must not be
  plain files: one line naming the path and its field, before any work (otherwise the run
  fails when it first writes there, after stage 1 or the training loop)."""
  if "://" in workdir:
    return
  dirs = [("--workdir", os.path.join(workdir, "checkpoints")),
          ("config.experts.cache_dir", config.experts.cache_dir or
           os.path.join(workdir, "experts")),
          ("config.pruning.cache_dir", config.pruning.cache_dir or
           os.path.join(workdir, "pruning"))]
  for field, path in dirs:
    path = os.path.expanduser(path)
    if "://" not in path and os.path.exists(path) and not os.path.isdir(path):
      raise ConfigError(f"{path} ({field}) exists and is not a directory: move the file "
                        "away or choose another path")


def apply_method_overrides(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``config.method_overrides[config.selection.method]`` applied (a copy;
  ``config`` itself when the method has none): the per-method settings of the official
  experiment yamls (e.g. CINIC-10 uniform at B = 640). The overrides stay in the config,
  so the result is a fixed point and a resumed run resolves the same way.

  Raises:
    ConfigError: a key that is not a registered rule, a field that does not exist, or one
      that may not differ by method (``selection.method``, ``method_overrides``).
  """
  flat = config_validation.check_method_overrides(config)
  if not flat:
    return config
  return with_overrides(config, flat)


def with_overrides(config: ml_collections.ConfigDict,
                   overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted fields set, e.g. ``{"selection.method": "uniform"}``.

  Field references are kept, so a field typed ``object`` (:func:`eta_field`) still takes
  a number or ``"auto"``.
  """
  config = ml_collections.ConfigDict(config.to_dict(preserve_field_references=True))
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config

"""Validation of a trainer config: one-line errors naming the field, before any work.

:func:`validate_config` is called by :func:`reducr_jax.train.train_and_evaluate` before it
touches the workdir, loads data or compiles anything, so a typo never costs a compile or
leaves a partial checkpoint behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import jax
import ml_collections

from reducr_jax import checks
from reducr_jax import class_weighted_losses
from reducr_jax import data
from reducr_jax import evaluation as evaluation_rules
from reducr_jax import models
from reducr_jax import optimizers
from reducr_jax import reweighters
from reducr_jax import selection
from reducr_jax import selectors
from reducr_jax.data import augment
from reducr_jax.errors import ConfigError  # noqa: F401  (defined in a leaf module, re-exported)
from reducr_jax.models import pretrained as model_pretrained

HOLDOUT_LOSSES = ("epoch", "ema")
HOLDOUT_SOURCES = ("holdout", "val")
EXPERT_SELECT_ON = ("val", "train_pool")
EXPERT_LOSSES = ("precomputed", "online", "multihead")
EXPERT_STRATEGIES = ("auto", "vmap", "map", "loop")
ETA_AUTO = "auto"                  # config.selection.eta = "auto": see resolve_eta
PRUNING_STRATEGIES = ("none", "random", "el2n", "grand", "forgetting", "dyn_unc", "drop")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _number(name, value, low=None, high=None, low_open=False, high_open=False, integer=False):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      integer and not float(value).is_integer()):
    kind = "an integer" if integer else "a number"
    raise ConfigError(f"{name} must be {kind}, got {value!r}")
  bad = ((low is not None and (value <= low if low_open else value < low)) or
         (high is not None and (value >= high if high_open else value > high)))
  if bad:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    rng = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    raise ConfigError(f"{name} must be in {rng}, got {value!r}")


def _leaves(node, prefix="config"):
  """``(dotted name, value)`` of every leaf field of a (nested) ConfigDict."""
  for key, value in node.items():
    name = f"{prefix}.{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _leaves(value, name)
    else:
      yield name, value


def check_finite(config: ml_collections.ConfigDict) -> None:
  """Rejects NaN and ±inf in every float field (and in tuples/lists of floats).

  A non-finite hyper-parameter never makes sense: NaN turns every comparison false, so
  range checks pass it and the run trains garbage (or skips every update).
  """
  for name, value in _leaves(config):
    many = isinstance(value, (tuple, list))
    for i, v in enumerate(value if many else (value,)):
      if checks.is_real(v) and not math.isfinite(float(v)):
        raise ConfigError(f"{name}{f'[{i}]' if many else ''} must be a finite number, "
                          f"got {v!r}")


def eta_field(value) -> ml_collections.FieldReference:
  """A ``selection.eta`` config field that holds a number or the string ``"auto"``.

  ConfigDict fields are typed by their first value, so a plain ``3e-2`` refuses
  ``--config.selection.eta=auto``; this field accepts either (the value is unchanged).
  """
  return ml_collections.FieldReference(value, field_type=object)


def _check_eta(eta) -> None:
  """``config.selection.eta``: a finite number > 0 or ``"auto"``."""
  if isinstance(eta, str) and eta != ETA_AUTO:
    try:                                  # '--config.selection.eta=nan' arrives as a string
      number = float(eta)
    except ValueError:
      number = None
    if number is not None and not math.isfinite(number):
      raise ConfigError(f"config.selection.eta must be a finite number, got {eta}")
    raise ConfigError(f"config.selection.eta must be a number > 0 or {ETA_AUTO!r}, got {eta!r}")
  if eta != ETA_AUTO:
    _number("config.selection.eta", eta, 0, low_open=True)


def resolve_eta(config: ml_collections.ConfigDict, num_classes: int | None = None,
                announce=None):
  """``(config, η as used)``: a number as a float; ``"auto"`` as the anytime schedule
  ``{"schedule": "anytime", "eta_1", "eta_T", "num_updates"}`` of
  :func:`reducr_jax.selectors.reducr.resolved_eta` (``η_t = √(8 ln C / (t L²))`` at step t,
  L = k ln C: the anytime Hedge rate, :func:`reducr_jax.mwu.anytime_update`), reported in
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


K_ROUNDINGS = ("round", "floor")

# Fields added after runs were recorded, with the value that reproduces what those runs
# did: a recorded config without the field equals a current one holding this value
# (resuming a workdir, :func:`reducr_jax.workdir.changed_fields`), and the experts cache
# fingerprint leaves the field out at this value, so older caches are still found.
ADDED_FIELDS = {
    "experts.select_on": "val",
    "experts.loss_normalisation": "mean",
    "model_selection": "worst_class",
    "optimizer.schedule": "constant",
    "optimizer.warmup_steps": 0,
    "selection.k_rounding": "round",
    "selection.holdout_source": "holdout",
    "dataset.num_samples": -1,
    "dataset.imbalance_mode": "subsample",
    "dataset.label_noise_mode": "different",
    "dataset.split_mode": "random",
    "dataset.groups": [],                 # as JSON records it
    "optimizer.learning_rate_by_method": {},
    "max_skipped_share": 0.5,
    "selection.grad_norm_sampling": "top_k",
    "method_overrides": {},
    "model.dropout_rate": 0.0,            # mlp / resnet18 (bert configs always had it)
    "selection.mc_passes": 10,
    "dataset.cinic10_relevance": False,   # real datasets only
    "experts.double_irreducible": False,
}


k_for = selection.k_for       # the one rule for k (pure; selectors.reducr uses it too)


def num_selected(config: ml_collections.ConfigDict) -> int:
  """k of ``config`` (:func:`k_for`): what the train step selects and what η='auto',
  the reweighters and the size checks use."""
  return k_for(config.batch_size, config.selection.percent_selected,
               config.selection.k_rounding)


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None) -> None:
  """Raises :class:`ConfigError` (a ``ValueError``) on the first bad field.

  Args:
    config: the full trainer config.
    num_devices: data-parallel device count (default ``jax.local_device_count()``); B and
      k must split evenly across devices.
  """
  check_finite(config)
  apply_method_overrides(config)            # its one-line errors (the trainer applies it)
  try:
    data.validate_dataset_config(config.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  groups = config.dataset.groups
  if (isinstance(groups, str) or tuple(groups)) and config.reweight != "none":
    raise ConfigError(f"config.reweight must be 'none' with config.dataset.groups set "
                      f"(reweighting is per class), got {config.reweight!r}")
  try:
    models.validate_model_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  hidden = config.model.hidden if "hidden" in config.model else ()
  if isinstance(hidden, (tuple, list)) and any(
      not checks.is_int(h) or h < 1 for h in hidden):
    raise ConfigError(f"config.model.hidden must hold layer widths >= 1, got {tuple(hidden)}")
  _one_of("config.dataset.augment", config.dataset.augment,
          augment.AUGMENTATIONS)
  _number("config.prefetch", config.prefetch, 0, integer=True)
  pretrained = config.model.pretrained
  if not isinstance(pretrained, str):
    raise ConfigError(f"config.model.pretrained must be a path or '', got {pretrained!r}")
  if pretrained:
    try:
      model_pretrained.check_available(config.model)
    except ImportError as e:
      raise ConfigError(str(e)) from None
  if pretrained and not os.path.exists(os.path.expanduser(pretrained)):
    raise ConfigError(
        f"config.model.pretrained={pretrained!r} does not exist: pass a local checkpoint "
        "(torchvision resnet18-f37072fd.pth for resnet18; a bert-base-uncased directory "
        "with model.safetensors for bert), or '' to train from scratch")
  sel = config.selection
  _one_of("config.selection.method", sel.method, selectors.names())
  _number("config.seed", config.seed, 0, integer=True)
  _number("config.batch_size", config.batch_size, 1, integer=True)
  _number("config.num_steps", config.num_steps, 1, integer=True)
  _number("config.selection.percent_selected", sel.percent_selected, 0, 1, low_open=True)
  _one_of("config.selection.k_rounding", sel.k_rounding, K_ROUNDINGS)
  k = num_selected(config)
  if k < 1:
    raise ConfigError(
        f"config.selection.percent_selected · config.batch_size must give k >= 1 points "
        f"per step, got k = {sel.k_rounding}({sel.percent_selected} · {config.batch_size}) "
        f"= {k} (config.selection.k_rounding={sel.k_rounding!r}); raise one of them")
  n = num_devices or jax.local_device_count()
  if config.batch_size % n or k % n:
    raise ConfigError(
        f"config.batch_size ({config.batch_size}) and k = {k} must be divisible by the "
        f"number of devices ({n})")
  _check_eta(sel.eta)
  _number("config.selection.soft_temperature", sel.soft_temperature, 0)
  _number("config.selection.selection_pressure", sel.selection_pressure, 1, low_open=True)
  for flag in ("clip", "use_holdout", "use_expert", "use_model_loss"):
    if not isinstance(sel[flag], bool):
      raise ConfigError(f"config.selection.{flag} must be True or False, got {sel[flag]!r}")
  if not (sel.use_expert or sel.use_model_loss):
    raise ConfigError("config.selection.use_expert and config.selection.use_model_loss "
                      "cannot both be False")
  _one_of("config.selection.holdout_loss", sel.holdout_loss, HOLDOUT_LOSSES)
  _number("config.selection.holdout_every", sel.holdout_every, integer=True)
  if sel.holdout_every == 0 or sel.holdout_every < -1:
    raise ConfigError("config.selection.holdout_every must be -1 (once per epoch) or >= 1, "
                      f"got {sel.holdout_every}")
  _number("config.selection.ema_decay", sel.ema_decay, 0, 1, high_open=True)
  _one_of("config.selection.holdout_source", sel.holdout_source,
          HOLDOUT_SOURCES)
  ex = config.experts
  _one_of("config.experts.select_on", ex.select_on, EXPERT_SELECT_ON)
  _one_of("config.experts.loss_normalisation", ex.loss_normalisation,
          class_weighted_losses.NORMALISATIONS)
  _number("config.experts.gamma", ex.gamma, 0)
  _one_of("config.experts.losses", ex.losses, EXPERT_LOSSES)
  if not isinstance(ex.update_on_selected, bool):
    raise ConfigError("config.experts.update_on_selected must be True or False, got "
                      f"{ex.update_on_selected!r}")
  _number("config.experts.update_lr_factor", ex.update_lr_factor, 0, low_open=True)
  if ex.update_on_selected and ex.losses == "precomputed":
    raise ConfigError("config.experts.update_on_selected=True needs config.experts.losses "
                      "'online' or 'multihead' (a precomputed table cannot be updated)")
  double = ex.get("double_irreducible", False)    # reducr_jax.double_reference
  if not isinstance(double, bool):
    raise ConfigError(f"config.experts.double_irreducible must be True or False, got {double!r}")
  if double and ex.losses != "precomputed":
    raise ConfigError("config.experts.double_irreducible=True needs config.experts.losses="
                      f"'precomputed' (the official output is a loss table), got {ex.losses!r}")
  _one_of("config.experts.strategy", ex.strategy, EXPERT_STRATEGIES)
  _number("config.experts.num_steps", ex.num_steps, 1, integer=True)
  _number("config.experts.batch_size", ex.batch_size, 1, integer=True)
  _number("config.experts.learning_rate", ex.learning_rate, 0, low_open=True)
  _number("config.experts.weight_decay", ex.weight_decay, 0)
  _number("config.experts.eval_every", ex.eval_every, 1, integer=True)
  _number("config.experts.chunk", ex.chunk, 0, integer=True)
  _number("config.experts.max_memory_gb", ex.max_memory_gb, 0)
  _number("config.data_workers", config.data_workers, 0, integer=True)
  _number("config.selection.beta", sel.beta, 0)
  _one_of("config.selection.sampling", sel.sampling, selectors.weighted.SAMPLINGS)
  _number("config.selection.uniform_after_steps", sel.uniform_after_steps, 0, integer=True)
  _number("config.selection.mc_passes", sel.get("mc_passes", 10), 0, integer=True)
  _one_of("config.selection.base_method", sel.base_method,
          tuple(m for m in selectors.names() if m != "uniform_after"))
  try:    # the rule's and reweighter's own checks (e.g. class_weights), still before any work
    selectors.get(config)
    reweighters.get(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  pr = config.pruning
  _one_of("config.pruning.strategy", pr.strategy, PRUNING_STRATEGIES)
  _number("config.pruning.density", pr.density, 0, 1, low_open=True)
  _one_of("config.pruning.keep", pr.keep, ("hardest", "easiest"))
  for name in ("num_inits", "score_epochs", "batch_size", "dyn_unc_window"):
    _number(f"config.pruning.{name}", pr[name], 1, integer=True)
  _number("config.pruning.recall_prior", pr.recall_prior, 0)
  _number("config.pruning.early_epoch", pr.early_epoch, 1, pr.score_epochs, integer=True)
  if pr.dyn_unc_window > pr.score_epochs:
    raise ConfigError(f"config.pruning.dyn_unc_window ({pr.dyn_unc_window}) must be <= "
                      f"config.pruning.score_epochs ({pr.score_epochs})")
  _one_of("config.reweight", config.reweight, reweighters.names())
  _number("config.meta.lr", config.meta.lr, 0, low_open=True)
  _one_of("config.meta.method", config.meta.method, ("jvp", "nested_grad"))
  _number("config.meta.val_batch_size", config.meta.val_batch_size, 1, integer=True)
  if config.meta.val_batch_size % n:
    raise ConfigError(f"config.meta.val_batch_size ({config.meta.val_batch_size}) must be "
                      f"divisible by the number of devices ({n})")
  _number("config.group_dro.eta", config.group_dro.eta, 0, low_open=True)
  _number("config.optimizer.learning_rate", config.optimizer.learning_rate, 0, low_open=True)
  _number("config.optimizer.weight_decay", config.optimizer.weight_decay, 0)
  _number("config.optimizer.grad_clip_norm", config.optimizer.grad_clip_norm, 0)
  opt = config.optimizer
  _one_of("config.optimizer.schedule", opt.schedule, optimizers.SCHEDULES)
  _number("config.optimizer.warmup_steps", opt.warmup_steps, 0, integer=True)
  if opt.warmup_steps >= config.num_steps and opt.schedule == "warmup_cosine":
    raise ConfigError(f"config.optimizer.warmup_steps ({opt.warmup_steps}) must be < "
                      f"config.num_steps ({config.num_steps}) for 'warmup_cosine'")
  for method, lr in (opt.learning_rate_by_method or {}).items():
    _one_of("config.optimizer.learning_rate_by_method key", method, selectors.names())
    _number(f"config.optimizer.learning_rate_by_method.{method}", lr, 0, low_open=True)
  _one_of("config.model_selection", config.model_selection,
          evaluation_rules.MODEL_SELECTION)
  _number("config.max_consecutive_skipped", config.max_consecutive_skipped, 1,
          integer=True)
  _number("config.max_skipped_share", config.max_skipped_share, 0, 1)
  for name in ("eval_every", "eval_batch_size", "log_every", "checkpoint_every"):
    _number(f"config.{name}", config[name], 1, integer=True)


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
  :mod:`reducr_jax.reference_cache` / :mod:`reducr_jax.prune_stage` name them) must not be
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
  table = config.get("method_overrides") or {}
  for method, fields in table.items():
    _one_of("config.method_overrides key", method, selectors.names())
    if not isinstance(fields, (ml_collections.ConfigDict, dict)):
      raise ConfigError(f"config.method_overrides.{method} must be a dict of config fields, "
                        f"got {fields!r}")
  fields = table.get(config.selection.method)
  if not fields:
    return config
  flat = {name[len("config."):]: value for name, value in _leaves(fields)}
  for name in flat:
    node, parts = config, name.split(".")
    for part in parts:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ConfigError(f"config.method_overrides.{config.selection.method}.{name}: "
                          f"config.{name} is not a config field")
      node = node[part]
    if name == "selection.method" or name.startswith("method_overrides"):
      raise ConfigError(f"config.method_overrides.{config.selection.method}.{name}: "
                        f"config.{name} cannot be set per method")
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


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads ``get_config()`` from a config file (``configs/<name>.py``), for scripts/tests.

  ``path`` may end with ``:ARG``, passed to ``get_config(ARG)`` like ``config_flags``.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = path.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config file {path} does not exist")
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

"""Validation of a trainer config against :mod:`reducr_jax.config.config_schema`, section by section.

:func:`validate_config` is called by :func:`reducr_jax.train.trainer.train_and_evaluate` before it
touches the workdir, loads data or compiles anything, so a typo never costs a compile or
leaves a partial checkpoint behind. Every error is one line naming the field and what it
may hold (:class:`~reducr_jax.core.errors.ConfigError`, a ``ValueError``). The checks of single
fields come from :data:`config_schema.FIELDS`; each section function adds the checks that
span fields. It returns the run's selection rule and reweighter, built once
(:class:`Rules`), which the trainer passes on instead of building them again.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax

from reducr_jax.core import checks
from reducr_jax.core import class_weighted_losses
from reducr_jax.config import config_schema as schema
from reducr_jax import data
from reducr_jax import models
from reducr_jax import reweighters
from reducr_jax.core import selection
from reducr_jax import selectors
from reducr_jax.data import augment
from reducr_jax.core.errors import ConfigError
from reducr_jax.models import pretrained as model_pretrained

# The run-time sets a schema OneOf may name.
CHOICES = {
    "selectors": lambda: selectors.names(),
    "base_selectors": lambda: tuple(m for m in selectors.names() if m != "uniform_after"),
    "reweighters": lambda: reweighters.names(),
    "augmentations": lambda: augment.AUGMENTATIONS,
    "normalisations": lambda: class_weighted_losses.NORMALISATIONS,
    "samplings": lambda: selectors.weighted.SAMPLINGS,
}


class Rules(NamedTuple):
  """The run's selection rule and reweighter (``selectors.get`` / ``reweighters.get``)."""
  selector: Any
  reweighter: Any


def is_section(value) -> bool:
  """A (nested) ConfigDict or dict: anything with ``items()`` that is not a sequence."""
  return callable(getattr(value, "items", None))


def leaves(node, prefix="config"):
  """``(dotted name, value)`` of every leaf field of a (nested) ConfigDict."""
  for key, value in node.items():
    name = f"{prefix}.{key}"
    if is_section(value):
      yield from leaves(value, name)
    else:
      yield name, value


def field(config, name: str):
  """``config.<name>`` for a dotted name; an absent field of
  :data:`config_schema.ADDED_FIELDS` reads as its recorded default."""
  node = config
  for part in name.split("."):
    if not is_section(node) or part not in node:
      if name in schema.ADDED_FIELDS:
        return schema.ADDED_FIELDS[name]
      raise ConfigError(f"config.{name} is missing (configs/default.py documents every field)")
    node = node[part]
  return node


def one_of(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def number(name, value, low=None, high=None, low_open=False, high_open=False, integer=False):
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


def flag(name, value):
  if not isinstance(value, bool):
    raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_field(config, name: str, spec) -> None:
  """One field against its :data:`config_schema.FIELDS` spec."""
  value, label = field(config, name), f"config.{name}"
  if isinstance(spec, schema.OneOf):
    choices = spec.choices
    one_of(label, value, CHOICES[choices]() if isinstance(choices, str) else choices)
  elif isinstance(spec, schema.Flag):
    flag(label, value)
  else:
    bound = lambda b: field(config, b) if isinstance(b, str) else b  # noqa: E731
    number(label, value, bound(spec.low), bound(spec.high), spec.low_open, spec.high_open,
           spec.integer)


def check_section(config, section: str) -> None:
  """Every schema field of ``section`` (``""``: the top-level fields)."""
  for name, spec in schema.fields_of(section).items():
    check_field(config, name, spec)


def check_finite(config) -> None:
  """Rejects NaN and ±inf in every float field (and in tuples/lists of floats).

  A non-finite hyper-parameter never makes sense: NaN turns every comparison false, so
  range checks pass it and the run trains garbage (or skips every update).
  """
  for name, value in leaves(config):
    many = isinstance(value, (tuple, list))
    for i, v in enumerate(value if many else (value,)):
      if checks.is_real(v) and not math.isfinite(float(v)):
        raise ConfigError(f"{name}{f'[{i}]' if many else ''} must be a finite number, "
                          f"got {v!r}")


def check_method_overrides(config) -> dict:
  """The checks of ``config.method_overrides`` → the flat ``{dotted field: value}`` of the
  configured method (``{}`` when it has none).

  Raises:
    ConfigError: a key that is not a registered rule, a field that does not exist, or one
      that may not differ by method (``selection.method``, ``method_overrides``).
  """
  table = config.get("method_overrides") or {}
  for method, fields in table.items():
    one_of("config.method_overrides key", method, selectors.names())
    if not is_section(fields):
      raise ConfigError(f"config.method_overrides.{method} must be a dict of config fields, "
                        f"got {fields!r}")
  method = config.selection.method
  flat = {name[len("config."):]: value for name, value in leaves(table.get(method) or {})}
  for name in flat:
    node = config
    for part in name.split("."):
      if not is_section(node) or part not in node:
        raise ConfigError(f"config.method_overrides.{method}.{name}: "
                          f"config.{name} is not a config field")
      node = node[part]
    if name == "selection.method" or name.startswith("method_overrides"):
      raise ConfigError(f"config.method_overrides.{method}.{name}: "
                        f"config.{name} cannot be set per method")
  return flat


def num_selected(config) -> int:
  """k of ``config``: ``selection.k_for(B, percent, rounding)``: what the train step
  selects and what η='auto', the reweighters and the size checks use."""
  return selection.k_for(config.batch_size, config.selection.percent_selected,
                         field(config, "selection.k_rounding"))


# --------------------------------------------------------------------------------------
# Sections: the schema's single-field checks, then the checks that span fields.


def _dataset(config, n: int) -> None:
  del n
  try:
    data.validate_dataset_config(config.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  groups = field(config, "dataset.groups")
  if (isinstance(groups, str) or tuple(groups)) and config.reweight != "none":
    raise ConfigError(f"config.reweight must be 'none' with config.dataset.groups set "
                      f"(reweighting is per class), got {config.reweight!r}")
  check_section(config, "dataset")


def _model(config, n: int) -> None:
  del n
  try:
    models.validate_model_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  hidden = config.model.hidden if "hidden" in config.model else ()
  if isinstance(hidden, (tuple, list)) and any(
      not checks.is_int(h) or h < 1 for h in hidden):
    raise ConfigError(f"config.model.hidden must hold layer widths >= 1, got {tuple(hidden)}")
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


def _run(config, n: int) -> None:
  del n
  check_section(config, "")


def _eta(eta) -> None:
  """``config.selection.eta``: a finite number > 0 or ``"auto"``."""
  if isinstance(eta, str) and eta != schema.ETA_AUTO:
    try:                                  # '--config.selection.eta=nan' arrives as a string
      value = float(eta)
    except ValueError:
      value = None
    if value is not None and not math.isfinite(value):
      raise ConfigError(f"config.selection.eta must be a finite number, got {eta}")
    raise ConfigError(f"config.selection.eta must be a number > 0 or "
                      f"{schema.ETA_AUTO!r}, got {eta!r}")
  if eta != schema.ETA_AUTO:
    number("config.selection.eta", eta, 0, low_open=True)


def _selection(config, n: int) -> None:
  sel = config.selection
  check_section(config, "selection")
  k = num_selected(config)
  if k < 1:
    raise ConfigError(
        f"config.selection.percent_selected · config.batch_size must give k >= 1 points "
        f"per step, got k = {sel.k_rounding}({sel.percent_selected} · {config.batch_size}) "
        f"= {k} (config.selection.k_rounding={sel.k_rounding!r}); raise one of them")
  if config.batch_size % n or k % n:
    raise ConfigError(
        f"config.batch_size ({config.batch_size}) and k = {k} must be divisible by the "
        f"number of devices ({n}): {_what_divides(config, n, k)}")
  _eta(sel.eta)
  if not (sel.use_expert or sel.use_model_loss):
    raise ConfigError("config.selection.use_expert and config.selection.use_model_loss "
                      "cannot both be False")
  if sel.holdout_every == 0 or sel.holdout_every < -1:
    raise ConfigError("config.selection.holdout_every must be -1 (once per epoch) or >= 1, "
                      f"got {sel.holdout_every}")


def splits_over_devices(batch: int, num_devices: int, percent_selected: float,
                        k_rounding: str = "round") -> bool:
  """Whether a large batch ``batch`` and its k (:func:`reducr_jax.core.selection.k_for`)
  both split evenly over ``num_devices`` data-parallel devices (k >= 1)."""
  k = selection.k_for(batch, percent_selected, k_rounding)
  return batch % num_devices == 0 and k >= 1 and k % num_devices == 0


def _what_divides(config, n: int, k: int) -> str:
  """What would run: the device counts dividing both B and k (``config.num_devices``,
  one process only), or the smallest larger ``config.batch_size`` whose B and k split
  over ``n`` devices (k from the same ``percent_selected`` and rounding)."""
  pct, rounding = config.selection.percent_selected, field(config, "selection.k_rounding")
  options = []
  if jax.process_count() == 1:
    fits = [d for d in range(1, n) if config.batch_size % d == 0 and k % d == 0]
    options.append(f"config.num_devices in {fits}")
  for b in range(-(-config.batch_size // n) * n, 64 * max(config.batch_size, n) + 1, n):
    if splits_over_devices(b, n, pct, rounding):
      options.append(f"config.batch_size={b} (k = {selection.k_for(b, pct, rounding)})")
      break
  return " or ".join(options) if options else "use fewer devices"


def _experts(config, n: int) -> None:
  del n
  ex = config.experts
  check_section(config, "experts")
  if ex.update_on_selected and ex.losses == "precomputed":
    raise ConfigError("config.experts.update_on_selected=True needs config.experts.losses "
                      "'online' or 'multihead' (a precomputed table cannot be updated)")
  if field(config, "experts.double_irreducible") and ex.losses != "precomputed":
    raise ConfigError("config.experts.double_irreducible=True needs config.experts.losses="
                      f"'precomputed' (the official output is a loss table), got {ex.losses!r}")


def _pruning(config, n: int) -> None:
  del n
  pr = config.pruning
  check_section(config, "pruning")
  if pr.dyn_unc_window > pr.score_epochs:
    raise ConfigError(f"config.pruning.dyn_unc_window ({pr.dyn_unc_window}) must be <= "
                      f"config.pruning.score_epochs ({pr.score_epochs})")


def _meta(config, n: int) -> None:
  check_section(config, "meta")
  if config.meta.val_batch_size % n:
    raise ConfigError(f"config.meta.val_batch_size ({config.meta.val_batch_size}) must be "
                      f"divisible by the number of devices ({n})")


def _group_dro(config, n: int) -> None:
  del n
  check_section(config, "group_dro")


def _optimizer(config, n: int) -> None:
  del n
  opt = config.optimizer
  check_section(config, "optimizer")
  if opt.warmup_steps >= config.num_steps and opt.schedule == "warmup_cosine":
    raise ConfigError(f"config.optimizer.warmup_steps ({opt.warmup_steps}) must be < "
                      f"config.num_steps ({config.num_steps}) for 'warmup_cosine'")
  for method, lr in (field(config, "optimizer.learning_rate_by_method") or {}).items():
    one_of("config.optimizer.learning_rate_by_method key", method, selectors.names())
    number(f"config.optimizer.learning_rate_by_method.{method}", lr, 0, low_open=True)


SECTION_CHECKS = {"dataset": _dataset, "model": _model, "": _run, "selection": _selection,
                  "experts": _experts, "pruning": _pruning, "meta": _meta,
                  "group_dro": _group_dro, "optimizer": _optimizer}


def build_rules(config) -> Rules:
  """The run's rule and reweighter, their own one-line errors (e.g. ``class_weights``)
  as :class:`ConfigError`."""
  try:
    return Rules(selectors.get(config), reweighters.get(config))
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate_config(config, num_devices: int | None = None) -> Rules:
  """Raises :class:`ConfigError` on the first bad field; returns the built :class:`Rules`.

  Args:
    config: the full trainer config.
    num_devices: data-parallel device count (default ``jax.local_device_count()``); B and
      k must split evenly across devices.
  """
  check_finite(config)
  check_method_overrides(config)       # its one-line errors (the trainer applies it)
  n = num_devices or jax.local_device_count()
  for section in schema.SECTIONS:
    SECTION_CHECKS[section](config, n)
  return build_rules(config)

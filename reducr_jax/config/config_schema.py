"""The one schema of the trainer config: allowed values of each field, and field classes.

A leaf module (no JAX, no package imports), read by :mod:`reducr_jax.config.config_validation`
(the checks), :mod:`reducr_jax.config.workdir` (what may change on resume), :mod:`reducr_jax.
reference_cache` (what the experts cache depends on), :mod:`reducr_jax.train.prune_stage` and
:mod:`reducr_jax.config.configuration` (fields added after runs were recorded).

:data:`FIELDS` maps a dotted field name (``"selection.percent_selected"``) to its spec:

* :class:`Number` — a real (or integer) in a closed/open interval ``[low, high]``; a bound
  given as a field name (``high="pruning.score_epochs"``) is that field's value;
* :class:`OneOf` — one of a tuple of values, or of a named set known only at run time
  (``"selectors"``: the registered rules; see ``config_validation.CHOICES``);
* :class:`Flag` — ``True`` or ``False``.

Fields whose checks span several fields (``selection.eta``, ``selection.holdout_every``,
``model.hidden`` …) are checked by the per-section functions of ``config_validation``.
"""

from __future__ import annotations

import dataclasses
from typing import Union


@dataclasses.dataclass(frozen=True)
class Number:
  """A number in ``[low, high]`` (``(`` / ``)`` with ``low_open`` / ``high_open``);
  ``None`` = unbounded; a ``str`` bound names another field."""
  low: Union[float, str, None] = None
  high: Union[float, str, None] = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of ``choices``: a tuple, or the name of a run-time set (registered rules …)."""
  choices: Union[tuple, str]


@dataclasses.dataclass(frozen=True)
class Flag:
  """``True`` or ``False`` (not 0/1)."""


def size(low: int = 1) -> Number:
  """An integer ``>= low`` (sizes, counts, periods)."""
  return Number(low, integer=True)


POSITIVE = Number(0, low_open=True)       # (0, inf]
NON_NEGATIVE = Number(0)                  # [0, inf]
FRACTION = Number(0, 1, low_open=True)    # (0, 1]

HOLDOUT_LOSSES = ("epoch", "ema")
HOLDOUT_SOURCES = ("holdout", "val")
EXPERT_SELECT_ON = ("val", "train_pool")
EXPERT_LOSSES = ("precomputed", "online", "multihead")
EXPERT_STRATEGIES = ("auto", "vmap", "map", "loop")
K_ROUNDINGS = ("round", "floor")
PRUNING_STRATEGIES = ("none", "random", "el2n", "grand", "forgetting", "dyn_unc", "drop")
PRUNING_KEEP = ("hardest", "easiest")
META_METHODS = ("jvp", "nested_grad")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")   # optimizers.py
MODEL_SELECTIONS = ("worst_class", "average", "final", "auto")    # evaluation.py
ETA_AUTO = "auto"                         # config.selection.eta = "auto"

# Sections in the order they are checked; "" holds the top-level (run) fields.
SECTIONS = ("dataset", "model", "", "selection", "experts", "pruning", "meta", "group_dro",
            "optimizer")

FIELDS: dict = {
    # dataset (the rest: reducr_jax.data.validate_dataset_config)
    "dataset.augment": OneOf("augmentations"),
    # run
    "seed": Number(0, integer=True),
    "batch_size": size(),
    "num_steps": size(),
    "prefetch": Number(0, integer=True),
    "data_workers": Number(0, integer=True),
    "eval_every": size(),
    "eval_batch_size": size(),
    "log_every": size(),
    "checkpoint_every": size(),
    "max_consecutive_skipped": size(),
    "max_skipped_share": Number(0, 1),
    "model_selection": OneOf(MODEL_SELECTIONS),
    "reweight": OneOf("reweighters"),
    # selection
    "selection.method": OneOf("selectors"),
    "selection.percent_selected": FRACTION,
    "selection.k_rounding": OneOf(K_ROUNDINGS),
    "selection.soft_temperature": NON_NEGATIVE,
    "selection.selection_pressure": Number(1, low_open=True),
    "selection.clip": Flag(),
    "selection.use_holdout": Flag(),
    "selection.use_expert": Flag(),
    "selection.use_model_loss": Flag(),
    "selection.holdout_loss": OneOf(HOLDOUT_LOSSES),
    "selection.holdout_every": Number(integer=True),     # and -1 or >= 1 (section check)
    "selection.ema_decay": Number(0, 1, high_open=True),
    "selection.holdout_source": OneOf(HOLDOUT_SOURCES),
    "selection.beta": NON_NEGATIVE,
    "selection.sampling": OneOf("samplings"),
    "selection.uniform_after_steps": Number(0, integer=True),
    "selection.mc_passes": Number(0, integer=True),
    "selection.base_method": OneOf("base_selectors"),
    # experts
    "experts.select_on": OneOf(EXPERT_SELECT_ON),
    "experts.loss_normalisation": OneOf("normalisations"),
    "experts.gamma": NON_NEGATIVE,
    "experts.losses": OneOf(EXPERT_LOSSES),
    "experts.update_on_selected": Flag(),
    "experts.update_lr_factor": POSITIVE,
    "experts.double_irreducible": Flag(),
    "experts.strategy": OneOf(EXPERT_STRATEGIES),
    "experts.num_steps": size(),
    "experts.batch_size": size(),
    "experts.learning_rate": POSITIVE,
    "experts.weight_decay": NON_NEGATIVE,
    "experts.eval_every": size(),
    "experts.chunk": Number(0, integer=True),
    "experts.max_memory_gb": NON_NEGATIVE,
    # pruning
    "pruning.strategy": OneOf(PRUNING_STRATEGIES),
    "pruning.density": FRACTION,
    "pruning.keep": OneOf(PRUNING_KEEP),
    "pruning.num_inits": size(),
    "pruning.score_epochs": size(),
    "pruning.batch_size": size(),
    "pruning.dyn_unc_window": size(),
    "pruning.recall_prior": NON_NEGATIVE,
    "pruning.early_epoch": Number(1, "pruning.score_epochs", integer=True),
    # reweighting
    "meta.lr": POSITIVE,
    "meta.method": OneOf(META_METHODS),
    "meta.val_batch_size": size(),
    "group_dro.eta": POSITIVE,
    # optimizer
    "optimizer.learning_rate": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.grad_clip_norm": NON_NEGATIVE,
    "optimizer.schedule": OneOf(SCHEDULES),
    "optimizer.warmup_steps": Number(0, integer=True),
}


def section_of(name: str) -> str:
  """``"selection"`` for ``"selection.k_rounding"``; ``""`` for a top-level field."""
  return name.rpartition(".")[0]


def fields_of(section: str) -> dict:
  """The :data:`FIELDS` entries of one section, in schema order."""
  return {k: v for k, v in FIELDS.items() if section_of(k) == section}


# --------------------------------------------------------------------------------------
# Field classes (dotted names). One place; the modules that act on them import these.

# Fields added after runs were recorded, with the value that reproduces what those runs
# did: a recorded config without the field equals a current one holding this value
# (resuming a workdir, :func:`reducr_jax.config.workdir.changed_fields`), the experts cache
# fingerprint leaves the field out at this value, so older caches are still found, and
# validation reads an absent field as this value.
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

# Fields that may change when a run resumes: they do not change what is trained, only how
# long, how often it is evaluated/logged/saved, on how many devices, where caches and raw
# data are read from. (`num_steps` may only grow past the checkpointed step.)
RESUMABLE_FIELDS = (
    "num_steps", "eval_every", "log_every", "checkpoint_every", "num_devices", "prefetch",
    "max_consecutive_skipped", "max_skipped_share", "experts.cache_dir", "pruning.cache_dir",
    "dataset.data_dir", "dataset.manual_dir", "dataset.download",
)

# Fields of config.experts that change how stage 1 runs, not what it computes (results
# equal to float tolerance): left out of the experts cache fingerprint.
EXPERTS_EXECUTION_FIELDS = ("experts.cache_dir", "experts.strategy", "experts.chunk",
                            "experts.max_memory_gb")
# Fields of config.experts that act only in stage 2 (the online update of the trained
# models on the selected points): left out of the experts cache fingerprint.
EXPERTS_STAGE2_FIELDS = ("experts.update_on_selected", "experts.update_lr_factor")
# Fields of config.pruning the pruning-scores cache depends on (with seed, dataset, model,
# optimizer); the rest (strategy, density, keep, ...) act on the cached scores.
PRUNING_SCORE_FIELDS = ("pruning.num_inits", "pruning.score_epochs", "pruning.early_epoch",
                        "pruning.batch_size", "pruning.dyn_unc_window")


def in_section(names, section: str) -> tuple:
  """``names`` of one section with the section dropped: ``("strategy", ...)`` of
  ``("experts.strategy", ...)`` for ``section="experts"``."""
  prefix = section + "."
  return tuple(n[len(prefix):] for n in names if n.startswith(prefix))


def added_in_section(section: str) -> dict:
  """:data:`ADDED_FIELDS` of one section, keyed by the name inside it."""
  prefix = section + "."
  return {k[len(prefix):]: v for k, v in ADDED_FIELDS.items() if k.startswith(prefix)}


def eta_field(value):
  """A ``selection.eta`` config field that holds a number or the string ``"auto"``.

  ConfigDict fields are typed by their first value, so a plain ``3e-2`` refuses
  ``--config.selection.eta=auto``; this field accepts either (the value is unchanged).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top  # light; configs use it
  return ml_collections.FieldReference(value, field_type=object)


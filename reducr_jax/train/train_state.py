"""The trainer's state and the static settings of its step.

:class:`TrainState` is everything a resumed run needs (checkpointed as one pytree);
:class:`StepConfig` is what the compiled step is specialised on: the selection rule and the
reweighting rule (their ``needs`` decide what the step computes), k, the class and device
counts, and where reference losses come from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reducr_jax.config import configuration
from reducr_jax.core import mwu
from reducr_jax import reweighters
from reducr_jax import selectors
from reducr_jax.core import groups as groups_lib


class TrainState(NamedTuple):
  """Everything a resumed run needs; replicated across devices during training.

  Attributes:
    step: ``int32[]`` number of gradient steps taken.
    params, opt_state: target model and optimizer.
    model_state: the model's non-parameter collections (``{"batch_stats": ...}`` for batch
      norm; ``{}`` for stateless models), updated from the selected points.
    selector_state: the selection rule's state (:attr:`reducr_jax.selectors.Selector.init`,
      e.g. REDUCR's MWU class log-weights; ``()`` when stateless).
    reweighter_state: the reweighting rule's state (e.g. Group DRO's class log-weights).
    holdout_loss: ``float32[C]`` class-holdout loss of the last full pass ('epoch').
    ema: :class:`reducr_jax.core.mwu.EMAState` ('ema' class-holdout estimator).
    reference: the reference models and their optimizer state when they are updated on
      the selected points (``config.experts.update_on_selected``), else ``()``.
    rng: ``uint32[2]`` base key; step t uses ``fold_in(rng, t)``.
    num_skipped: ``int32[]`` updates skipped for a non-finite loss or gradient.
    selected_counts: ``int32[C]`` selected points per class since the start (logged, so
      the share of each class between two log steps is a difference of two records).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  selector_state: Any
  reweighter_state: Any
  holdout_loss: jax.Array
  ema: mwu.EMAState
  reference: Any
  rng: jax.Array
  num_skipped: jax.Array
  selected_counts: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step, derived from the config.

  Attributes:
    selector: the selection rule (:mod:`reducr_jax.selectors`); its ``needs`` decide what
      the step computes and which batch streams the trainer reads.
    reweighter: the weights of the selected points (:mod:`reducr_jax.reweighters`).
    k, num_classes, num_devices: selected points, classes, data-parallel devices.
    reference: where reference losses come from: ``None``, ``'table'`` (rows of the
      precomputed table in the batch) or ``'online'`` (reference models in the step).
    holdout_loss: the class-holdout estimator, ``'epoch'`` or ``'ema'``; ema_decay its decay.
    train_class_counts: class sizes of the train split (class-balanced weights).
    augment: on-device augmentation of the large batch.
    reference_update: ``None``, or the online update of the reference models on the
      selected points (:func:`reducr_jax.train.references.online_update`).
    group_of: ``()``, or the group of every class (``config.dataset.groups``); then
      ``num_classes`` is the number of groups G and selection, class weights, the
      class-holdout loss and the selected counts are over groups ("selection labels"
      ``group_of[y]``), while the model still classifies the C classes.
    mc_passes: K, the MC-dropout forward passes computed when the selector needs
      ``MC_LOGITS`` (``config.selection.mc_passes``).
  """
  selector: selectors.Selector
  reweighter: reweighters.Reweighter
  k: int
  num_classes: int
  num_devices: int
  reference: Optional[str] = None
  holdout_loss: str = "epoch"
  ema_decay: float = 0.9
  train_class_counts: tuple = ()
  augment: str = "none"
  reference_update: Optional[Callable] = None
  group_of: tuple = ()
  mc_passes: int = 10

  @classmethod
  def from_config(cls, config, num_classes: int, num_devices: int,
                  reference: Optional[str], train_class_counts=(),
                  reference_update: Optional[Callable] = None,
                  rules=None) -> "StepConfig":
    """The step's settings for ``config``; ``rules``: ``(selector, reweighter)`` as
    :func:`reducr_jax.config.configuration.validate_config` built them (built here when None)."""
    group_of = groups_lib.from_config(config.dataset, num_classes)
    if group_of is not None:          # the robust unit is the group (reducr_jax.core.groups)
      num_classes = int(group_of.max()) + 1
      if len(train_class_counts):
        train_class_counts = np.bincount(group_of, weights=np.asarray(train_class_counts),
                                         minlength=num_classes)
    selector, reweighter = rules or (selectors.get(config), reweighters.get(config))
    return cls(selector=selector, reweighter=reweighter,
               k=configuration.num_selected(config), num_classes=num_classes,
               group_of=() if group_of is None else tuple(int(g) for g in group_of),
               num_devices=num_devices, reference=reference,
               holdout_loss=config.selection.holdout_loss,
               ema_decay=float(config.selection.ema_decay),
               train_class_counts=tuple(int(n) for n in train_class_counts),
               augment=config.dataset.augment, reference_update=reference_update,
               mc_passes=int(config.selection.get("mc_passes", 10)))

  @property
  def needs(self) -> frozenset:
    return self.selector.needs | self.reweighter.needs

  @property
  def ema_holdout(self) -> bool:
    """A holdout batch per step feeds the EMA class-holdout loss."""
    return selectors.CLASS_HOLDOUT_LOSS in self.needs and self.holdout_loss == "ema"


def init_state(rng: jax.Array, init_fn: Callable, tx: optax.GradientTransformation,
               cfg: StepConfig, select_rng: jax.Array, reference: Any = ()) -> TrainState:
  """The initial :class:`TrainState`.

  ``init_fn(rng)`` returns the params, or ``(params, model_state)``
  (:attr:`reducr_jax.models.ModelFns.init`). ``reference``: the initial state of reference
  models updated online (``()`` otherwise).
  """
  out = init_fn(rng)
  params, model_state = out if isinstance(out, tuple) else (out, {})
  c = cfg.num_classes
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=model_state,
                    selector_state=cfg.selector.init(c),
                    reweighter_state=cfg.reweighter.init(c),
                    holdout_loss=jnp.zeros((c,), jnp.float32),
                    ema=mwu.ema_init(c), reference=reference,
                    rng=select_rng,
                    num_skipped=jnp.zeros((), jnp.int32),
                    selected_counts=jnp.zeros((c,), jnp.int32))

"""Selection rules as registered, optax-style transforms.

A selection rule is a :class:`Selector`: a ``NamedTuple`` of pure, jit-able functions, in
the spirit of ``optax.GradientTransformation``::

    state = selector.init(num_classes)                        # a pytree; () when stateless
    idx, aux = selector.select(state, inputs, rng, k)          # int32[k] indices into the B
    state = selector.update(state, inputs, idx, aux)           # e.g. REDUCR's MWU step

``inputs`` is a :class:`SelectionInputs` holding what the rule declared in
``selector.needs`` (the trainer computes nothing else): the large batch's class labels and
group labels always,
and, on request, the target model's per-example loss and logits, the reference models'
losses (C class experts, or one RHO-LOSS irreducible-loss model) and the per-class
holdout loss of the target model. ``select`` and ``update`` see the *global* large batch
(the trainer all-gathers the per-device shards first), so every device selects the same
points and keeps the same state without any further communication.

Rules are registered by name; the trainer builds ``selectors.get(config)`` from
``config.selection.method``::

    def smallest_loss(config):
      def select(state, inputs, rng, k):
        return selection.top_k(-inputs.model_loss, k), ()
      return selectors.Selector(init=lambda c: (), select=select,
                                update=lambda s, i, idx, aux: s,
                                needs=frozenset({selectors.MODEL_LOSS}))

    selectors.register("smallest_loss", smallest_loss)
    # then: --config.selection.method=smallest_loss

Every built-in rule lives in its own module of this package (:mod:`reducr_jax.selectors`
lists them) and is registered when the package is imported. Each module has a pure
factory that raises about its own arguments (e.g. ``weighted(sampling=...)``) and a
``from_config`` that reads the config and names its fields in errors
(:func:`reducr_jax.core.registry.config_errors`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from reducr_jax.core import registry

# What a rule may ask the trainer for (``Selector.needs``).
MODEL_LOSS = "model_loss"                  # SelectionInputs.model_loss  [B]
MODEL_LOGITS = "model_logits"              # SelectionInputs.model_logits [B, C]
CLASS_HOLDOUT_LOSS = "class_holdout_loss"  # SelectionInputs.class_holdout_loss [C]
EXPERT_LOSSES = "reference_losses:experts"          # reference_losses [B, C], C class experts
IRREDUCIBLE_LOSS = "reference_losses:irreducible"   # reference_losses [B, 1], one RHO-LOSS model
# SelectionInputs.mc_logits [K, B, C]: K = config.selection.mc_passes MC-dropout forward
# passes of the target model (dropout on, running batch-norm statistics).
MC_LOGITS = "mc_logits"
NEEDS = frozenset({MODEL_LOSS, MODEL_LOGITS, CLASS_HOLDOUT_LOSS, EXPERT_LOSSES,
                   IRREDUCIBLE_LOSS, MC_LOGITS})


class SelectionInputs(NamedTuple):
  """What a :class:`Selector` sees of the large batch (global: all devices' rows).

  Attributes:
    labels: ``int[B]`` class labels of the large batch (what the model predicts: rules that
      compare logits with the label, e.g. ``grad_norm``, use these).
    model_loss: ``[B]`` target-model cross-entropy (evaluation mode), or ``None``.
    reference_losses: ``[B, C']`` reference-model losses: ``C' = C`` class experts
      (``EXPERT_LOSSES``) or ``C' = 1`` (``IRREDUCIBLE_LOSS``), or ``None``.
    class_holdout_loss: ``[C]`` per-class mean loss of the target model on the holdout
      split (``config.selection.holdout_loss``: full pass or EMA), or ``None``.
    model_logits: ``[B, C]`` target-model logits, or ``None``.
    step: ``int32[]`` gradient steps taken before this one (always given).
    group_labels: ``int[B]`` robustness unit of each point, the index into the ``C'``
      columns of ``reference_losses``, ``class_holdout_loss`` and the MWU weights: the
      group of ``config.dataset.groups`` (e.g. CIFAR-100's 20 superclasses; the official
      ``categories``), else the class label (always given by the trainer; ``None`` =
      ``labels``).
    mc_logits: ``[K, B, C]`` logits of K MC-dropout passes (``MC_LOGITS``), or ``None``.
  """
  labels: jax.Array
  model_loss: Optional[jax.Array] = None
  reference_losses: Optional[jax.Array] = None
  class_holdout_loss: Optional[jax.Array] = None
  model_logits: Optional[jax.Array] = None
  step: Optional[jax.Array] = None
  group_labels: Optional[jax.Array] = None
  mc_logits: Optional[jax.Array] = None


class Selector(NamedTuple):
  """A selection rule: pure functions of arrays and pytrees (module docstring).

  Attributes:
    init: ``num_classes -> state`` (a pytree of arrays; ``()`` when stateless).
    select: ``(state, inputs, rng, k) -> (indices int32[k], aux)``; ``k`` is a static int,
      ``aux`` any pytree handed to ``update`` (e.g. the ``[B, C]`` reducible losses).
    update: ``(state, inputs, indices, aux) -> state``.
    needs: which of :data:`NEEDS` the trainer must provide in :class:`SelectionInputs`.
    class_weights: optional ``state -> [C]`` class weights on the simplex, logged and
      reported (REDUCR's MWU weights); rules without class weights report uniform ones.
  """
  init: Callable[[int], Any]
  select: Callable[[Any, SelectionInputs, jax.Array, int], tuple[jax.Array, Any]]
  update: Callable[[Any, SelectionInputs, jax.Array, Any], Any]
  needs: frozenset = frozenset()
  class_weights: Optional[Callable[[Any], jax.Array]] = None


#: SelectionInputs field → the ``needs`` entry that makes the trainer fill it.
FIELD_NEEDS = {"model_loss": MODEL_LOSS, "model_logits": MODEL_LOGITS,
               "class_holdout_loss": CLASS_HOLDOUT_LOSS, "mc_logits": MC_LOGITS,
               "reference_losses": f"{EXPERT_LOSSES} or {IRREDUCIBLE_LOSS}"}


def checked_select(selector: Selector, state, inputs: SelectionInputs, rng: jax.Array,
                   k: int) -> tuple[jax.Array, Any]:
  """``selector.select(state, inputs, rng, k)`` as the trainer calls it, with one-line
  errors at trace time: an input read but not declared in ``selector.needs``
  (:func:`reducr_jax.core.registry.call_rule`), or indices that are not ``int[k]``."""
  indices, aux = registry.call_rule("selector.select", selector.select, inputs, FIELD_NEEDS,
                                    state, inputs, rng, k)
  shape, dtype = jnp.shape(indices), getattr(indices, "dtype", None)
  if shape != (k,) or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"selector.select must return integer indices of shape [k={k}], got "
                     f"{dtype}{list(shape)}")
  return indices, aux


def checked_update(selector: Selector, state, inputs: SelectionInputs, indices: jax.Array,
                   aux) -> Any:
  """``selector.update(state, inputs, indices, aux)`` with the undeclared-input error of
  :func:`checked_select`."""
  return registry.call_rule("selector.update", selector.update, inputs, FIELD_NEEDS,
                            state, inputs, indices, aux)


def stateless(select: Callable[[SelectionInputs, jax.Array, int], jax.Array],
              needs=frozenset()) -> Selector:
  """A :class:`Selector` without state from ``select(inputs, rng, k) -> int32[k]``."""
  return Selector(init=lambda num_classes: (),
                  select=lambda state, inputs, rng, k: (select(inputs, rng, k), ()),
                  update=lambda state, inputs, indices, aux: state,
                  needs=frozenset(needs))


def reference_kind(needs) -> Optional[str]:
  """Which reference models the trainer trains for ``needs``: ``"experts"``,
  ``"irreducible"`` or ``None``."""
  if EXPERT_LOSSES in needs and IRREDUCIBLE_LOSS in needs:
    raise ValueError("a selector needs either class experts or one irreducible-loss "
                     "model, not both")
  if EXPERT_LOSSES in needs:
    return "experts"
  if IRREDUCIBLE_LOSS in needs:
    return "irreducible"
  return None


# The checkpoint each rule keeps under ``config.model_selection='auto'``, as the official
# experiment yamls choose it: ``configs/config.yaml`` defaults to ``callbacks:
# worst_val_acc`` (REDUCR, uniform, payoff, weighted), while the vision RHO-LOSS and
# train-loss experiments (``configs/experiment/{cifar10,cinic10}_resnet18_main.yaml``,
# ``*_train_loss.yaml``, ``clothing1m_main_rho.yaml``) override ``callbacks: default`` (best
# average ``val_acc_epoch``). (The official NLP yamls leave that override commented out:
# there every rule keeps the worst-class checkpoint; configs/mnli.py sets it explicitly.)
# Rules not listed keep the worst-class checkpoint; user code may add its own entry.
# (Not reducr_jax.train.evaluation.MODEL_SELECTION: the allowed values of that field.)
AUTO_MODEL_SELECTION = {"reducr": "worst_class", "uniform": "worst_class",
                   "rho_loss": "average", "train_loss": "average"}


def model_selection(config: Any) -> str:
  """``config.model_selection`` with ``"auto"`` resolved by the rule's name
  (:data:`AUTO_MODEL_SELECTION`, ``"worst_class"`` when absent): ``"worst_class"`` |
  ``"average"`` | ``"final"``."""
  rule = config.model_selection
  if rule != "auto":
    return rule
  return AUTO_MODEL_SELECTION.get(config.selection.method, "worst_class")


_RULES = registry.Registry("selector", "config.selection.method", NEEDS)
#: ``register(name, factory)``: ``factory(config) -> Selector`` becomes
#: ``config.selection.method=name``; a name registered twice is a one-line ``ValueError``.
register = _RULES.register
unregister = _RULES.unregister
names = _RULES.names


def get(config: Any) -> Selector:
  """The :class:`Selector` named by ``config.selection.method``, built from ``config``.

  Raises:
    ValueError: unknown name (one line listing the registered ones), the factory's own
      one-line error for a bad setting, ``needs`` outside :data:`NEEDS`, or both kinds of
      reference model asked for.
  """
  selector = _RULES.build(config.selection.method, config)
  reference_kind(selector.needs)
  return selector

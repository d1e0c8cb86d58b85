"""Model zoo: ``create_model(config.model, num_outputs)`` → a Flax module, and
:func:`model_fns`, the pure functions the trainer uses for any of them.

Every module is called as ``module.apply(variables, x, train=...)``:

* ``mlp``: :class:`~reducr_jax.models.mlp.MLP` on flattened features (embedded data);
* ``resnet18``: :class:`~reducr_jax.models.resnet.ResNet18`, ``stem='cifar'`` (3×3 stem,
  CIFAR-10/100, CINIC-10) or ``'imagenet'`` (torchvision layout; Clothing1M, with the
  ImageNet weights imported from ``config.model.pretrained``); input ``uint8 [B, H, W, 3]``;
* ``bert``: :class:`~reducr_jax.models.bert.BertClassifier` (bert-base-uncased; MNLI, QQP),
  input ``int32 [B, 2, L]`` (token ids, token type ids);
* ``convnext``: :class:`~reducr_jax.models.convnext.ConvNeXt` (ConvNeXt-T; the official
  Clothing1M ConvNeXt runs, ``configs/clothing1m_convnext.py``), input ``uint8 [B, H, W, 3]``.

Models with batch norm keep their running statistics in ``variables["batch_stats"]`` (the
"model state"); the trainer's train-mode apply computes batch statistics across all devices
(``bn_axis_name``), so the statistics are those of all k selected points, as on one device.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from reducr_jax.models.bert import BertClassifier
from reducr_jax.models.convnext import ConvNeXt
from reducr_jax.models.mlp import MLP
from reducr_jax.models.pretrained import load_pretrained
from reducr_jax.models.pretrained import load_pretrained_stacked
from reducr_jax.models.pretrained import resolve_sizes
from reducr_jax.models.resnet import ResNet18

MODEL_NAMES = ("mlp", "resnet18", "bert", "convnext")
RESNET_STEMS = ("cifar", "imagenet")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The fields every ``config.model`` of a model defines (configs/default.py: mlp;
# configs/cifar10.py: resnet18; configs/mnli.py: bert). The library reads them directly, so
# a config missing one is a one-line error here rather than a silent default.
_COMMON = ("name", "dtype", "pretrained", "pretrained_head")
FIELDS = {
    "mlp": _COMMON + ("hidden",),
    "resnet18": _COMMON + ("stem", "width", "stage_sizes", "mean", "std"),
    "bert": _COMMON + ("vocab_size", "hidden_size", "num_layers", "num_heads",
                       "intermediate_size", "max_position", "type_vocab_size", "dropout_rate"),
    "convnext": _COMMON + ("depths", "dims", "mean", "std"),      # configs/clothing1m_convnext.py
}


def validate_model_config(model_config: Any) -> None:
  """Raises a one-line ``ValueError`` naming the first bad ``config.model`` field.

  Size fields left ``None`` are taken from ``config.model.pretrained`` (a BERT directory's
  ``config.json``, a torchvision state dict) or the paper model's
  (:func:`~reducr_jax.models.pretrained.resolve_sizes`); an explicit size that
  contradicts the checkpoint is an error naming both values.
  """
  name = model_config.name if "name" in model_config else None
  if name not in MODEL_NAMES:
    raise ValueError(f"config.model.name must be one of {list(MODEL_NAMES)}, got {name!r}")
  missing = [f for f in FIELDS[name] if f not in model_config]
  if missing:
    raise ValueError(f"config.model lacks {missing}: a {name!r} model config defines every "
                     f"field of {list(FIELDS[name])} (see reducr_jax.models.FIELDS)")
  model_config = resolve_sizes(model_config)
  dtype = model_config.dtype
  if dtype not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {list(DTYPES)}, got {dtype!r}")
  if name == "resnet18":
    if model_config.stem not in RESNET_STEMS:
      raise ValueError(f"config.model.stem must be one of {list(RESNET_STEMS)}, "
                       f"got {model_config.stem!r}")
    stages = tuple(model_config.stage_sizes)
    if not stages or not all(isinstance(n, int) and n >= 1 for n in stages):
      raise ValueError(f"config.model.stage_sizes must be a non-empty tuple of ints >= 1 "
                       f"(ResNet-18: (2, 2, 2, 2)), got {stages!r}")
  if name == "convnext":
    depths, dims = tuple(model_config.depths), tuple(model_config.dims)
    if (not depths or len(depths) != len(dims) or
        not all(isinstance(n, int) and n >= 1 for n in depths + dims)):
      raise ValueError(f"config.model.depths and .dims must be equally long, non-empty tuples "
                       f"of ints >= 1 (ConvNeXt-T: (3, 3, 9, 3), (96, 192, 384, 768)), got "
                       f"{depths!r} and {dims!r}")
    if model_config.pretrained:
      raise ValueError("config.model.pretrained must be '' for 'convnext' (no ImageNet "
                       f"weight importer yet), got {model_config.pretrained!r}")
  if name in ("resnet18", "convnext"):
    for field in ("mean", "std"):
      v = tuple(model_config[field])
      if v and (len(v) != 3 or (field == "std" and min(v) <= 0)):
        raise ValueError(f"config.model.{field} must be () (the stem's default) or 3 "
                         f"{'positive ' if field == 'std' else ''}numbers, got {v!r}")
  if name in ("resnet18", "bert"):
    for field in ("width",) if name == "resnet18" else (
        "hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size",
        "max_position", "type_vocab_size"):
      v = model_config[field]
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"config.model.{field} must be an int >= 1, got {v!r}")
  rate = model_config.get("dropout_rate", 0.0)
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
    raise ValueError(f"config.model.dropout_rate must be a number in [0, 1), got {rate!r}")
  if name == "bert" and model_config.hidden_size % model_config.num_heads:
    raise ValueError(f"config.model.hidden_size ({model_config.hidden_size}) must be "
                     f"divisible by config.model.num_heads ({model_config.num_heads})")


def create_model(model_config: Any,
                 num_outputs: int | None) -> nn.Module:
  """Builds the model named ``model_config.name``.

  Args:
    model_config: ``config.model`` (``name`` plus the model's own fields).
    num_outputs: logits width; ``None`` for a feature trunk (multi-head experts).
  """
  validate_model_config(model_config)
  model_config = resolve_sizes(model_config)
  name = model_config.name
  dtype = DTYPES[model_config.dtype]
  dropout_rate = float(model_config.get("dropout_rate", 0.0))   # optional for mlp / resnet18
  if name == "mlp":
    return MLP(hidden=tuple(model_config.hidden), num_outputs=num_outputs,
               dropout_rate=dropout_rate)
  if name == "resnet18":
    kwargs = {f: tuple(model_config[f]) for f in ("mean", "std") if model_config[f]}
    if not kwargs and model_config.stem == "imagenet":
      from reducr_jax.models import resnet  # pylint: disable=g-import-not-at-top
      kwargs = {"mean": resnet.IMAGENET_MEAN, "std": resnet.IMAGENET_STD}
    kwargs["stage_sizes"] = tuple(model_config.stage_sizes)
    return ResNet18(num_outputs=num_outputs, stem=model_config.stem,
                    width=model_config.width, dtype=dtype, dropout_rate=dropout_rate,
                    **kwargs)
  if name == "convnext":
    kwargs = {f: tuple(model_config[f]) for f in ("mean", "std") if model_config[f]}
    return ConvNeXt(num_outputs=num_outputs, depths=tuple(model_config.depths),
                    dims=tuple(model_config.dims), dtype=dtype, dropout_rate=dropout_rate,
                    **kwargs)
  m = model_config
  return BertClassifier(num_outputs=num_outputs, vocab_size=m.vocab_size,
                        hidden_size=m.hidden_size, num_layers=m.num_layers,
                        num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                        max_position=m.max_position, type_vocab_size=m.type_vocab_size,
                        dropout_rate=m.dropout_rate, dtype=dtype)


class ModelFns(NamedTuple):
  """A Flax module as pure functions of (params, model state).

  Attributes:
    init: ``rng -> (params, model_state)`` (``model_state``: ``{}`` or
      ``{"batch_stats": ...}``).
    apply: ``(variables, x) -> logits [B, K]`` in evaluation mode (running batch-norm
      statistics, no dropout); ``variables = {"params": params, **model_state}``. This is
      the ``apply_fn`` the pure library functions (experts, selection scores) take.
    apply_train: ``(params, model_state, x, rng) -> (logits, new_model_state)`` in training
      mode (batch statistics — across ``axis_name`` when given —, dropout keyed by ``rng``).
    apply_mc: ``(variables, x, rng) -> logits`` with dropout on and running batch-norm
      statistics (MC dropout: the official ``enable_dropout`` on an ``eval()`` model); the
      same as ``apply`` for a model without dropout. ``None``: not available.
  """
  init: Callable[[jax.Array], tuple[Any, dict]]
  apply: Callable[[Any, jax.Array], jax.Array]
  apply_train: Callable[[Any, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]
  apply_mc: Optional[Callable[[Any, jax.Array, jax.Array], jax.Array]] = None


# PRNG used to *initialise* each model's parameters. Conv nets and transformers have many
# parameter tensors, and XLA's CPU compile of their threefry-keyed initialisers is slow
# (ResNet-18 at width 4: 10 s for one init, 27 s for 10 stacked experts) where the 'rbg'
# generator compiles in ~2 s; the MLP keeps threefry (its results are documented with it).
INIT_RNG_IMPL = {"mlp": None, "resnet18": "rbg", "bert": "rbg", "convnext": "rbg"}


def init_rng_impl(model_config: Any) -> Optional[str]:
  """The PRNG implementation :func:`model_fns` initialises ``config.model`` with."""
  return INIT_RNG_IMPL[model_config.name]


def model_fns(module: nn.Module, input_example: jax.Array,
              axis_name: Optional[str] = None,
              init_impl: Optional[str] = None) -> ModelFns:
  """The :class:`ModelFns` of ``module``.

  Args:
    module: a Flax module called as ``module(x, train=...)``.
    input_example: an input batch (e.g. ``zeros([1, ...])`` with the data's dtype) to
      initialise with.
    axis_name: mapped axis (``pmap``/``shard_map``) over which training-mode batch norm
      averages its statistics; ``None`` for per-call statistics (e.g. under ``vmap`` of
      experts, or on one device).
    init_impl: ``None`` initialises (and draws dropout masks) with the given key;
      ``'rbg'`` (see :data:`INIT_RNG_IMPL`) derives an ``rbg`` key from it first (fast
      to compile).
  """
  train_module = module
  if axis_name is not None and hasattr(module, "bn_axis_name"):
    train_module = module.clone(bn_axis_name=axis_name)

  def init(rng):
    if init_impl is not None:
      rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=init_impl)
    variables = dict(module.init({"params": rng, "dropout": rng}, input_example, train=False))
    params = variables.pop("params")
    return params, variables

  def apply(variables, x):
    return module.apply(variables, x, train=False)

  def dropout_key(rng):
    if init_impl is not None:       # dropout masks from the same fast-compiling generator
      rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=init_impl)
    return rng

  def apply_mc(variables, x, rng):
    return module.apply(variables, x, train=False, dropout=True,
                        rngs={"dropout": dropout_key(rng)})

  def apply_train(params, model_state, x, rng):
    rng = dropout_key(rng)
    variables = {"params": params, **model_state}
    if not model_state:
      return train_module.apply(variables, x, train=True, rngs={"dropout": rng}), model_state
    logits, new_state = train_module.apply(variables, x, train=True, rngs={"dropout": rng},
                                           mutable=list(model_state))
    return logits, dict(new_state)

  return ModelFns(init, apply, apply_train, apply_mc)


def variables(params, model_state: dict) -> dict:
  """``{"params": params, **model_state}``: what :attr:`ModelFns.apply` takes."""
  return {"params": params, **model_state}


def as_model_fns(model) -> ModelFns:
  """``model`` as :class:`ModelFns`; a bare ``apply_fn(params, x)`` of a
  stateless model is wrapped (so library users can pass ``lambda p, x: ...``)."""
  if isinstance(model, ModelFns):
    return model
  return ModelFns(init=None, apply=lambda v, x: model(v["params"], x),
                  apply_train=lambda p, s, x, rng: (model(p, x), s),
                  apply_mc=lambda v, x, rng: model(v["params"], x))

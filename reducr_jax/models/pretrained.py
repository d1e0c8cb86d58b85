"""Pretrained weights named by ``config.model.pretrained``, merged into fresh variables.

* ``resnet18``: a torchvision ResNet-18 checkpoint (``.pth``/``.pt`` state dict, or
  ``.safetensors``), e.g. ``resnet18-f37072fd.pth`` (``ResNet18_Weights.IMAGENET1K_V1``) for
  Clothing1M — :mod:`reducr_jax.models.torch_import`;
* ``bert``: a local ``bert-base-uncased`` directory (or its ``model.safetensors``) —
  :mod:`reducr_jax.models.bert_import`.

The classification head is taken from the checkpoint only when
``config.model.pretrained_head`` is True (same class count); by default the trunk is
imported and the head stays freshly initialised (ImageNet's 1000 classes → Clothing1M's 14).
The multi-head experts' trunk is imported the same way (its ``trunk`` sub-tree).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import ml_collections

from reducr_jax.models import bert_import
from reducr_jax.models import torch_import
from reducr_jax.models.merge import first_names  # noqa: F401  (re-exported)
from reducr_jax.models.merge import merge_variables  # noqa: F401  (re-exported)


# config.model field -> Hugging Face BertConfig key, and bert-base-uncased's value (the
# fallback when config.model.pretrained has no config.json).
BERT_SIZES = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "num_layers": ("num_hidden_layers", 12),
    "num_heads": ("num_attention_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "max_position": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
}
# ResNet fields read from a torchvision state dict, and ResNet-18's values (the fallback).
RESNET_SIZES = {"width": 64, "stage_sizes": (2, 2, 2, 2)}


def hf_config_path(pretrained: str) -> str | None:
  """``config.json`` of a Hugging Face checkpoint directory (or next to its
  ``model.safetensors``), or ``None``."""
  path = os.path.expanduser(pretrained)
  if not pretrained or not os.path.exists(path):
    return None
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  candidate = os.path.join(folder, "config.json")
  return candidate if os.path.isfile(candidate) else None


@functools.lru_cache(maxsize=8)
def _checkpoint_sizes(name: str, path: str, mtime: float) -> tuple[dict, str]:
  """``({field: value}, source)`` that checkpoint ``path`` of model ``name`` fixes."""
  del mtime  # Only part of the cache key.
  if name == "bert":
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
    missing = [key for key, _ in BERT_SIZES.values() if key not in hf]
    if missing:
      raise ValueError(f"{path} is not a BERT config.json (model_type="
                       f"{hf.get('model_type')!r}): it lacks {first_names(missing)}")
    return {field: hf[key] for field, (key, _) in BERT_SIZES.items()}, path
  shapes = torch_import.checkpoint_shapes(path)
  sizes = torch_import.resnet_sizes(shapes)
  return sizes, path


def checkpoint_sizes(model_config: ml_collections.ConfigDict) -> tuple[dict, str | None]:
  """The sizes ``config.model.pretrained`` fixes: for ``bert`` those of its ``config.json``
  (:data:`BERT_SIZES`), for ``resnet18`` ``width``, ``stage_sizes`` and ``stem`` read
  from the torchvision state dict's keys and shapes. ``({}, None)`` when there is no
  checkpoint or (BERT) no ``config.json``."""
  pretrained = model_config.pretrained or ""
  name = model_config.name
  if name == "bert":
    path = hf_config_path(pretrained)
  elif name == "resnet18" and pretrained:
    path = os.path.expanduser(pretrained)
    path = path if os.path.isfile(path) else None
  else:
    path = None
  if path is None:
    return {}, None
  try:
    return _checkpoint_sizes(name, path, os.path.getmtime(path))
  except ImportError:   # torch / safetensors missing: check_available says which, in one line
    return {}, None
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # unreadable: one line, not a traceback
    raise ValueError(f"config.model.pretrained: cannot read {path}: "
                     f"{type(e).__name__}: {e}".replace("\n", " ")) from None


def resolve_sizes(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config.model`` with every size field set.

  A size field left ``None`` ("from the checkpoint") takes the value of
  ``config.model.pretrained`` (:func:`checkpoint_sizes`), else the paper model's
  (bert-base-uncased, ResNet-18). An explicit value that contradicts the checkpoint is a
  one-line ``ValueError`` naming both.
  """
  name = model_config.name
  defaults = ({f: d for f, (_, d) in BERT_SIZES.items()} if name == "bert" else
              RESNET_SIZES if name == "resnet18" else None)
  if defaults is None:
    return model_config
  found, source = checkpoint_sizes(model_config)
  resolved = ml_collections.ConfigDict(model_config.to_dict())
  for field in list(defaults) + (["stem"] if "stem" in found else []):
    value = model_config[field]
    if field in found and value is not None:
      same = (tuple(value) == tuple(found[field]) if isinstance(found[field], tuple)
              else value == found[field])
      if not same:
        raise ValueError(
            f"config.model.{field}={value!r} contradicts {found[field]!r} in the checkpoint "
            f"{source} (config.model.pretrained); set config.model.{field}="
            f"{found[field]!r}" + (" or None (take it from the checkpoint)"
                                   if field != "stem" else ""))
    if value is None:
      resolved[field] = found.get(field, defaults[field])
  return resolved


def check_available(model_config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ``ImportError`` when the library that reads
  ``config.model.pretrained`` is missing (checked before anything compiles)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = model_config.pretrained
  if not path:
    return
  needs = ("torch", "reducr_jax[torch]") if path.endswith((".pth", ".pt")) else (
      "safetensors", "reducr_jax[text]")
  if importlib.util.find_spec(needs[0]) is None:
    raise ImportError(f"config.model.pretrained={path!r} needs {needs[0]}: "
                      f"pip install \"{needs[1]}\"")


def _read(model_config: ml_collections.ConfigDict):
  """``(pretrained variables, merge function, include_head)`` of ``config.model.pretrained``."""
  path = model_config.pretrained
  include_head = bool(model_config.pretrained_head)
  if model_config.name == "resnet18":
    pretrained = torch_import.resnet_variables_from_torch(
        torch_import.load_torch_checkpoint(path), include_head=include_head)
    return pretrained, _naming_sizes(torch_import.merge_pretrained, model_config), include_head
  if model_config.name == "bert":
    pretrained = bert_import.bert_variables_from_hf(bert_import.load_hf_checkpoint(path),
                                                    include_head=include_head)
    return pretrained, _naming_sizes(bert_import.merge_pretrained, model_config), include_head
  raise ValueError(f"config.model.pretrained is only supported for config.model.name in "
                   f"['resnet18', 'bert'], got {model_config.name!r}")


def _naming_sizes(merge, model_config: ml_collections.ConfigDict):
  """``merge`` whose tree/shape errors end with the size fields the model was built with."""
  fields = BERT_SIZES if model_config.name == "bert" else RESNET_SIZES
  resolved = resolve_sizes(model_config)

  def merge_naming_sizes(*args, **kwargs):
    try:
      return merge(*args, **kwargs)
    except ValueError as e:
      sizes = ", ".join(f"{f}={resolved.get(f)!r}" for f in fields)
      hint = ("put the checkpoint's config.json next to its weights"
              if model_config.name == "bert" else "check config.model.stem")
      raise ValueError(f"{e}; the model was built with config.model {sizes}: set those "
                       f"fields to the checkpoint's sizes or {hint}") from None
  return merge_naming_sizes


def _merge_into(params: Any, model_state: dict, pretrained, merge,
                include_head: bool) -> tuple[Any, dict]:
  """One model's ``(params, model_state)`` with ``pretrained`` merged in."""
  variables = {"params": params, **model_state}
  if "trunk" in params:                     # multi-head experts: the trunk is the model
    trunk = {k: (v["trunk"] if k in ("params", "batch_stats") and "trunk" in v else v)
             for k, v in variables.items()}
    merged = dict(merge(trunk, pretrained, include_head=False))
    for k, v in merged.items():
      variables[k] = {**variables[k], "trunk": v} if "trunk" in variables[k] else v
  else:
    variables = dict(merge(variables, pretrained, include_head=include_head))
  params = variables.pop("params")
  return params, variables


def load_pretrained(model_config: ml_collections.ConfigDict, params: Any,
                    model_state: dict) -> tuple[Any, dict]:
  """``(params, model_state)`` with ``config.model.pretrained`` merged in (unchanged if '')."""
  if not model_config.pretrained:
    return params, model_state
  return _merge_into(params, model_state, *_read(model_config))


def load_pretrained_stacked(model_config: ml_collections.ConfigDict, params: Any,
                            model_state: dict) -> tuple[Any, dict]:
  """:func:`load_pretrained` for models stacked on a leading axis (the C experts).

  The checkpoint is read once and merged into every stacked model (a ``vmap`` of the
  merge): imported weights, the same for all, come out broadcast along the stack; the
  parts that stay fresh (the head, unless ``pretrained_head``) keep each model's own
  initialisation.
  """
  if not model_config.pretrained:
    return params, model_state
  pretrained, merge, include_head = _read(model_config)
  return jax.vmap(lambda p, s: _merge_into(p, s, pretrained, merge, include_head))(
      params, model_state)

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

from typing import Any, Mapping

import flax.core
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def first_names(items, n: int = 5) -> str:
  """``"a, b, c, ... (N in all)"``: the first ``n`` sorted names, for one-line errors."""
  items = sorted(items)
  more = f", ... ({len(items)} in all)" if len(items) > n else ""
  return ", ".join(items[:n]) + more


def merge_variables(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                    head: str, include_head: bool) -> dict:
  """Puts imported weights into freshly initialised variables, checking every shape.

  Args:
    variables: ``model.init(...)`` of the target model (unreplicated; for a trunk nested
      in another module pass that submodule's sub-trees).
    pretrained: imported variables with the same tree (e.g.
      :func:`reducr_jax.models.torch_import.resnet_variables_from_torch`).
    head: name of the classification head module (``fc`` for ResNet, ``classifier`` for
      BERT).
    include_head: copy the head too (shapes must match); False keeps the fresh head (a
      new task, e.g. 14 Clothing1M classes instead of 1000) and ignores any pretrained one.

  Returns:
    variables with the same tree and dtypes as ``variables``, pretrained values inside.

  Raises:
    ValueError: a variable of ``variables`` that ``pretrained`` lacks (other than a kept
      fresh head), a pretrained one the model does not have, or a shape mismatch.
  """
  fresh = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  new = traverse_util.flatten_dict(flax.core.unfreeze(pretrained))
  is_head = lambda path: len(path) > 1 and path[1] == head
  if not include_head:
    new = {k: v for k, v in new.items() if not is_head(k)}
  name = "/".join
  unknown = [name(k) for k in new if k not in fresh]
  if unknown:
    raise ValueError(f"pretrained has {len(unknown)} variable(s) the model does not: "
                     f"{first_names(unknown)}")
  missing = [name(k) for k in fresh if k not in new and (include_head or not is_head(k))]
  if missing:
    raise ValueError(f"pretrained lacks {len(missing)} variable(s) of the model: "
                     f"{first_names(missing)}")
  merged = dict(fresh)
  for k, value in new.items():
    if tuple(np.shape(value)) != tuple(np.shape(fresh[k])):
      hint = " (use include_head=False for a new head)" if is_head(k) else ""
      raise ValueError(f"pretrained {name(k)} has shape {tuple(np.shape(value))} but the "
                       f"model's is {tuple(np.shape(fresh[k]))}{hint}")
    merged[k] = jnp.asarray(value, dtype=jnp.asarray(fresh[k]).dtype)
  return traverse_util.unflatten_dict(merged)


def check_available(model_config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ``ImportError`` when the library that reads
  ``config.model.pretrained`` is missing (checked before anything compiles)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = model_config.get("pretrained", "")
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
  include_head = bool(model_config.get("pretrained_head", False))
  if model_config.name == "resnet18":
    from reducr_jax.models import torch_import  # pylint: disable=g-import-not-at-top
    pretrained = torch_import.resnet_variables_from_torch(
        torch_import.load_torch_checkpoint(path), include_head=include_head)
    return pretrained, torch_import.merge_pretrained, include_head
  if model_config.name == "bert":
    from reducr_jax.models import bert_import  # pylint: disable=g-import-not-at-top
    pretrained = bert_import.bert_variables_from_hf(bert_import.load_hf_checkpoint(path),
                                                    include_head=include_head)
    return pretrained, bert_import.merge_pretrained, include_head
  raise ValueError(f"config.model.pretrained is only supported for config.model.name in "
                   f"['resnet18', 'bert'], got {model_config.name!r}")


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
  if not model_config.get("pretrained", ""):
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
  if not model_config.get("pretrained", ""):
    return params, model_state
  pretrained, merge, include_head = _read(model_config)
  return jax.vmap(lambda p, s: _merge_into(p, s, pretrained, merge, include_head))(
      params, model_state)

"""Merging imported weights into fresh Flax variables, shape by shape.

A leaf module (Flax/NumPy only) shared by :mod:`reducr_jax.models.torch_import`,
:mod:`reducr_jax.models.bert_import` and :mod:`reducr_jax.models.pretrained` (which reads
``config.model.pretrained`` with the two importers), so their imports stay acyclic.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.core
from flax import traverse_util
import jax.numpy as jnp
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

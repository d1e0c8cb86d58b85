"""Model zoo: ``create_model(config.model, num_outputs)`` → a Flax module."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from reducr_jax.models.mlp import MLP

MODEL_NAMES = ("mlp",)


def create_model(model_config: ml_collections.ConfigDict,
                 num_outputs: int | None) -> nn.Module:
  """Builds the model named ``model_config.name``.

  Args:
    model_config: ``config.model`` (``name`` plus the model's own fields).
    num_outputs: logits width; ``None`` for a feature trunk (multi-head experts).
  """
  if model_config.name == "mlp":
    return MLP(hidden=tuple(model_config.hidden), num_outputs=num_outputs)
  raise ValueError(f"config.model.name must be one of {list(MODEL_NAMES)}, "
                   f"got {model_config.name!r}")

"""Small Flax models for the embedded datasets (and tests)."""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """ReLU multi-layer perceptron.

  Attributes:
    hidden: widths of the hidden layers.
    num_outputs: width of the final linear layer; ``None`` returns the last hidden
      features (use it as the trunk of :class:`reducr_jax.core.stacked_experts.MultiHead`).
    dropout_rate: dropout after every hidden ReLU (the official RHO-LOSS ``MLP`` layout,
      ``src/models/modules/models.py``; 0.5 in its ``mnist_bayesian_mlp512.yaml`` for
      MC-dropout BALD). 0 (default): no dropout layer at all.
  """
  hidden: Sequence[int] = (256, 256)
  num_outputs: Optional[int] = 10
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dropout: Optional[bool] = None) -> jax.Array:
    """``x``: ``[B, ...]`` (flattened) → ``[B, num_outputs]`` logits (or features).

    ``dropout`` (default: ``train``) switches dropout on (needs ``rngs={"dropout": key}``);
    ``train`` has no other effect (no batch norm)."""
    active = train if dropout is None else dropout
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not active)
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs)(x)
    return x

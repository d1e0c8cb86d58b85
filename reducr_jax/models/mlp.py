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
      features (use it as the trunk of :class:`reducr_jax.experts.MultiHead`).
  """
  hidden: Sequence[int] = (256, 256)
  num_outputs: Optional[int] = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x``: ``[B, ...]`` (flattened) → ``[B, num_outputs]`` logits (or features).

    ``train`` is accepted for the common model interface and has no effect."""
    del train
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs)(x)
    return x

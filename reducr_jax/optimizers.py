"""The target model's optimizer from ``config.optimizer``."""

from __future__ import annotations

import ml_collections
import optax


def make_optimizer(opt_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (paper default), optionally after global-norm gradient clipping."""
  tx = optax.adamw(opt_config.learning_rate, weight_decay=opt_config.weight_decay)
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx

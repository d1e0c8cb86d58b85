"""ConvNeXt (Liu et al., 2022, "A ConvNet for the 2020s") in Flax; ConvNeXt-T by default.

The official REDUCR Clothing1M ConvNeXt runs (``configs/experiment/clothing1m_*_convnext.yaml``,
``src/models/modules/vision_transformers.py``) use Hugging Face
``ConvNextForImageClassification`` ("facebook/convnext-tiny-224", ImageNet weights, new
14-way head). This module follows that layout (parameter names by HF's modules, so an
importer needs renaming only; none is written yet):

* stem: 4×4 conv stride 4 → LayerNorm (ε 1e-6);
* stage i (``depths[i]`` blocks of width ``dims[i]``), stages after the first start with
  LayerNorm (ε 1e-6) → 2×2 conv stride 2;
* block: 7×7 depthwise conv → LayerNorm (ε 1e-6) → Dense 4·d → GELU (exact) → Dense d →
  layer scale γ (init 1e-6) → residual (drop path 0, as convnext-tiny-224);
* head: global average pool → LayerNorm (ε 1e-12, HF ``layer_norm_eps``) → dropout
  (``dropout_rate``, 0 = none; for MC-dropout rules) → Dense.

ConvNeXt-T (depths (3, 3, 9, 3), dims (96, 192, 384, 768)) with 1000 classes has 28,589,128
parameters (the paper's 28.6M; tested from shapes).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reducr_jax.models.resnet import IMAGENET_MEAN, IMAGENET_STD

TINY_DEPTHS = (3, 3, 9, 3)
TINY_DIMS = (96, 192, 384, 768)
_INIT = nn.initializers.normal(0.02)     # HF ConvNext _init_weights: normal(0, initializer_range)


class ConvNeXtBlock(nn.Module):
  """Depthwise 7×7 conv, LayerNorm, inverted bottleneck MLP, layer scale, residual."""
  dim: int
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
                dtype=self.dtype, kernel_init=_INIT, name="dwconv")(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="layernorm")(y)
    y = nn.Dense(4 * self.dim, dtype=self.dtype, kernel_init=_INIT, name="pwconv1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_INIT, name="pwconv2")(y)
    gamma = self.param("layer_scale_parameter",
                       nn.initializers.constant(self.layer_scale_init), (self.dim,))
    return x + (gamma * y).astype(x.dtype)


class ConvNeXt(nn.Module):
  """ConvNeXt classifier that normalises raw ``[0, 255]`` images itself.

  Attributes:
    num_outputs: classifier width; ``None`` returns the pooled, normalised features
      ``[B, dims[-1]]`` (the trunk of :class:`reducr_jax.core.stacked_experts.MultiHead`).
    depths, dims: blocks and channels per stage (ConvNeXt-T: (3, 3, 9, 3), (96, 192, 384,
      768)); shrink both for tests.
    dtype: compute dtype (parameters stay float32; output float32).
    mean, std: per-channel normalisation on the 0..1 scale (ImageNet, as HF's processor).
    dropout_rate: dropout before the head (0 = none).
  """
  num_outputs: Optional[int] = 14
  depths: Sequence[int] = TINY_DEPTHS
  dims: Sequence[int] = TINY_DIMS
  dtype: Any = jnp.float32
  mean: Sequence[float] = IMAGENET_MEAN
  std: Sequence[float] = IMAGENET_STD
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dropout: Optional[bool] = None) -> jax.Array:
    """``x``: uint8 or float ``[B, H, W, 3]`` in ``[0, 255]`` (H, W multiples of 32) →
    float32 ``[B, num_outputs]`` logits. ``train`` only switches dropout (no batch norm);
    ``dropout`` overrides it (needs ``rngs={"dropout": key}``)."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x must have shape [B, H, W, 3] (RGB, values in [0, 255]), "
                       f"got {tuple(x.shape)}")
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(f"ConvNeXt.depths and .dims must be non-empty and of equal length, "
                       f"got {tuple(self.depths)!r} and {tuple(self.dims)!r}")
    dtype = jnp.dtype(self.dtype)
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    x = ((x.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)
    x = nn.Conv(self.dims[0], (4, 4), strides=(4, 4), padding="VALID", dtype=dtype,
                kernel_init=_INIT, name="embeddings_patch")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="embeddings_layernorm")(x)
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=f"stage{i}_downsample_norm")(x)
        x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype,
                    kernel_init=_INIT, name=f"stage{i}_downsample_conv")(x)
      for j in range(depth):
        x = ConvNeXtBlock(dim, dtype=dtype, name=f"stage{i}_layer{j}")(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))                      # [B, dims[-1]]
    x = nn.LayerNorm(epsilon=1e-12, name="layernorm")(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not (train if dropout is None
                                                               else dropout))
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs, dtype=dtype, kernel_init=_INIT, name="classifier")(x)
    return x.astype(jnp.float32)

"""Flax ResNet-18 with a CIFAR stem (Mindermann et al. 2022) or the torchvision ImageNet stem.

The module tree mirrors torchvision's ``resnet18`` (He et al. 2016, "Deep Residual
Learning for Image Recognition") so pretrained weights import by renaming only (see
:mod:`reducr_jax.models.torch_import`):

=====================================  ==========================================
torchvision state-dict key              Flax variable path
=====================================  ==========================================
``conv1.weight``                        ``params/conv1/kernel``
``bn1.{weight,bias}``                   ``params/bn1/{scale,bias}``
``bn1.{running_mean,running_var}``      ``batch_stats/bn1/{mean,var}``
``layer2.0.conv1.weight``               ``params/layer2_0/conv1/kernel``
``layer2.0.downsample.0.weight``        ``params/layer2_0/downsample_0/kernel``
``layer2.0.downsample.1.*``             ``.../layer2_0/downsample_1/*`` (BatchNorm)
``fc.{weight,bias}``                    ``params/fc/{kernel,bias}``
=====================================  ==========================================

Every convolution uses torch's explicit symmetric padding (e.g. ``((1, 1), (1, 1))`` for
a 3x3 conv, also with stride 2), so shapes and numbers equal torch's exactly; Flax's
``"SAME"`` would pad a stride-2 conv asymmetrically.

The ``"cifar"`` stem is the "adapted ResNet-18" REDUCR uses on CIFAR-10/100 and CINIC-10
(Mindermann et al. 2022, "Prioritized Training on Points that are Learnable, Worth
Learning, and Not Yet Learnt", App. B): a 3x3 stride-1 first conv and no max-pool, so
32x32 inputs reach the last stage at 4x4.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STEMS = ("cifar", "imagenet")

# torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _positive_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def _batch_norm(train: bool, dtype, axis_name: Optional[str], name: str) -> nn.BatchNorm:
  """torch ``BatchNorm2d`` defaults (momentum 0.1 ↔ Flax 0.9, eps 1e-5); stats stay float32."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """torchvision ``BasicBlock``: two 3x3 convs with BatchNorm and an identity/1x1 shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first conv (and of the downsample shortcut).
    dtype: compute dtype; parameters stay float32.
    bn_axis_name: mapped axis for cross-device batch statistics in training.
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x``: ``[B, H, W, C_in]`` → ``[B, H/strides, W/strides, features]``."""
    conv = functools.partial(nn.Conv, self.features, use_bias=False, dtype=self.dtype,
                             kernel_init=_CONV_INIT)
    norm = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)
    s = (self.strides, self.strides)
    y = conv((3, 3), strides=s, padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = conv((3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = norm("bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv((1, 1), strides=s, padding=((0, 0), (0, 0)), name="downsample_0")(x)
      shortcut = norm("downsample_1")(shortcut)
    return nn.relu(y + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 (torchvision layout) that normalises raw ``[0, 255]`` images itself.

  Attributes:
    num_outputs: width of the final ``fc`` layer; ``None`` returns the pooled features
      ``[B, width * 2**(len(stage_sizes) - 1)]`` (``8 * width`` for ResNet-18), the trunk of
      :class:`reducr_jax.core.stacked_experts.MultiHead`.
    stem: ``"cifar"`` (3x3 conv, stride 1, pad 1, no max-pool; Mindermann et al. 2022
      App. B) or ``"imagenet"`` (torchvision: 7x7 conv stride 2 pad 3, BN, ReLU, 3x3
      max-pool stride 2 pad 1).
    width: channels of stage 1; stage ``i`` has ``width * 2**i`` (64 = ResNet-18).
    stage_sizes: BasicBlocks per stage (``(2, 2, 2, 2)`` = ResNet-18).
    dtype: compute dtype (e.g. ``jnp.bfloat16`` or ``"bfloat16"`` for mixed precision);
      parameters and BatchNorm statistics stay float32, outputs are returned as float32.
    bn_axis_name: mapped axis name (``pmap``/``shard_map``) over which training-mode
      BatchNorm averages its batch statistics; ``None`` for per-device statistics.
    mean, std: per-channel normalisation on the 0..1 scale; pass
      ``IMAGENET_MEAN``/``IMAGENET_STD`` with ImageNet-pretrained weights.
    dropout_rate: dropout on the pooled features before ``fc`` (the official Clothing1M
      head ``nn.Sequential(nn.Dropout(p=0.2), nn.Linear(...))``, ``c1m_pretrained.py``;
      for MC-dropout selection rules). 0 (default): no dropout layer.
  """
  num_outputs: Optional[int] = 10
  stem: str = "cifar"
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  dropout_rate: float = 0.0

  def _check(self, x) -> None:
    if self.stem not in STEMS:
      raise ValueError(f"ResNet18.stem must be one of {list(STEMS)}, got {self.stem!r}")
    if not _positive_int(self.width):
      raise ValueError(f"ResNet18.width must be a positive int, got {self.width!r}")
    sizes = tuple(self.stage_sizes)
    if not sizes or not all(_positive_int(n) for n in sizes):
      raise ValueError("ResNet18.stage_sizes must be a non-empty sequence of positive ints, "
                       f"got {self.stage_sizes!r}")
    if self.num_outputs is not None and not _positive_int(self.num_outputs):
      raise ValueError(f"ResNet18.num_outputs must be a positive int or None, "
                       f"got {self.num_outputs!r}")
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError(f"ResNet18.mean and .std must have 3 entries (RGB), "
                       f"got {len(self.mean)} and {len(self.std)}")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x must have shape [B, H, W, 3] (RGB, values in [0, 255]), "
                       f"got {tuple(x.shape)}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dropout: Optional[bool] = None) -> jax.Array:
    """Logits (or features) of raw images.

    Args:
      x: uint8 or float ``[B, H, W, 3]`` with values in ``[0, 255]``; normalised here as
        ``(x / 255 - mean) / std``.
      train: batch statistics and ``batch_stats`` updates (call ``apply`` with
        ``mutable=["batch_stats"]``) if True, running statistics if False.
      dropout: dropout on (default: ``train``; needs ``rngs={"dropout": key}``).
        ``train=False, dropout=True`` is MC dropout: running statistics, random masks.

    Returns:
      float32 ``[B, num_outputs]`` logits, or float32 ``[B, width * 2**(S-1)]`` features
      when ``num_outputs`` is None.
    """
    self._check(x)
    dtype = jnp.dtype(self.dtype)
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    x = ((x.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)

    conv = functools.partial(nn.Conv, self.width, use_bias=False, dtype=dtype,
                             kernel_init=_CONV_INIT, name="conv1")
    if self.stem == "cifar":
      x = conv((3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))(x)
      x = nn.relu(_batch_norm(train, dtype, self.bn_axis_name, "bn1")(x))
    else:
      x = conv((7, 7), strides=(2, 2), padding=((3, 3), (3, 3)))(x)
      x = nn.relu(_batch_norm(train, dtype, self.bn_axis_name, "bn1")(x))
      # Pads with -inf, as torch's MaxPool2d(3, 2, padding=1).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = BasicBlock(self.width * 2**i, strides=2 if i > 0 and j == 0 else 1,
                       dtype=dtype, bn_axis_name=self.bn_axis_name,
                       name=f"layer{i + 1}_{j}")(x, train)

    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))   # global average pool, [B, F]
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not (train if dropout is None
                                                               else dropout))
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs, dtype=dtype, name="fc")(x)
    return x.astype(jnp.float32)

"""Training-time augmentation as pure JAX functions, run on the accelerator inside the step.

Images stay ``uint8`` from disk to device; augmentation happens in the compiled train step
(no host work, no extra transfers) and is a pure function of a key and the example's
*global position* in the large batch, so the augmented batch is the same whatever the
number of devices or processes it is split over.

* ``crop_flip`` (CIFAR-10/100, CINIC-10; He et al. 2016 and the REDUCR/RHO-LOSS code): pad
  4 pixels with zeros, take a random ``H × W`` crop, flip left-right with probability ½.
* ``flip`` (Clothing1M, already resized to 256 and centre-cropped to 224 when the dataset
  was built): random left-right flip only.
* ``none``: identity (embedded data, text).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "flip", "crop_flip")


def _one(key: jax.Array, image: jax.Array, pad: int, crop: bool) -> jax.Array:
  """One ``[H, W, C]`` image: optional padded random crop, then a random flip."""
  k_crop, k_flip = jax.random.split(key)
  h, w = image.shape[0], image.shape[1]
  if crop:
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))
  return jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)


def augment(key: jax.Array, images: jax.Array, positions: jax.Array, kind: str,
            pad: int = 4) -> jax.Array:
  """Augments a batch of images.

  Args:
    key: PRNG key of this training step.
    images: ``[b, H, W, C]`` (any dtype; ``uint8`` in the trainer).
    positions: ``int[b]`` global position of each image in the large batch; image ``i``
      uses ``fold_in(key, positions[i])``, so results do not depend on how the batch is
      sharded.
    kind: one of :data:`AUGMENTATIONS`.
    pad: zero padding of ``crop_flip`` (4 for 32×32 CIFAR images).

  Returns:
    ``[b, H, W, C]`` with the dtype of ``images``.
  """
  if kind not in AUGMENTATIONS:
    raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {kind!r}")
  if kind == "none":
    return images
  if images.ndim != 4:
    raise ValueError(f"augmentation {kind!r} needs images [b, H, W, C], got shape "
                     f"{tuple(images.shape)}")
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
  return jax.vmap(lambda k, im: _one(k, im, pad, kind == "crop_flip"))(keys, images)

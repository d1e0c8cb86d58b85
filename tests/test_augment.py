"""On-device augmentation: crops are windows of the zero-padded image, flips are exact,
and each image's result depends only on (key, its global position)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.data import augment


def _windows(image, pad):
  """All padded crops and their flips of one [H, W, C] image."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      out += [crop, crop[:, ::-1]]
  return out


def test_crop_flip_gives_padded_windows_and_covers_them():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, 6, 6, 3), dtype=np.uint8)
  out = np.asarray(augment.augment(jax.random.PRNGKey(0), jnp.asarray(images),
                                   jnp.arange(64), "crop_flip", pad=2))
  assert out.dtype == np.uint8 and out.shape == images.shape
  seen = set()
  for img, aug in zip(images, out):
    matches = [i for i, w in enumerate(_windows(img, 2)) if np.array_equal(w, aug)]
    assert matches, "every output is a padded crop (or its flip) of its input"
    seen.add(matches[0] % 2)
  assert seen == {0, 1}                               # both flipped and unflipped occur


def test_flip_only_and_none():
  x = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.uint8).reshape(2, 3, 4, 1)
  out = np.asarray(augment.augment(jax.random.PRNGKey(3), x, jnp.arange(2), "flip"))
  for a, b in zip(np.asarray(x), out):
    assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
  assert augment.augment(jax.random.PRNGKey(3), x, jnp.arange(2), "none") is x


def test_result_depends_on_position_not_on_batch_split():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
  key = jax.random.PRNGKey(7)
  whole = augment.augment(key, x, jnp.arange(8), "crop_flip")
  halves = [augment.augment(key, x[i:i + 4], jnp.arange(i, i + 4), "crop_flip")
            for i in (0, 4)]
  np.testing.assert_array_equal(whole, jnp.concatenate(halves))
  other = augment.augment(jax.random.PRNGKey(8), x, jnp.arange(8), "crop_flip")
  assert not np.array_equal(whole, other)


def test_bad_kind_and_shape_raise_one_line():
  x = jnp.zeros((2, 4, 4, 3), jnp.uint8)
  with pytest.raises(ValueError, match="augmentation must be one of"):
    augment.augment(jax.random.PRNGKey(0), x, jnp.arange(2), "rotate")
  with pytest.raises(ValueError, match=r"needs images \[b, H, W, C\]"):
    augment.augment(jax.random.PRNGKey(0), jnp.zeros((2, 16)), jnp.arange(2), "flip")

"""Per-class accuracy accumulation and robustness metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.core import metrics

# 3 classes; predictions (argmax) vs labels: class 0: 2/3 right, class 1: 1/1, class 2: 0/2.
LOGITS = jnp.array([[5.0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 5, 0], [5, 0, 0], [0, 5, 0]])
LABELS = jnp.array([0, 0, 0, 1, 2, 2])


def test_hand_computed_metrics():
  stats = metrics.correct_sums(LOGITS, LABELS)
  np.testing.assert_allclose(stats.sums, [2, 1, 0])
  np.testing.assert_allclose(stats.counts, [3, 1, 2])
  s = metrics.summary(stats)
  assert s["accuracy"] == pytest.approx(3 / 6)
  assert s["per_class_accuracy"] == pytest.approx([2 / 3, 1.0, 0.0])
  assert s["worst_class_accuracy"] == 0.0
  assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
  assert s["accuracy_gap"] == pytest.approx(1.0)
  assert s["accuracy_std"] == pytest.approx(np.std([2 / 3, 1.0, 0.0]))
  assert s["class_counts"] == [3, 1, 2]


def test_absent_class_is_excluded():
  stats = metrics.correct_sums(LOGITS[:4], LABELS[:4])   # class 2 absent
  assert np.isnan(float(metrics.per_class_accuracy(stats)[2]))
  assert float(metrics.worst_class_accuracy(stats)) == pytest.approx(2 / 3)
  assert float(metrics.balanced_accuracy(stats)) == pytest.approx((2 / 3 + 1) / 2)
  assert float(metrics.accuracy_gap(stats)) == pytest.approx(1 / 3)


def test_mask_ignores_padding_even_if_nan():
  values = jnp.array([1.0, jnp.nan, 3.0])
  stats = metrics.class_sums(values, jnp.array([0, 0, 1]), 2, mask=jnp.array([True, False, True]))
  np.testing.assert_allclose(stats.sums, [1.0, 3.0])
  np.testing.assert_allclose(stats.counts, [1.0, 1.0])


def test_batches_and_devices_merge_to_the_whole():
  n_dev = jax.local_device_count()
  logits = jax.random.normal(jax.random.key(0), (n_dev * 16, 5))
  labels = jax.random.randint(jax.random.key(1), (n_dev * 16,), 0, 5)
  whole = metrics.correct_sums(logits, labels)
  per_device = jax.pmap(lambda l, y: jax.lax.psum(metrics.correct_sums(l, y), "d"),
                        axis_name="d")(logits.reshape(n_dev, 16, 5), labels.reshape(n_dev, 16))
  np.testing.assert_allclose(per_device.sums[0], whole.sums)
  np.testing.assert_allclose(per_device.counts[-1], whole.counts)
  assert n_dev == 8, "conftest should give 8 fake CPU devices"


def test_metrics_jit():
  stats = jax.jit(metrics.correct_sums)(LOGITS, LABELS)
  for fn in (metrics.worst_class_accuracy, metrics.balanced_accuracy, metrics.accuracy_gap,
             metrics.accuracy_std, metrics.average_accuracy, metrics.per_class_accuracy):
    jax.jit(fn)(stats)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"labels must have shape \[n=6\]"):
    metrics.correct_sums(LOGITS, LABELS[:3])

"""Group DRO over classes: update by hand, simplex, absent classes, loss forms, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.core import group_dro, meta_reweight, metrics, mwu

# n = 6 examples of C = 3 classes; class 2 is absent.
LOSSES = jnp.array([1.0, 3.0, 0.5, 0.5, 2.0, 4.0])
LABELS = jnp.array([0, 0, 1, 1, 1, 0])
L_BY_HAND = np.array([(1.0 + 3.0 + 4.0) / 3, (0.5 + 0.5 + 2.0) / 3, 0.0])


def test_init_uniform():
  np.testing.assert_allclose(mwu.weights(mwu.init(3)), np.full(3, 1 / 3),
                             rtol=1e-6)


def test_per_class_losses_and_present():
  class_losses, present = group_dro.per_class_losses(LOSSES, LABELS, 3)
  np.testing.assert_allclose(class_losses, L_BY_HAND, rtol=1e-6)
  np.testing.assert_array_equal(present, [True, True, False])
  # A masked row is ignored even if its loss is NaN.
  losses = jnp.append(LOSSES, jnp.nan)
  class_losses, _ = group_dro.per_class_losses(losses, jnp.append(LABELS, 2), 3,
                                               mask=jnp.arange(7) < 6)
  np.testing.assert_allclose(class_losses, L_BY_HAND, rtol=1e-6)


def test_update_by_hand_two_classes():
  q = np.array([0.25, 0.75])
  eta = 0.5
  new = mwu.weights(group_dro.ascent_step(jnp.log(q), jnp.array([2.0, 1.0]),
                                           jnp.array([True, True]), eta))
  unnorm = q * np.exp(eta * np.array([2.0, 1.0]))
  np.testing.assert_allclose(new, unnorm / unnorm.sum(), rtol=1e-6)


def test_update_by_hand_three_classes_with_absent_class():
  q = np.array([0.2, 0.3, 0.5])
  eta = 0.1
  class_losses, present = group_dro.per_class_losses(LOSSES, LABELS, 3)
  new = np.asarray(mwu.weights(group_dro.ascent_step(jnp.log(q), class_losses, present, eta)))
  unnorm = q * np.exp(eta * L_BY_HAND)            # exp(η·0) = 1 for the absent class
  np.testing.assert_allclose(new, unnorm / unnorm.sum(), rtol=1e-6)
  # Absent class: its unnormalised weight is unchanged, only the renormalisation moves it;
  # its ratio to a present class shrinks by exactly exp(−η L) of that class.
  z = np.sum(q * np.exp(eta * L_BY_HAND))
  assert new[2] * z == pytest.approx(q[2], rel=1e-6)
  assert (new[2] / new[0]) == pytest.approx((q[2] / q[0]) * np.exp(-eta * L_BY_HAND[0]),
                                            rel=1e-6)
  # A NaN loss of an absent class is ignored.
  nan_losses = jnp.asarray(class_losses).at[2].set(jnp.nan)
  np.testing.assert_allclose(
      mwu.weights(group_dro.ascent_step(jnp.log(q), nan_losses, present, eta)), new,
      rtol=1e-6)


def test_absent_classes_keep_their_ratio():
  log_q = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
  new = mwu.weights(group_dro.ascent_step(log_q, jnp.array([5.0, 1.0, 9.0, 9.0]),
                                           jnp.array([False, True, False, False]), 1.0))
  assert float(new[2] / new[0]) == pytest.approx(3.0, rel=1e-5)
  assert float(new[3] / new[0]) == pytest.approx(4.0, rel=1e-5)


def test_weights_stay_on_the_simplex():
  rng = np.random.default_rng(0)
  log_q = mwu.init(5)
  update = jax.jit(group_dro.ascent_step)
  for _ in range(50):
    class_losses = jnp.asarray(rng.exponential(3.0, 5), jnp.float32)
    present = jnp.asarray(rng.uniform(size=5) < 0.7)
    log_q = update(log_q, class_losses, present, 2.0)
    q = np.asarray(mwu.weights(log_q))
    assert np.all(q >= 0) and abs(q.sum() - 1.0) < 1e-5
    assert abs(float(jax.nn.logsumexp(log_q))) < 1e-5
  huge = group_dro.ascent_step(mwu.init(3), jnp.array([1e30, 0.0, 1.0]),
                          jnp.array([True, True, True]), 1.0)
  assert np.all(np.isfinite(np.asarray(mwu.weights(huge))))


def test_loss_by_hand_and_gradient_treats_q_as_constant():
  q = np.array([0.5, 0.3, 0.2])
  log_q = jnp.log(jnp.asarray(q, jnp.float32))
  got = group_dro.loss(LOSSES, LABELS, log_q, 3)
  assert float(got) == pytest.approx(float(q @ L_BY_HAND), rel=1e-6)
  # d loss / d ℓ_i = q_{y_i} / n_{y_i}; nothing flows into log_q.
  grad_l, grad_q = jax.grad(group_dro.loss, argnums=(0, 2))(LOSSES, LABELS, log_q, 3)
  counts = np.array([3.0, 3.0, 0.0])
  np.testing.assert_allclose(grad_l, q[LABELS] / counts[LABELS], rtol=1e-6)
  np.testing.assert_array_equal(grad_q, np.zeros(3))


def test_example_weights_give_the_same_loss():
  rng = np.random.default_rng(1)
  losses = jnp.asarray(rng.exponential(size=20), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 20))          # C = 5: class 4 absent
  mask = jnp.asarray(rng.uniform(size=20) < 0.8)
  log_q = jnp.log(jnp.asarray(rng.dirichlet(np.ones(5)), jnp.float32))
  counts = metrics.class_sums(losses, labels, 5, mask).counts
  w = group_dro.example_weights(labels, log_q, counts, mask)
  assert np.all(np.asarray(w) >= 0) and np.all(np.asarray(w)[~np.asarray(mask)] == 0)
  np.testing.assert_allclose(meta_reweight.weighted_loss(losses, w),
                             group_dro.loss(losses, labels, log_q, 5, mask), rtol=1e-6)
  # Weights sum to the total q of the classes present.
  q = np.asarray(mwu.weights(log_q))
  assert float(w.sum()) == pytest.approx(q[np.asarray(counts) > 0].sum(), rel=1e-5)


def test_robust_loss_updates_first_then_weights_and_jits():
  log_q = jnp.log(jnp.array([0.2, 0.3, 0.5]))
  fn = jax.jit(functools.partial(group_dro.robust_loss, num_classes=3))
  got_loss, got_log_q = fn(LOSSES, LABELS, log_q, 0.1)
  class_losses, present = group_dro.per_class_losses(LOSSES, LABELS, 3)
  want_log_q = group_dro.ascent_step(log_q, class_losses, present, 0.1)
  np.testing.assert_allclose(got_log_q, want_log_q, rtol=1e-6, atol=1e-7)
  want = group_dro.loss(LOSSES, LABELS, want_log_q, 3)
  assert float(got_loss) == pytest.approx(float(want), rel=1e-6)
  # Jitted loss / example weights agree with eager.
  loss_jit = jax.jit(group_dro.loss, static_argnums=3)(LOSSES, LABELS, log_q, 3)
  assert float(loss_jit) == pytest.approx(float(group_dro.loss(LOSSES, LABELS, log_q, 3)),
                                          rel=1e-6)
  counts = metrics.class_sums(LOSSES, LABELS, 3).counts
  np.testing.assert_allclose(jax.jit(group_dro.example_weights)(LABELS, log_q, counts),
                             group_dro.example_weights(LABELS, log_q, counts), rtol=1e-6)


def test_validation_errors():
  log_q = mwu.init(3)
  present = jnp.ones(3, bool)
  with pytest.raises(ValueError, match="eta"):
    group_dro.ascent_step(log_q, jnp.ones(3), present, 0.0)
  with pytest.raises(ValueError, match="eta"):
    group_dro.ascent_step(log_q, jnp.ones(3), present, -1.0)
  with pytest.raises(ValueError, match="class_losses"):
    group_dro.ascent_step(log_q, jnp.ones(4), present, 0.1)
  with pytest.raises(ValueError, match="present"):
    group_dro.ascent_step(log_q, jnp.ones(3), jnp.ones(2, bool), 0.1)
  with pytest.raises(ValueError, match="labels"):
    group_dro.loss(LOSSES, LABELS[:3], log_q, 3)
  with pytest.raises(ValueError, match="log_q"):
    group_dro.loss(LOSSES, LABELS, log_q, 4)
  with pytest.raises(ValueError, match="class_counts"):
    group_dro.example_weights(LABELS, log_q, jnp.ones(4))
  with pytest.raises(ValueError, match="num_classes"):
    mwu.init(0)

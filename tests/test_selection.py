"""Selection scores and rules: hand-computed values, invariants, jit, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.core import selection
from reducr_jax.core import selection_scores

MODEL_LOSS = jnp.array([2.0, 1.2, 3.0, 0.5])
EXPERT_LOSSES = jnp.array([[1.0, 2.0], [1.5, 0.5], [0.0, 4.0], [1.0, 1.0]])


def test_excess_losses_by_hand():
  np.testing.assert_allclose(
      selection_scores.excess_losses(MODEL_LOSS, EXPERT_LOSSES),
      [[1.0, 0.0], [0.0, 0.7], [3.0, 0.0], [0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(
      selection_scores.excess_losses(MODEL_LOSS, EXPERT_LOSSES, clip=False),
      [[1.0, 0.0], [-0.3, 0.7], [3.0, -1.0], [-0.5, -0.5]], atol=1e-6)


def test_reducr_scores_by_hand():
  w = jnp.array([0.25, 0.75])
  # 0.25*[1, 0, 3, 0] + 0.75*[0, 0.7, 0, 0]
  np.testing.assert_allclose(selection_scores.reducr_scores(MODEL_LOSS, EXPERT_LOSSES, w),
                             [0.25, 0.525, 0.75, 0.0], atol=1e-6)
  np.testing.assert_allclose(selection_scores.reducr_scores(MODEL_LOSS, EXPERT_LOSSES, w, clip=False),
                             [0.25, -0.075 + 0.525, 0.0, -0.5], atol=1e-6)


def test_ablations():
  r = selection_scores.reducible_losses(MODEL_LOSS, EXPERT_LOSSES, use_expert=False)
  np.testing.assert_allclose(r, np.tile(np.asarray(MODEL_LOSS)[:, None], (1, 2)))
  r = selection_scores.reducible_losses(MODEL_LOSS, EXPERT_LOSSES, use_model_loss=False, clip=False)
  np.testing.assert_allclose(r, -np.asarray(EXPERT_LOSSES))
  # Clipped (official): max(-expert, 0) = 0 everywhere, exact +0.0.
  r = selection_scores.reducible_losses(MODEL_LOSS, EXPERT_LOSSES, use_model_loss=False)
  np.testing.assert_array_equal(r, np.zeros((4, 2)))
  assert not np.any(np.signbit(np.asarray(r)))
  with pytest.raises(ValueError, match="use_expert"):
    selection_scores.reducible_losses(MODEL_LOSS, EXPERT_LOSSES, use_expert=False,
                               use_model_loss=False, clip=False)


def test_no_model_loss_clipped_takes_the_first_k_points():
  """Official ablation (model_loss=False, clipped=True): all scores 0, top-k = indices
  0..k-1 (torch's unstable argsort takes another fixed set of positions: equal in
  distribution on a random batch). An expert loss of exactly 0 (−0.0 after negation) must
  not change that."""
  expert = EXPERT_LOSSES.at[3, 0].set(0.0)
  r = selection_scores.reducible_losses(MODEL_LOSS, expert, use_model_loss=False)
  scores = selection_scores.weighted_scores(r, jnp.array([0.3, 0.7]))
  np.testing.assert_array_equal(selection.top_k(scores, 2), [0, 1])
  np.testing.assert_array_equal(selection.top_k(scores, 3), [0, 1, 2])
  # Unclipped: R = -expert; w·R = [-1.7, -0.8, -2.8, -0.7] → top-2 = points 3, 1.
  r = selection_scores.reducible_losses(MODEL_LOSS, expert, use_model_loss=False, clip=False)
  scores = selection_scores.weighted_scores(r, jnp.array([0.3, 0.7]))
  np.testing.assert_allclose(scores, [-1.7, -0.8, -2.8, -0.7], atol=1e-6)
  np.testing.assert_array_equal(selection.top_k(scores, 2), [3, 1])


def test_rho_loss_scores():
  np.testing.assert_allclose(selection_scores.rho_loss_scores(MODEL_LOSS, jnp.array([1.0, 1.0, 0.5, 2.0])),
                             [1.0, 0.2, 2.5, -1.5], atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 17, 64])
def test_top_k_returns_the_k_largest(k):
  scores = jax.random.normal(jax.random.key(k), (64,))
  idx = jax.jit(selection.top_k, static_argnums=1)(scores, k)
  assert idx.dtype == jnp.int32 and idx.shape == (k,)
  np.testing.assert_array_equal(np.asarray(idx), np.argsort(-np.asarray(scores))[:k])


def test_gumbel_top_k_frequencies_match_softmax():
  logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
  keys = jax.random.split(jax.random.key(0), 20000)
  first = jax.vmap(lambda r: selection.gumbel_top_k(r, logits, 1)[0])(keys)
  freq = np.bincount(np.asarray(first), minlength=4) / len(keys)
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_gumbel_top_k_is_without_replacement():
  keys = jax.random.split(jax.random.key(1), 50)
  idx = jax.vmap(lambda r: selection.gumbel_top_k(r, jnp.zeros(10), 10))(keys)
  for row in np.asarray(idx):
    assert sorted(row.tolist()) == list(range(10))


def test_soft_top_k_zero_and_small_temperature_is_top_k():
  scores = jax.random.normal(jax.random.key(3), (40,))
  expected = set(np.argsort(-np.asarray(scores))[:8].tolist())
  assert set(np.asarray(selection.soft_top_k(jax.random.key(0), scores, 8, 0.0)).tolist()) == expected
  for seed in range(20):
    got = selection.soft_top_k(jax.random.key(seed), scores, 8, 1e-6)
    assert set(np.asarray(got).tolist()) == expected


def test_soft_top_k_large_temperature_is_nearly_uniform():
  scores = jnp.arange(10.0)
  keys = jax.random.split(jax.random.key(0), 20000)
  first = jax.vmap(lambda r: selection.soft_top_k(r, scores, 1, 1e4)[0])(keys)
  freq = np.bincount(np.asarray(first), minlength=10) / len(keys)
  np.testing.assert_allclose(freq, 0.1, atol=0.015)


def test_soft_top_k_rejects_negative_temperature():
  with pytest.raises(ValueError, match="temperature"):
    selection.soft_top_k(jax.random.key(0), jnp.zeros(4), 2, -1.0)


def test_train_loss_rank_probabilities():
  loss = jnp.array([0.3, 2.0, 1.0, 0.1])            # ranks: 2, 0, 1, 3
  logits = selection.train_loss_logits(loss, 100.0)
  np.testing.assert_allclose(logits, -np.array([2, 0, 1, 3]) * np.log(100.0) / 4, rtol=1e-6)
  keys = jax.random.split(jax.random.key(0), 20000)
  first = jax.vmap(lambda r: selection.train_loss_select(r, loss, 1)[0])(keys)
  freq = np.bincount(np.asarray(first), minlength=4) / len(keys)
  p = 100.0 ** (-np.array([2, 0, 1, 3]) / 4)
  np.testing.assert_allclose(freq, p / p.sum(), atol=0.015)
  sel = selection.train_loss_select(jax.random.key(5), jax.random.normal(jax.random.key(6), (32,)), 8)
  assert len(set(np.asarray(sel).tolist())) == 8


def test_uniform_select():
  keys = jax.random.split(jax.random.key(0), 5000)
  sel = jax.vmap(lambda r: selection.uniform_select(r, 10, 3))(keys)
  assert all(len(set(row.tolist())) == 3 for row in np.asarray(sel))
  freq = np.bincount(np.asarray(sel).ravel(), minlength=10) / sel.size
  np.testing.assert_allclose(freq, 0.1, atol=0.01)


def test_everything_jits():
  r = jax.random.key(0)
  w = jnp.array([0.5, 0.5])
  jax.jit(selection_scores.reducr_scores)(MODEL_LOSS, EXPERT_LOSSES, w)
  jax.jit(functools.partial(selection_scores.reducible_losses, clip=False, use_model_loss=False))(
      MODEL_LOSS, EXPERT_LOSSES)
  jax.jit(selection_scores.rho_loss_scores)(MODEL_LOSS, MODEL_LOSS)
  jax.jit(selection.train_loss_select, static_argnums=2)(r, MODEL_LOSS, 2)
  jax.jit(selection.uniform_select, static_argnums=(1, 2))(r, 4, 2)
  jax.jit(selection.soft_top_k, static_argnums=(2, 3))(r, MODEL_LOSS, 2, 0.5)
  # A traced temperature also works (sampling path).
  jax.jit(selection.soft_top_k, static_argnums=2)(r, MODEL_LOSS, 2, 0.5)


@pytest.mark.parametrize("call, match", [
    (lambda: selection_scores.excess_losses(jnp.zeros((4,)), jnp.zeros((5, 2))), r"expert_losses must have shape \[B=4, C\]"),
    (lambda: selection_scores.excess_losses(jnp.zeros((4, 1)), jnp.zeros((4, 2))), r"model_loss must have shape \[B\]"),
    (lambda: selection_scores.reducr_scores(jnp.zeros(4), jnp.zeros((4, 2)), jnp.ones(3) / 3), r"class_weights must have shape \[C=2\]"),
    (lambda: selection.top_k(jnp.zeros(4), 5), r"k must be in \[1, 4\]"),
    (lambda: selection.top_k(jnp.zeros(4), 0), r"k must be in \[1, 4\]"),
    (lambda: selection.uniform_select(jax.random.key(0), 4, 6), r"k must be in \[1, 4\]"),
    (lambda: selection_scores.rho_loss_scores(jnp.zeros(4), jnp.zeros(3)), r"irreducible_loss must have shape \[B=4\]"),
    (lambda: selection.train_loss_logits(jnp.zeros(4), 1.0), r"selection_pressure must be in \(1.0, inf\]"),
])
def test_bad_input_is_a_one_line_value_error(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)


def test_bad_input_raises_at_trace_time_under_jit():
  with pytest.raises(ValueError, match="expert_losses"):
    jax.jit(selection_scores.reducr_scores)(jnp.zeros(4), jnp.zeros((3, 2)), jnp.ones(2) / 2)


def test_top_k_partial_selection_matches_lax_top_k_and_skips_nan():
  # The CPU partial selection (B >= HOST_TOP_K_MIN_BATCH): same indices as lax.top_k
  # (ties to the lower index, -inf, -0.0 below +0.0), NaN never selected while k numbers
  # exist, works under vmap.
  n = selection.HOST_TOP_K_MIN_BATCH
  rng = np.random.default_rng(0)
  s = np.round(rng.normal(size=n) * 3).astype(np.float32)      # many ties
  s[::5] = -np.inf
  s[1::7] = np.where(rng.random(len(s[1::7])) < 0.5, -0.0, 0.0)
  for k in (1, 7, 819, n):
    np.testing.assert_array_equal(jax.jit(selection.top_k, static_argnums=1)(s, k),
                                  jax.lax.top_k(s, k)[1])
  with_nan = s.copy()
  with_nan[[3, 9, 100]] = np.nan
  got = np.asarray(selection.top_k(jnp.asarray(with_nan), n - 10))
  assert not set(got.tolist()) & {3, 9, 100}
  assert sorted(np.asarray(selection.top_k(jnp.asarray(with_nan), n)).tolist()) == list(range(n))
  batched = jax.vmap(lambda a: selection.top_k(a, 3))(jnp.asarray(s.reshape(2, n // 2)))
  np.testing.assert_array_equal(batched, jax.lax.top_k(s.reshape(2, n // 2), 3)[1])


# --------------------------------------------- global selection over a mapped axis


def _device_scores(n=8, b=5):
  return jax.random.normal(jax.random.key(7), (n, b))


def test_top_k_with_axis_name_is_global_under_pmap():
  """8 devices × 5 scores: every device returns the top-6 of all 40 (indices into the
  device-major concatenation), the single-device answer; without axis_name each device
  would select among its own 5 (indices < 5)."""
  assert jax.local_device_count() == 8
  scores = _device_scores()
  k = 6
  whole = np.asarray(selection.top_k(scores.reshape(-1), k))
  got = jax.pmap(lambda s: selection.top_k(s, k, axis_name="d"), axis_name="d")(scores)
  np.testing.assert_array_equal(np.asarray(got), np.tile(whole, (8, 1)))
  assert whole.max() >= 5                       # the global top-k leaves device 0
  masks = jax.pmap(lambda s: selection.local_mask(selection.top_k(s, k, axis_name="d"),
                                                  5, "d"), axis_name="d")(scores)
  masks = np.asarray(masks)
  assert masks.sum() == k
  np.testing.assert_array_equal(np.flatnonzero(masks.reshape(-1)), np.sort(whole))
  with pytest.raises(ValueError, match=r"k must be in \[1, 40\]"):
    jax.pmap(lambda s: selection.top_k(s, 41, axis_name="d"), axis_name="d")(scores)


def test_soft_and_gumbel_top_k_with_axis_name_equal_the_one_device_draw():
  scores = _device_scores()
  rng = jax.random.key(3)
  for fn in (lambda r, s, **kw: selection.soft_top_k(r, s, 6, 0.5, **kw),
             lambda r, s, **kw: selection.gumbel_top_k(r, s, 6, **kw)):
    whole = np.asarray(fn(rng, scores.reshape(-1)))
    got = jax.pmap(lambda s, r: fn(r, s, axis_name="d"), axis_name="d",
                   in_axes=(0, None))(scores, rng)
    np.testing.assert_array_equal(np.asarray(got), np.tile(whole, (8, 1)))
    assert len(set(whole.tolist())) == 6


def test_soft_top_k_traced_zero_temperature_is_top_k():
  """scores (1, 5, 3, 4), k = 2: top-k is (1, 3). Before, a traced τ = 0 divided the
  scores by 0 and returned the first k indices (0, 1)."""
  scores = jnp.array([1.0, 5.0, 3.0, 4.0])
  key = jax.random.key(0)
  soft = jax.jit(lambda t: selection.soft_top_k(key, scores, 2, t))
  np.testing.assert_array_equal(soft(0.0), [1, 3])
  np.testing.assert_array_equal(soft(jnp.float32(0.0)), [1, 3])
  np.testing.assert_array_equal(soft(0.5), selection.soft_top_k(key, scores, 2, 0.5))
  swept = jax.vmap(lambda t: selection.soft_top_k(key, scores, 2, t))(jnp.array([0.0, 0.5]))
  np.testing.assert_array_equal(swept[0], [1, 3])
  np.testing.assert_array_equal(swept[1], selection.soft_top_k(key, scores, 2, 0.5))

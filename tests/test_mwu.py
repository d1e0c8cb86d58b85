"""MWU class weights and class-holdout loss estimators."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.core import metrics, mwu, selection, selection_scores


def test_init_is_uniform_on_the_simplex():
  w = mwu.weights(mwu.init(4))
  np.testing.assert_allclose(w, 0.25, rtol=1e-6)


def test_class_objective_by_hand():
  excess = jnp.array([[1.0, 0.0], [3.0, 0.5]])
  h = jnp.array([1.0, 0.5])
  np.testing.assert_allclose(mwu.class_objective(excess, h), [4.0 - 2.0, 0.5 - 1.0])
  np.testing.assert_allclose(mwu.class_objective(excess, h, use_holdout=False), [4.0, 0.5])


def test_auto_eta_by_hand():
  # √(8 ln 2 / (8 · (√ln 2)²)) = 1 exactly; C = 10, T = 1500, L = 32 ln 10 (the default
  # config's k): √(8 / (1500 · 32² · ln 10)) = √(8 / 3 536 865.2) = 1.50398e-3.
  assert mwu.auto_eta(2, 8, np.sqrt(np.log(2))) == pytest.approx(1.0, rel=1e-12)
  assert mwu.auto_eta(10, 1500, 32 * np.log(10)) == pytest.approx(1.50398e-3, rel=1e-5)
  # Quadrupling T halves η; doubling L halves η.
  assert mwu.auto_eta(10, 6000, 1.0) == pytest.approx(mwu.auto_eta(10, 1500, 1.0) / 2)
  assert mwu.auto_eta(10, 1500, 2.0) == pytest.approx(mwu.auto_eta(10, 1500, 1.0) / 2)


@pytest.mark.parametrize("args, message", [
    ((1, 10, 1.0), "num_classes must be an int >= 2"),
    ((10, 0, 1.0), "num_updates must be an int >= 1"),
    ((10, 10, 0.0), "loss_range must be a finite number > 0"),
    ((10, 10, float("nan")), "loss_range must be a finite number > 0"),
])
def test_auto_eta_bad_input(args, message):
  with pytest.raises(ValueError, match=message):
    mwu.auto_eta(*args)


def test_update_by_hand():
  log_w = jnp.log(jnp.array([0.5, 0.5]))
  new = mwu.weights(mwu.update(log_w, jnp.array([2.0, -1.0]), 0.5))
  e = np.exp([-1.0, 0.5])
  np.testing.assert_allclose(new, e / e.sum(), rtol=1e-6)


def test_t_steps_equal_softmax_of_cumulative_alpha():
  alphas = jax.random.normal(jax.random.key(0), (200, 7)) * 50.0
  eta = 1e-2
  log_w = mwu.init(7)
  for a in alphas:
    log_w = jax.jit(mwu.update)(log_w, a, eta)
    w = mwu.weights(log_w)
    assert np.all(np.asarray(w) >= 0) and abs(float(w.sum()) - 1.0) < 1e-5
  np.testing.assert_allclose(mwu.weights(log_w), jax.nn.softmax(-eta * alphas.sum(0)), rtol=1e-4,
                             atol=1e-7)
  # No overflow even for enormous objectives.
  huge = mwu.update(mwu.init(3), jnp.array([1e30, -1e30, 0.0]), 1.0)
  assert np.all(np.isfinite(np.asarray(mwu.weights(huge))))


def test_anytime_three_updates_by_hand():
  """η_t = η_1/√t with η_1 = 1; round t plays softmax(−η_t S_{t−1}), so the t-th update
  returns softmax(−S_t/√(t+1)). α = [2, −1], [0, 1], [−1, 0]: S = [2, −1], [2, 0], [1, 0];
  w_2[0] = 1/(1 + e^{3/√2}) = 1/(1 + 8.34214) = 0.107042,
  w_3[0] = 1/(1 + e^{2/√3}) = 1/(1 + 3.17307) = 0.239632,
  w_4[0] = 1/(1 + e^{1/2}) = 1/(1 + 1.64872) = 0.377541."""
  state = mwu.anytime_init(2)
  np.testing.assert_allclose(mwu.weights(mwu.init(2)), [0.5, 0.5])
  expected = [0.107042, 0.239632, 0.377541]
  for t, (alpha, w0) in enumerate(zip([[2.0, -1.0], [0.0, 1.0], [-1.0, 0.0]], expected), 1):
    log_w, state = jax.jit(mwu.anytime_update)(state, jnp.array(alpha), 1.0)
    w = np.asarray(mwu.weights(log_w))
    np.testing.assert_allclose(w, [w0, 1 - w0], rtol=1e-5)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6 and int(state.num_updates) == t
  np.testing.assert_allclose(state.cumulative_alpha, [1.0, 0.0])


def test_anytime_eta_is_the_fixed_horizon_rate_at_t():
  # L = 32 ln 10, C = 10 (the default config): η_1 = (1/32) √(8 / ln 10) = 0.0582489, and
  # η_t = η_1/√t meets the fixed-horizon auto_eta(T) at t = T (1.50398e-3 at 1500).
  loss_range = 32 * np.log(10)
  assert mwu.anytime_eta_1(10, loss_range) == pytest.approx(0.0582489, rel=1e-5)
  sched = mwu.anytime_schedule(10, 1500, loss_range)
  assert sched == {"schedule": "anytime", "eta_1": pytest.approx(0.0582489, rel=1e-5),
                   "eta_T": pytest.approx(1.50398e-3, rel=1e-5), "num_updates": 1500}
  assert sched["eta_T"] == pytest.approx(sched["eta_1"] / np.sqrt(1500), rel=1e-12)


def test_anytime_is_the_lazy_form_not_the_incremental_one():
  """Over 300 random rounds the weights are softmax(−η_{t+1} S_t) (float64 reference),
  stay on the simplex, and differ from chaining update() with the same η_t."""
  alphas = np.asarray(jax.random.normal(jax.random.key(1), (300, 5))) * 40.0
  state, log_w_incremental = mwu.anytime_init(5), mwu.init(5)
  step = jax.jit(mwu.anytime_update)
  for t, a in enumerate(alphas, 1):
    log_w, state = step(state, jnp.asarray(a, jnp.float32), 0.05)
    log_w_incremental = mwu.update(log_w_incremental, jnp.asarray(a), 0.05 / np.sqrt(t + 1))
    w = np.asarray(mwu.weights(log_w))
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  z = -0.05 / np.sqrt(301) * alphas.sum(0)
  reference = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  np.testing.assert_allclose(w, reference, rtol=1e-4, atol=1e-7)
  assert not np.allclose(mwu.weights(log_w_incremental), reference, rtol=1e-2, atol=1e-3)


def test_anytime_bad_input():
  with pytest.raises(ValueError, match="eta_1 must be in"):
    mwu.anytime_update(mwu.anytime_init(3), jnp.ones(3), 0.0)
  with pytest.raises(ValueError, match=r"alpha must have shape \[C=3\]"):
    mwu.anytime_update(mwu.anytime_init(3), jnp.ones(4), 0.1)
  with pytest.raises(ValueError, match="num_classes must be a positive int"):
    mwu.anytime_init(0)


# A 3-step REDUCR example worked by hand: B=4, C=2, k=2, η=0.5, class-holdout loss h=[1, .5].
MODEL = [jnp.array([2.0, 1.2, 3.0, 0.5]), jnp.array([1.0, 2.0, 0.5, 1.5]),
         jnp.array([1.0, 1.0, 1.0, 2.0])]
EXPERT = [jnp.array([[1.0, 2.0], [1.5, 0.5], [0.0, 4.0], [1.0, 1.0]]),
          jnp.array([[0.0, 0.5], [1.0, 3.0], [1.0, 0.0], [0.5, 0.5]]),
          jnp.array([[0.5, 0.0], [0.0, 2.0], [2.0, 0.5], [1.0, 1.5]])]
H = jnp.array([1.0, 0.5])


def run_three_steps(clip, use_holdout):
  log_w, trace = mwu.init(2), []
  for ml, el in zip(MODEL, EXPERT):
    r = selection_scores.excess_losses(ml, el, clip)
    sel = selection.top_k(selection_scores.weighted_scores(r, mwu.weights(log_w)), 2)
    alpha = mwu.class_objective(r[sel], H, use_holdout)
    log_w = mwu.update(log_w, alpha, 0.5)
    trace.append((sorted(np.asarray(sel).tolist()), np.asarray(alpha)))
  return trace, np.asarray(mwu.weights(log_w))


@pytest.mark.parametrize("clip, use_holdout, selections, alphas", [
    # Step 1, w=[.5,.5]: clipped excess rows [1,0],[0,.7],[3,0],[0,0] -> scores
    #   [.5,.35,1.5,0] -> {0,2}; α = [1+3, 0] - 2·[1,.5] = [2,-1].
    # Step 2, w ∝ exp(-.5·[2,-1]) = [.182,.818]: excess [1,.5],[1,0],[0,.5],[1,1] ->
    #   scores [.591,.182,.409,1] -> {0,3}; α = [2,1.5] - [2,1] = [0,.5].
    # Step 3, w ∝ exp(-.5·[2,-.5]) = [.223,.777]: excess [.5,1],[1,0],[0,.5],[1,.5] ->
    #   scores [.889,.223,.389,.611] -> {0,3}; α = [1.5,1.5] - [2,1] = [-.5,.5].
    (True, True, [[0, 2], [0, 3], [0, 3]], [[2.0, -1.0], [0.0, 0.5], [-0.5, 0.5]]),
    # No clip. Step 1: excess [1,0],[-.3,.7],[3,-1],[-.5,-.5] -> scores [.5,.2,1,-.5]
    #   -> {0,2}; α = [4,-1] - [2,1] = [2,-2].
    # Step 2, w = [.119,.881]: excess [1,.5],[1,-1],[-.5,.5],[1,1] -> [.56,-.76,.38,1]
    #   -> {0,3}; α = [0,.5]. Step 3, w = [.148,.852]: excess [.5,1],[1,-1],[-1,.5],[1,.5]
    #   -> [.93,-.70,.28,.57] -> {0,3}; α = [-.5,.5].
    (False, True, [[0, 2], [0, 3], [0, 3]], [[2.0, -2.0], [0.0, 0.5], [-0.5, 0.5]]),
    # No holdout term: α = Σ excess of the selected (same selections here).
    (True, False, [[0, 2], [0, 3], [0, 3]], [[4.0, 0.0], [2.0, 1.5], [1.5, 1.5]]),
])
def test_three_step_reducr_worked_by_hand(clip, use_holdout, selections, alphas):
  trace, w = run_three_steps(clip, use_holdout)
  assert [t[0] for t in trace] == selections
  np.testing.assert_allclose([t[1] for t in trace], alphas, atol=1e-6)
  cum = np.sum(alphas, axis=0)
  expected = np.exp(-0.5 * cum) / np.exp(-0.5 * cum).sum()
  np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_class_holdout_loss_handles_empty_class():
  stats = metrics.class_sums(jnp.array([1.0, 3.0, 2.0]), jnp.array([0, 0, 2]), 3)
  np.testing.assert_allclose(mwu.class_holdout_loss(stats), [2.0, 0.0, 2.0])


def test_full_pass_mean_merges_batches():
  losses = jax.random.uniform(jax.random.key(0), (100,))
  labels = jax.random.randint(jax.random.key(1), (100,), 0, 4)
  parts = [metrics.class_sums(losses[i:i + 25], labels[i:i + 25], 4) for i in range(0, 100, 25)]
  merged = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), parts)
  expected = [float(np.mean(np.asarray(losses)[np.asarray(labels) == c])) for c in range(4)]
  np.testing.assert_allclose(mwu.class_holdout_loss(merged), expected, rtol=1e-5)


def test_ema_with_zero_decay_is_the_batch_value():
  state = mwu.ema_init(3)
  for step in range(3):
    batch = metrics.class_sums(jnp.array([1.0 + step, 5.0]), jnp.array([0, 1]), 3)
    state = mwu.ema_update(state, batch, 0.0)
    np.testing.assert_allclose(mwu.ema_value(state, 0.0), [1.0 + step, 5.0, 0.0])


def test_ema_is_debiased_and_skips_absent_classes():
  a = 0.9
  state = mwu.ema_init(2)
  state = mwu.ema_update(state, metrics.class_sums(jnp.array([2.0, 4.0]), jnp.array([0, 1]), 2), a)
  # First update: the de-biased value is the batch mean exactly.
  np.testing.assert_allclose(mwu.ema_value(state, a), [2.0, 4.0], rtol=1e-6)
  # Second batch has only class 0 with loss 1: m = .9·.2 + .1·1 = .28, /(1-.81) = 1.47368.
  state = mwu.ema_update(state, metrics.class_sums(jnp.array([1.0]), jnp.array([0]), 2), a)
  np.testing.assert_allclose(mwu.ema_value(state, a), [0.28 / 0.19, 4.0], rtol=1e-5)
  np.testing.assert_array_equal(state.num_updates, [2, 1])
  assert np.all(np.isfinite(np.asarray(mwu.ema_value(mwu.ema_init(2), a))))


def test_mwu_functions_jit():
  jax.jit(mwu.update)(mwu.init(3), jnp.ones(3), 0.1)
  jax.jit(mwu.class_objective, static_argnums=2)(jnp.ones((2, 3)), jnp.ones(3), False)
  stats = metrics.class_sums(jnp.ones(2), jnp.array([0, 1]), 3)
  jax.jit(mwu.ema_update)(mwu.ema_init(3), stats, 0.9)
  jax.jit(mwu.ema_value)(mwu.ema_init(3), 0.9)
  jax.jit(mwu.class_holdout_loss)(stats)


@pytest.mark.parametrize("call, match", [
    (lambda: mwu.update(mwu.init(3), jnp.ones(3), 0.0), r"eta must be in \(0.0, inf\]"),
    (lambda: mwu.update(mwu.init(3), jnp.ones(3), -1.0), r"eta must be in"),
    (lambda: mwu.update(mwu.init(3), jnp.ones(4), 0.1), r"alpha must have shape \[C=3\]"),
    (lambda: mwu.class_objective(jnp.ones((2, 3)), jnp.ones(2)), r"class_holdout_loss must have shape \[C=3\]"),
    (lambda: mwu.ema_update(mwu.ema_init(2), metrics.class_sums(jnp.ones(1), jnp.zeros(1, int), 2), 1.0), r"decay must be in \[0.0, 1.0\)"),
    (lambda: mwu.init(0), "num_classes must be a positive int"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------- optax-style transforms


def test_hedge_one_step_by_hand():
  """From uniform on C = 2, η = 0.5, α = (2, −1): w ∝ (e^{−1}, e^{0.5}), i.e.
  w_0 = 1/(1 + e^{1.5}) = 1/(1 + 4.481689) = 0.182426; the state holds log w."""
  tx = mwu.hedge(0.5)
  state = tx.init(2)
  assert isinstance(state, mwu.HedgeState)
  np.testing.assert_allclose(state.log_weights, np.log([0.5, 0.5]), rtol=1e-6)
  w, state = jax.jit(tx.update)(jnp.array([2.0, -1.0]), state)
  np.testing.assert_allclose(w, [0.182426, 0.817574], rtol=1e-5)
  np.testing.assert_allclose(state.log_weights, np.log([0.182426, 0.817574]), rtol=1e-5)
  # A second step is the array function's step, to the bit.
  w2, state2 = tx.update(jnp.array([0.0, 3.0]), state)
  expected = mwu.update(state.log_weights, jnp.array([0.0, 3.0]), 0.5)
  np.testing.assert_array_equal(state2.log_weights, expected)
  np.testing.assert_array_equal(w2, mwu.weights(expected))


def test_anytime_hedge_is_anytime_update():
  """The transform gives the hand-computed anytime weights (test above: 0.107042, ...)."""
  tx = mwu.anytime_hedge(1.0)
  state = tx.init(2)
  for alpha, w0 in zip([[2.0, -1.0], [0.0, 1.0], [-1.0, 0.0]], [0.107042, 0.239632, 0.377541]):
    w, state = jax.jit(tx.update)(jnp.array(alpha), state)
    np.testing.assert_allclose(w, [w0, 1 - w0], rtol=1e-5)
    np.testing.assert_allclose(np.exp(state.log_weights), w, rtol=1e-6)
  assert int(state.num_updates) == 3
  np.testing.assert_allclose(state.cumulative_alpha, [1.0, 0.0])


@pytest.mark.parametrize("make, message", [
    (lambda: mwu.hedge(0.0), r"eta must be in \(0.0, inf\], got 0.0"),
    (lambda: mwu.hedge(float("inf")), "eta must be a finite number > 0, got inf"),
    (lambda: mwu.anytime_hedge(-1.0), r"eta_1 must be in \(0.0, inf\]"),
    (lambda: mwu.hedge(0.1).update(jnp.ones(3), mwu.hedge(0.1).init(2)),
     r"alpha must have shape \[C=2\] \(C from state\), got \(3,\)"),
    (lambda: mwu.hedge(0.1).update(jnp.ones(2, jnp.int32), mwu.hedge(0.1).init(2)),
     "alpha must be a float array, got dtype int32"),
])
def test_hedge_bad_input_is_one_line(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_bare_log_weight_functions_refuse_weights():
  """Weights handed for log-weights: logsumexp(0.5, 0.5) = ln 2 + 0.5 = 1.19315, not 0.
  Before the check mwu.weights gave softmax(0.5, 0.5) and update a wrong step silently."""
  w = jnp.array([0.5, 0.5])
  with pytest.raises(ValueError, match=r"log_w must be normalised log-weights .* got "
                                       r"logsumexp 1.19315"):
    mwu.weights(w)
  with pytest.raises(ValueError, match="log_w must be normalised log-weights"):
    mwu.update(w, jnp.ones(2), 0.1)
  with pytest.raises(ValueError, match="log_w must be normalised log-weights"):
    mwu.update(jnp.zeros(3), jnp.ones(3), 0.1)       # unnormalised log-weights too
  # Normalised log-weights (any, not only uniform) pass; traced ones cannot be checked.
  np.testing.assert_allclose(mwu.weights(jnp.log(jnp.array([0.25, 0.75]))), [0.25, 0.75],
                             rtol=1e-6)
  np.testing.assert_allclose(jax.jit(mwu.weights)(jnp.zeros(2)), [0.5, 0.5])

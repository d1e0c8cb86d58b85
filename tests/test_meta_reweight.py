"""Ren et al. (2018) meta-reweighting: closed forms, edge cases, jit/pmap, state, optax."""

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reducr_jax.core import meta_reweight

D = 5


def logistic_losses(params, batch):
  """softplus(−y (w·x + b)), y ∈ {−1, 1} → [n]."""
  return jax.nn.softplus(-batch["y"] * (batch["x"] @ params["w"] + params["b"]))


def make_problem(seed=0, n=16, m=12):
  """Logistic regression with ~30% flipped training labels and a clean validation set."""
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=D)
  params = {"w": jnp.asarray(0.3 * rng.normal(size=D), jnp.float32), "b": jnp.float32(0.1)}
  x = rng.normal(size=(n, D))
  y = np.sign(x @ w_true + 1e-3) * np.where(rng.uniform(size=n) < 0.3, -1.0, 1.0)
  xv = rng.normal(size=(m, D))
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  return (params, {"x": f32(x), "y": f32(y)},
          {"x": f32(xv), "y": f32(np.sign(xv @ w_true + 1e-3))})


#: Jitted public functions (``loss_fn``/``tx`` static), so the tests compile once per shape.
example_weights = jax.jit(meta_reweight.example_weights, static_argnums=0)
example_weights_optax = jax.jit(meta_reweight.example_weights_optax, static_argnums=(0, 3))


@jax.jit
def sgd_meta_gradient(params, train, val, lr):
  return meta_reweight.meta_gradient(lambda p, s, b: (logistic_losses(p, b), s), params, (),
                                     train, val, meta_reweight.sgd_step(lr))


def flat_grad(fn, params):
  return jax.flatten_util.ravel_pytree(jax.grad(fn)(params))[0]


@jax.jit
def closed_form_meta_grad(params, train, val, lr, val_params=None, precond=1.0):
  """−lr · ⟨∇L_val(θ'), P ∇ℓ_i(θ)⟩ with per-example gradients from vmap(grad)."""
  val_params = params if val_params is None else val_params
  g_val = flat_grad(lambda p: jnp.mean(logistic_losses(p, val)), val_params)
  per_example = jax.vmap(lambda x, y: flat_grad(
      lambda p: logistic_losses(p, {"x": x[None], "y": y[None]})[0], params))(
          train["x"], train["y"])
  return -lr * (per_example * precond) @ g_val


def normalise(g):
  w = np.maximum(-np.asarray(g, np.float64), 0.0)
  return w / w.sum() if w.sum() > 0 else w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logistic_regression_matches_closed_form(seed):
  params, train, val = make_problem(seed)
  lr = 0.5
  g = sgd_meta_gradient(params, train, val, lr)
  expected = closed_form_meta_grad(params, train, val, lr)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
  w = example_weights(logistic_losses, params, train, val, lr)
  np.testing.assert_allclose(w, normalise(expected), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(w) >= 0) and abs(float(w.sum()) - 1.0) < 1e-6
  assert 0 < np.count_nonzero(np.asarray(w)) < w.shape[0]  # the test is not vacuous


def test_weights_do_not_depend_on_lr_scale():
  params, train, val = make_problem(3)
  w1 = example_weights(logistic_losses, params, train, val, 0.1)
  w2 = example_weights(logistic_losses, params, train, val, 3.0)
  np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-7)


def test_duplicates_equal_and_flipped_label_gets_zero():
  params, _, val = make_problem(4)
  xv, yv = val["x"], val["y"]
  # Training batch: clean copies of validation points, one duplicated, and one flipped.
  x = jnp.concatenate([xv[:4], xv[1:2], xv[2:3]])
  y = jnp.concatenate([yv[:4], yv[1:2], -yv[2:3]])
  train = {"x": x, "y": y}
  w = np.asarray(example_weights(logistic_losses, params, train,
                                 {"x": xv[2:3], "y": yv[2:3]}, 0.1))
  assert w[1] == pytest.approx(w[4], rel=1e-6)
  assert w[5] == 0.0 and w[2] > 0          # flipped copy of the validation point vs clean
  assert abs(w.sum() - 1.0) < 1e-6
  w_all = np.asarray(example_weights(logistic_losses, params, train, val, 0.1))
  assert w_all[1] == pytest.approx(w_all[4], rel=1e-6)


def test_all_opposed_gives_zeros_not_nan():
  params, _, val = make_problem(5)
  one = {"x": val["x"][:1], "y": val["y"][:1]}
  train = {"x": jnp.repeat(one["x"], 4, axis=0), "y": -jnp.repeat(one["y"], 4)}
  w = example_weights(logistic_losses, params, train, one, 0.1)
  np.testing.assert_array_equal(w, np.zeros(4))
  # Zero gradients everywhere (lr has no effect, all ε-gradients are 0) → zeros too.
  zero_loss = lambda p, b: 0.0 * logistic_losses(p, b)  # noqa: E731
  np.testing.assert_array_equal(
      example_weights(zero_loss, params, train, one, 0.1), np.zeros(4))


def test_jit_with_traced_lr_and_stop_gradient():
  params, train, val = make_problem(6)
  fn = jax.jit(functools.partial(meta_reweight.example_weights, logistic_losses))
  w_jit = fn(params, train, val, jnp.float32(0.5))
  w = meta_reweight.example_weights(logistic_losses, params, train, val, 0.5)
  np.testing.assert_allclose(w_jit, w, rtol=1e-6, atol=1e-8)

  # The weights are constants for the training step: its gradient is the weighted one.
  def train_loss(p):
    wts = meta_reweight.example_weights(logistic_losses, p, train, val, 0.5)
    return meta_reweight.weighted_loss(logistic_losses(p, train), wts)

  expected = jax.grad(lambda p: jnp.sum(w * logistic_losses(p, train)))(params)
  got = jax.jit(jax.grad(train_loss))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pmap_per_device_batches():
  n_dev = jax.local_device_count()
  assert n_dev == 8
  params, _, val = make_problem(7)
  batches = [make_problem(100 + i, n=6)[1] for i in range(n_dev)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)
  fn = jax.pmap(functools.partial(meta_reweight.example_weights, logistic_losses, lr=0.2),
                in_axes=(None, 0, None))
  w = fn(params, stacked, val)
  assert w.shape == (n_dev, 6)
  for i in range(n_dev):
    single = example_weights(logistic_losses, params, batches[i], val, 0.2)
    np.testing.assert_allclose(w[i], single, rtol=1e-5, atol=1e-7)


class BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(3)(nn.relu(x))


def ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def test_with_state_batchnorm():
  model = BNNet()
  rng = np.random.default_rng(8)
  train = {"x": rng.normal(size=(10, 4)).astype(np.float32), "y": rng.integers(0, 3, 10)}
  val = {"x": rng.normal(0.5, 1.0, (7, 4)).astype(np.float32), "y": rng.integers(0, 3, 7)}
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0),
                                                                  train["x"])
  params = variables["params"]
  state = {"batch_stats": jax.tree.map(lambda a: a + 0.25, variables["batch_stats"])}

  def loss_fn(p, s, b):
    logits, new_state = model.apply({"params": p, **s}, b["x"], train=True,
                                    mutable=["batch_stats"])
    return ce(logits, b["y"]), new_state

  @jax.jit
  def run(params, state):
    w = meta_reweight.example_weights_with_state(loss_fn, params, state, train, val, 0.3)
    g = meta_reweight.meta_gradient(loss_fn, params, state, train, val,
                                    meta_reweight.sgd_step(0.3))
    # Closed form with the per-example Jacobian (BatchNorm couples the batch's examples).
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacrev(lambda f: loss_fn(unravel(f), state, train)[0])(flat)     # [n, P]
    g_val = jax.grad(lambda f: jnp.mean(loss_fn(unravel(f), state, val)[0]))(flat)
    return w, g, -0.3 * jac @ g_val

  before = jax.tree.map(np.array, state)
  w, g, closed = run(params, state)
  assert w.shape == (10,) and np.all(np.isfinite(np.asarray(w)))
  assert abs(float(w.sum()) - 1.0) < 1e-5
  jax.tree.map(np.testing.assert_array_equal, state, before)  # state untouched
  np.testing.assert_allclose(g, closed, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(w, normalise(g), rtol=1e-4, atol=1e-7)


def test_with_state_uses_given_state_for_both_passes():
  params, train, val = make_problem(9)

  def scaled(p, s, b):           # returns a changed state, which must be discarded
    return s["scale"] * logistic_losses(p, b), {"scale": 100.0 * s["scale"]}

  s = {"scale": jnp.array(3.0)}
  g = jax.jit(lambda p, s: meta_reweight.meta_gradient(
      scaled, p, s, train, val, meta_reweight.sgd_step(0.1)))(params, s)
  plain = closed_form_meta_grad(params, train, val, 0.1)
  np.testing.assert_allclose(g, 9.0 * plain, rtol=1e-5, atol=1e-7)


def test_with_state_equals_plain_without_state():
  params, train, val = make_problem(10)
  stateful = lambda p, s, b: (logistic_losses(p, b), s)  # noqa: E731
  np.testing.assert_allclose(
      jax.jit(meta_reweight.example_weights_with_state, static_argnums=0)(
          stateful, params, {}, train, val, 0.2),
      example_weights(logistic_losses, params, train, val, 0.2), rtol=1e-6)


def test_optax_sgd_equals_plain():
  params, train, val = make_problem(11)
  tx = optax.sgd(0.4)
  fn = jax.jit(lambda p, s, t, v: meta_reweight.example_weights_optax(
      logistic_losses, p, s, tx, t, v))
  np.testing.assert_allclose(
      fn(params, tx.init(params), train, val),
      example_weights(logistic_losses, params, train, val, 0.4),
      rtol=1e-5, atol=1e-7)


@functools.partial(jax.jit, static_argnums=0)
def _meta_grad_optax(tx, opt_state, params, train, val):
  return meta_reweight.meta_gradient(lambda p, s, b: (logistic_losses(p, b), s), params, (),
                                     train, val, meta_reweight.optax_step(tx, opt_state))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _advance(tx, params, train, steps=3):
  """The optimizer state after ``steps`` updates (parameters kept fixed)."""
  opt_state = tx.init(params)
  for _ in range(steps):
    g = jax.grad(lambda p: jnp.mean(logistic_losses(p, train)))(params)
    _, opt_state = tx.update(g, opt_state, params)
  return opt_state


@pytest.mark.parametrize("nesterov", [False, True])
def test_optax_momentum_closed_form(nesterov):
  params, train, val = make_problem(12)
  lr, mu = 0.3, 0.9
  tx = optax.sgd(lr, momentum=mu, nesterov=nesterov)
  scale = lr * (1 + mu) if nesterov else lr               # d update / d g
  # Fresh state: the SGD direction (so the SGD weights), scaled by (1 + μ) for Nesterov.
  np.testing.assert_allclose(_meta_grad_optax(tx, tx.init(params), params, train, val),
                             closed_form_meta_grad(params, train, val, scale), rtol=1e-5,
                             atol=1e-7)
  opt_state = _advance(tx, params, train)
  trace = opt_state[0].trace
  shift = mu * mu if nesterov else mu                     # θ' = θ − lr·shift·trace
  theta_prime = jax.tree.map(lambda p, m: p - lr * shift * m, params, trace)
  expected = closed_form_meta_grad(params, train, val, scale, val_params=theta_prime)
  np.testing.assert_allclose(_meta_grad_optax(tx, opt_state, params, train, val), expected,
                             rtol=1e-5, atol=1e-7)


def test_optax_adam_behaviour():
  params, train, val = make_problem(13)
  lr = 0.1
  # Fresh state (v = 0): d sqrt at 0 is infinite → NaN weights.
  adam = optax.adam(lr)
  assert np.all(np.isnan(np.asarray(example_weights_optax(
      logistic_losses, params, adam.init(params), adam, train, val))))
  # eps_root > 0: a uniform scale at a fresh state → the SGD weights.
  adam_root = optax.adam(lr, eps_root=1e-8)
  np.testing.assert_allclose(
      example_weights_optax(logistic_losses, params, adam_root.init(params), adam_root, train,
                            val),
      example_weights(logistic_losses, params, train, val, lr),
      rtol=1e-4, atol=1e-7)
  # After some steps (all v > 0): the preconditioned inner product at θ'.
  b1, b2, eps, t = 0.9, 0.999, 1e-8, 4
  opt_state = _advance(adam, params, train, steps=t - 1)
  mu, nu = opt_state[0].mu, opt_state[0].nu
  v_hat = jax.tree.map(lambda v: b2 * v / (1 - b2 ** t), nu)
  denom = jax.tree.map(lambda v: jnp.sqrt(v) + eps, v_hat)
  theta_prime = jax.tree.map(lambda p, m, d: p - lr * (b1 * m / (1 - b1 ** t)) / d,
                             params, mu, denom)
  precond = jax.flatten_util.ravel_pytree(jax.tree.map(lambda d: 1.0 / d, denom))[0]
  expected = closed_form_meta_grad(params, train, val, lr * (1 - b1) / (1 - b1 ** t),
                                   val_params=theta_prime, precond=precond)
  np.testing.assert_allclose(_meta_grad_optax(adam, opt_state, params, train, val), expected,
                             rtol=1e-4, atol=1e-6)
  # One parameter whose gradient was always 0 (v = 0 there) poisons every weight.
  dead = {"x": train["x"].at[:, 0].set(0.0), "y": train["y"]}
  dead_state = _advance(adam, params, dead)
  assert np.all(np.isnan(np.asarray(_meta_grad_optax(adam, dead_state, params, dead, val))))


def test_optax_clipping_gives_nan():
  params, train, val = make_problem(14)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
  assert np.all(np.isnan(np.asarray(example_weights_optax(
      logistic_losses, params, tx.init(params), tx, train, val))))


def test_optax_rmsprop_adagrad_fresh_equal_sgd_and_lion_gives_zeros():
  params, train, val = make_problem(16)
  sgd_w = example_weights(logistic_losses, params, train, val, 0.1)
  for tx in (optax.rmsprop(0.1), optax.adagrad(0.1)):    # uniform preconditioner at init
    np.testing.assert_allclose(
        example_weights_optax(logistic_losses, params, tx.init(params), tx, train, val),
        sgd_w, rtol=1e-4, atol=1e-7)
  lion = optax.lion(0.1)                                  # sign(·) has zero derivative
  np.testing.assert_array_equal(
      example_weights_optax(logistic_losses, params, lion.init(params), lion, train, val),
      np.zeros(train["y"].shape[0]))


def test_weighted_loss():
  np.testing.assert_allclose(
      meta_reweight.weighted_loss(jnp.array([1.0, 2.0, 4.0]), jnp.array([0.5, 0.25, 0.25])),
      2.0)


def test_validation_errors():
  params, train, val = make_problem(15)
  with pytest.raises(ValueError, match="lr"):
    meta_reweight.example_weights(logistic_losses, params, train, val, 0.0)
  with pytest.raises(ValueError, match="lr"):
    meta_reweight.example_weights(logistic_losses, params, train, val, jnp.ones(2))
  with pytest.raises(ValueError, match=r"loss_fn must return per-example losses"):
    meta_reweight.example_weights(lambda p, b: jnp.mean(logistic_losses(p, b)), params,
                                  train, val, 0.1)
  with pytest.raises(ValueError, match=r"loss_fn must return \(per_example_losses"):
    meta_reweight.example_weights_with_state(lambda p, s, b: logistic_losses(p, b), params,
                                             {}, train, val, 0.1)
  with pytest.raises(ValueError, match="loss_fn must be callable"):
    meta_reweight.example_weights(None, params, train, val, 0.1)
  with pytest.raises(ValueError, match="tx"):
    meta_reweight.example_weights_optax(logistic_losses, params, (), "sgd", train, val)
  with pytest.raises(ValueError, match="weights"):
    meta_reweight.weighted_loss(jnp.ones(3), jnp.ones(4))


def test_weights_normalise_across_devices():
  n_dev = jax.local_device_count()
  g = -jnp.abs(jax.random.normal(jax.random.key(3), (n_dev, 4)))
  per_device = jax.pmap(lambda x: meta_reweight.weights_from_meta_gradient(x, axis_name="d"),
                        axis_name="d")(g)
  np.testing.assert_allclose(np.asarray(per_device).ravel(),
                             meta_reweight.weights_from_meta_gradient(g.ravel()), rtol=1e-5)


def test_forward_mode_meta_gradient_equals_nested_grad():
  model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
  x = jax.random.normal(jax.random.key(0), (12, 5))
  y = jax.random.randint(jax.random.key(1), (12,), 0, 3)
  params = model.init(jax.random.key(2), x)["params"]

  def loss_fn(p, state, batch):
    logits = model.apply({"params": p}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]), state

  train, val = (x[:8], y[:8]), (x[8:], y[8:])
  nested = meta_reweight.meta_gradient(loss_fn, params, (), train, val,
                                       meta_reweight.sgd_step(0.3))
  forward = jax.jit(meta_reweight.meta_gradient_jvp, static_argnums=0)(
      loss_fn, params, (), train, val, 0.3)
  np.testing.assert_allclose(forward, nested, rtol=1e-4, atol=1e-7)
  assert np.any(np.asarray(nested) < 0) and np.any(np.asarray(nested) > 0)

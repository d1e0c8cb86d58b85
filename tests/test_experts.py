"""Class-irreducible loss models: γ-weighted loss, stacked training, evaluation strategies."""

import collections
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reducr_jax.core import class_weighted_losses
from reducr_jax.train import experts_step
from reducr_jax.train import references
from reducr_jax.core import stacked_experts
from reducr_jax.models.mlp import MLP
import numerics


def test_class_weighted_loss_by_hand():
  loss = jnp.array([1.0, 2.0, 3.0])
  labels = jnp.array([0, 1, 1])
  # class 1, γ = 9: (1·1 + 10·2 + 10·3) / 3
  assert float(class_weighted_losses.class_weighted_loss(loss, labels, 1, 9.0)) == pytest.approx(51 / 3)
  assert float(class_weighted_losses.class_weighted_loss(loss, labels, 0, 0.0)) == pytest.approx(2.0)


def test_weight_sum_normalisation_by_hand():
  """Official nn.CrossEntropyLoss(weight=…): Σ w·ℓ / Σ w."""
  loss = jnp.array([1.0, 2.0, 3.0])
  labels = jnp.array([0, 1, 1])
  # class 1, γ = 9: weights [1, 10, 10] → (1 + 20 + 30) / 21
  assert float(class_weighted_losses.class_weighted_loss(loss, labels, 1, 9.0, "weight_sum")) == \
      pytest.approx(51 / 21)
  # class 0: weights [10, 1, 1] → (10 + 2 + 3) / 12
  assert float(class_weighted_losses.class_weighted_loss(loss, labels, 0, 9.0, "weight_sum")) == \
      pytest.approx(15 / 12)
  # γ = 0: both normalisations are the plain mean.
  assert float(class_weighted_losses.class_weighted_loss(loss, labels, 0, 0.0, "weight_sum")) == \
      pytest.approx(2.0)
  # Per column over axis 0: [[1, 2], [3, 4]] with weights [[1, 3], [1, 1]].
  np.testing.assert_allclose(class_weighted_losses.weighted_average(
      jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[1.0, 3.0], [1.0, 1.0]]),
      "weight_sum", axis=0), [4 / 2, 10 / 4])
  with pytest.raises(ValueError, match="normalisation must be one of"):
    class_weighted_losses.weighted_average(loss, loss, "sum")


def test_multihead_loss_weight_sum_by_hand():
  # Two examples, two heads, two classes; every logit 0 (ℓ = log 2) except example 0 under
  # head 0, which gives its label p = 3/4.
  logits = jnp.stack([jnp.array([[0.0, 0.0], [0.0, 0.0]]),        # example 0 (y = 0)
                      jnp.array([[0.0, 0.0], [0.0, 0.0]])])       # example 1 (y = 1)
  logits = logits.at[0, 0].set(jnp.array([jnp.log(3.0), 0.0]))   # ex 0, head 0: p(0) = 3/4
  y = jnp.array([0, 1])
  l00, l = -np.log(0.75), np.log(2.0)        # ℓ[ex 0, head 0]; every other ℓ = log 2
  # γ = 9, head 0 weights [10, 1], head 1 weights [1, 10].
  head0 = (10 * l00 + l) / 11
  head1 = (l + 10 * l) / 11
  assert float(class_weighted_losses.multihead_loss(logits, y, 9.0, normalisation="weight_sum")) == pytest.approx(
      (head0 + head1) / 2, rel=1e-6)
  assert float(class_weighted_losses.multihead_loss(logits, y, 9.0)) == pytest.approx(
      (10 * l00 + l + l + 10 * l) / 4, rel=1e-6)


def toy_problem(n=600, seed=0):
  """Three overlapping 2-D Gaussian classes: no model is right everywhere, so an expert
  up-weighting its class trades the other classes' loss for its own."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.8]])
  x = centres[y] + rng.normal(scale=0.6, size=(n, 2))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def make_model(heads=None):
  if heads is None:
    model = MLP(hidden=(16,), num_outputs=3)
  else:
    model = stacked_experts.MultiHead(trunk=MLP(hidden=(16,), num_outputs=None), num_heads=heads,
                              num_classes=3)
  init = lambda rng: model.init(rng, jnp.zeros((1, 2)))["params"]  # noqa: E731
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  return init, apply


def train_experts(gamma=9.0, steps=300):
  x, y = toy_problem()
  init, apply = make_model()
  tx = optax.adam(3e-2)
  state = stacked_experts.init_experts(init, tx, jax.random.key(0), 3)
  step = jax.jit(functools.partial(experts_step.experts_train_step, apply, tx), static_argnums=())
  for _ in range(steps):
    state, losses = step(state, x, y, gamma)
  return apply, state, losses


@pytest.fixture(scope="module")
def trained():
  return train_experts()


def test_each_expert_is_best_on_its_own_class(trained):
  apply, state, losses = trained
  assert losses.shape == (3,)
  x, y = toy_problem(seed=1)
  table = np.asarray(stacked_experts.expert_losses(apply, state.params, x, y))      # [B, C]
  per_class = np.stack([table[np.asarray(y) == c].mean(0) for c in range(3)])  # [class, expert]
  for c in range(3):
    others = [per_class[c, e] for e in range(3) if e != c]
    assert per_class[c, c] < min(others) - 0.05, per_class


def test_strategies_and_precomputed_table_agree(trained):
  apply, state, _ = trained
  x, y = toy_problem(n=37, seed=2)
  results = {s: np.asarray(jax.jit(functools.partial(stacked_experts.expert_losses, apply,
                                                       strategy=s))(state.params, x, y))
             for s in stacked_experts.STRATEGIES}
  for s in stacked_experts.STRATEGIES:
    assert results[s].shape == (37, 3)
    np.testing.assert_allclose(results[s], results["vmap"], rtol=1e-5, atol=1e-6)
  loss_fn = functools.partial(jax.jit(functools.partial(stacked_experts.expert_losses, apply,
                                                       strategy="map")), state.params)
  table = references.loss_table_rows(loss_fn, np.asarray(x), np.asarray(y), batch_size=16)
  assert table.shape == (37, 3)
  np.testing.assert_allclose(table, results["vmap"], rtol=1e-5, atol=1e-6)
  idx = np.array([5, 0, 36])
  np.testing.assert_allclose(table[idx], results["vmap"][idx], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_strategies_agree():
  # vmap of all C, chunks of 2 of the 3 (a remainder chunk), lax.map and an unrolled
  # loop: the same three optimizer steps.
  x, y = toy_problem(n=64)
  init, apply = make_model()
  tx = optax.adam(3e-2)
  states = {}
  # Gradients accumulated over 4 slices of the batch: the same update (no batch norm).
  for strategy, chunk, micro in [("vmap", 0, 1), ("vmap", 2, 1), ("map", 0, 1),
                                 ("loop", 0, 1), ("map", 0, 4)]:
    state = stacked_experts.init_experts(init, tx, jax.random.key(0), 3)
    initial = state.params
    step = jax.jit(functools.partial(experts_step.experts_train_step, apply, tx, strategy=strategy,
                                     chunk=chunk, microbatches=micro))
    for _ in range(3):
      state, losses = step(state, x, y, 9.0)
    states[strategy, chunk, micro] = (state.params, state.opt_state, losses)
  _assert_same_adam_training(states, ("vmap", 0, 1), initial, lr=3e-2, steps=3)


def test_in_place_training_holds_one_copy_of_the_stacked_state():
  """``map`` and ``vmap`` in chunks dividing C update the stacked state in place.

  XLA's memory analysis of the donated step: its temporaries (the working set of one chunk)
  stay a fraction of the stacked state (before the in-place form, ``lax.map``'s stacked
  outputs and XLA's copies of the AdamW moments made them a whole copy or more), and it
  computes the same update as one ``vmap``: losses and moments to float tolerance, the
  parameters as far as Adam allows under another summation order (tests/numerics.py)."""
  model = MLP(hidden=(128, 128), num_outputs=8)
  init = lambda rng: model.init(rng, jnp.zeros((1, 64)))["params"]  # noqa: E731
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  tx = optax.adamw(1e-2)
  x = jax.random.normal(jax.random.key(1), (16, 64))
  y = jnp.arange(16) % 8
  results = {}
  for strategy, chunk in [("vmap", 0), ("map", 0), ("vmap", 2)]:
    state = stacked_experts.init_experts(init, tx, jax.random.key(0), 8)
    initial = jax.tree.map(np.asarray, state.params)          # the state is donated
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
    step = jax.jit(functools.partial(experts_step.experts_train_step, apply, tx, strategy=strategy,
                                     chunk=chunk), donate_argnums=0)
    if strategy != "vmap" or chunk:
      temp = step.lower(state, x, y, 9.0).compile().memory_analysis().temp_size_in_bytes
      # One expert's working set is ≈ 1/4 of the 8 experts' state (measured 0.25, 0.50
      # for chunks of 2; 0.84 for map before the in-place form).
      assert temp < 0.3 * max(chunk, 1) * state_bytes, (strategy, chunk, temp, state_bytes)
    for _ in range(2):
      state, losses = step(state, x, y, 9.0)
    results[strategy, chunk] = (state.params, state.opt_state, losses)
  _assert_same_adam_training(results, ("vmap", 0), initial, lr=1e-2, steps=2,
                             weight_decay=1e-4)


def _assert_same_adam_training(results, reference, initial, lr, steps, weight_decay=0.0):
  """``results[key] = (params, opt_state, losses)`` of runs that differ in float order
  only: losses to rtol 1e-5; each moment leaf to 1e-4 of its norm (measured ≤ 1e-6: a few
  ulp of the gradients); parameters by :func:`numerics.assert_adam_params_close`."""
  want_params, want_opt, want_losses = results[reference]
  for got_params, got_opt, got_losses in results.values():
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_opt), jax.tree.leaves(want_opt)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), (a.shape,)
    numerics.assert_adam_params_close(got_params, want_params, initial, lr, steps,
                                      weight_decay)


class _SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def _conv_labels(compiled) -> collections.Counter:
  """The ``dim_labels`` of every convolution in a compiled program's optimised HLO."""
  return collections.Counter(re.findall(r"convolution\(.*?dim_labels=([^ ,]+)",
                                        compiled.as_text()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution kernels")
def test_in_place_map_runs_the_convolutions_of_a_plain_step():
  """Issue 23: the in-place ``map`` of a conv net compiles to the convolutions of one plain
  (top-level) training step, in the layout XLA:CPU runs with Eigen, and still holds one
  copy of the stacked state.

  XLA:CPU makes convolutions canonical (NHWC / HWIO) only in a program's entry
  computation; the gradient's convolutions inside the ``fori_loop`` + ``cond`` of the
  in-place update kept JAX's dimension numbers (kernel ``01oi``, input ``f01b``) and ran in
  XLA's naive kernel: measured 4–70× a plain step per expert (ResNet-18 at 224 px: 73×).
  """
  model = _SmallCNN()
  init = lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 3)))["params"]  # noqa: E731
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  tx = optax.adamw(1e-2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 8, 8, 3)), jnp.float32)
  y = jnp.arange(8) % 3

  def plain(params, opt_state):
    grads = jax.grad(lambda p: jnp.mean(class_weighted_losses.cross_entropy(apply(p, x), y)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  # 8 experts' parameters drawn on the host (compiling a vmapped flax init costs seconds).
  stacked = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.1, (8,) + s.shape), s.dtype),
                         jax.eval_shape(init, jax.random.key(0)))
  state = stacked_experts.ExpertsState(stacked, jax.vmap(tx.init)(stacked))
  state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
  params = jax.tree.map(lambda a: a[0], stacked)
  want = _conv_labels(jax.jit(plain).lower(params, tx.init(params)).compile())
  assert sum(want.values()) == 5          # 2 forward, 2 kernel and 1 input gradient
  # None = the CPU default, False = as before issue 23; 2 microbatches: a scan inside the
  # loop body.
  for canonical, micro in [(None, 1), (None, 2), (False, 1)]:
    compiled = jax.jit(functools.partial(
        experts_step.experts_train_step, apply, tx, strategy="map", microbatches=micro,
        canonical_convs=canonical), donate_argnums=0).lower(state, x, y, 9.0).compile()
    got = _conv_labels(compiled)
    assert (got == want) == (canonical is None), (micro, canonical, got, want)
    # In place: the temporaries are one expert's working set (measured 0.29–0.32 of the
    # 8 experts' state), not a copy of the state (≥ 1).
    assert compiled.memory_analysis().temp_size_in_bytes < 0.5 * state_bytes


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution kernels")
def test_forward_programs_under_map_run_the_convolutions_of_a_plain_forward():
  """Stage 1's forward-only programs — the loss table (``expert_losses`` with ``map``) and
  the validation sums (the same in a ``lax.map`` over slices of the batch,
  ``stage1_trainer.step_functions``) — compile to one plain forward's convolutions, all in
  the canonical NHWC / HWIO layout of XLA:CPU's Eigen kernels: a forward needs no
  ``canonical_convs`` (only the gradient's convolutions are not canonical as JAX emits
  them), so these loops run each expert at a plain forward's rate (issue 23)."""
  model = _SmallCNN()
  init = lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 3)))["params"]  # noqa: E731
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 8, 8, 3)), jnp.float32)
  y = jnp.arange(8) % 3
  stacked = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.1, (4,) + s.shape), s.dtype),
                         jax.eval_shape(init, jax.random.key(0)))
  params = jax.tree.map(lambda a: a[0], stacked)
  want = _conv_labels(jax.jit(lambda p: class_weighted_losses.cross_entropy(apply(p, x), y))
                      .lower(params).compile())
  assert want == collections.Counter({"b01f_01io->b01f": 2})

  def sliced(v):
    table = jax.lax.map(lambda xy: stacked_experts.expert_losses(apply, v, *xy, "map"),
                        (x.reshape((2, 4) + x.shape[1:]), y.reshape((2, 4))))
    return table.reshape((8, -1))
  table = jax.jit(lambda v: stacked_experts.expert_losses(apply, v, x, y, "map"))
  for fn in (table, jax.jit(sliced)):
    assert _conv_labels(fn.lower(stacked).compile()) == want
  np.testing.assert_allclose(jax.jit(sliced)(stacked), table(stacked), rtol=1e-5, atol=1e-6)


def test_multihead_trains_and_specialises():
  x, y = toy_problem()
  init, apply = make_model(heads=3)
  params = init(jax.random.key(0))
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)
  step = jax.jit(functools.partial(experts_step.multihead_train_step, apply, tx))
  _, _, first, model_state = step(params, opt_state, x, y, 9.0)
  assert model_state is None      # four outputs with or without train_apply_fn
  for _ in range(300):
    params, opt_state, loss, _ = step(params, opt_state, x, y, 9.0)
  assert float(loss) < 0.8 * float(first)
  table = np.asarray(class_weighted_losses.multihead_expert_losses(apply(params, x), y))   # [B, C]
  assert table.shape == (600, 3)
  for c in range(3):
    mine = table[np.asarray(y) == c]
    assert mine[:, c].mean() < np.delete(mine, c, axis=1).mean(0).min()


def test_default_strategy():
  assert stacked_experts.default_strategy("cpu") == "map"
  assert stacked_experts.default_strategy("gpu") == "vmap"
  assert stacked_experts.default_strategy("tpu") == "vmap"


@pytest.mark.parametrize("call, match", [
    (lambda: class_weighted_losses.class_weighted_loss(jnp.ones(3), jnp.zeros(3, int), 0, -1.0), r"gamma must be in \[0.0, inf\]"),
    (lambda: class_weighted_losses.class_weighted_loss(jnp.ones(3), jnp.zeros(2, int), 0, 1.0), r"labels must have shape \[B=3\]"),
    (lambda: stacked_experts.expert_losses(None, {"w": jnp.ones((2, 1))}, None, None, "pmap"), "strategy must be one of"),
    (lambda: class_weighted_losses.multihead_expert_losses(jnp.ones((3, 2)), jnp.zeros(3, int)), r"logits must have shape \[B, C, K\]"),
    (lambda: stacked_experts.num_experts({"a": jnp.ones((2, 1)), "b": jnp.ones((3, 1))}), "leading axis C"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_loss_functions_jit():
  loss, labels = jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 1, 1])
  # A traced expert class and γ work too (they are arguments of the vmapped step).
  np.testing.assert_allclose(jax.jit(class_weighted_losses.class_weighted_loss)(loss, labels, 1, 9.0), 17.0)
  logits = jax.random.normal(jax.random.key(0), (4, 3, 5))
  y = jnp.array([0, 1, 2, 4])
  np.testing.assert_allclose(jax.jit(class_weighted_losses.multihead_loss)(logits, y, 0.0),
                             class_weighted_losses.multihead_expert_losses(logits, y).mean(), rtol=1e-6)


def test_class_weight_matrix_by_hand():
  np.testing.assert_allclose(class_weighted_losses.class_weight_matrix(jnp.array([0, 2, 1]), 3, 9.0),
                             [[10, 1, 1], [1, 1, 10], [1, 10, 1]])


def test_weight_sum_loss_over_devices_equals_one_device():
  # Σwℓ/Σw over a batch split over 8 devices: the pmean of the devices' losses must be the
  # whole batch's ratio (not the mean of 8 local ratios, which weights rare-class rows
  # differently on each device).
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(16, 3, 3)), jnp.float32)    # [B, C heads, K]
  y = jnp.asarray([0] * 13 + [1, 2, 2])                            # skewed: device 0 all 0s
  one = class_weighted_losses.multihead_loss(logits, y, 9.0, normalisation="weight_sum")
  per_device = jax.pmap(lambda lg, yy: jax.lax.pmean(class_weighted_losses.multihead_loss(
      lg, yy, 9.0, normalisation="weight_sum", axis_name="d"), "d"), axis_name="d")(
          logits.reshape(8, 2, 3, 3), y.reshape(8, 2))
  np.testing.assert_allclose(np.asarray(per_device), float(one), rtol=1e-6)
  local = jax.pmap(lambda lg, yy: jax.lax.pmean(class_weighted_losses.multihead_loss(
      lg, yy, 9.0, normalisation="weight_sum"), "d"), axis_name="d")(
          logits.reshape(8, 2, 3, 3), y.reshape(8, 2))
  assert abs(float(local[0]) - float(one)) > 1e-3      # the naive mean of ratios differs

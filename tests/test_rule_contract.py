"""Every registered selector and reweighter through the rule contract (as optax's
``alias_test`` runs every optimizer): built from the default config, run under ``jit`` on
tiny random inputs holding only what the rule declared in ``needs``."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax.core import registry
from reducr_jax.core import class_weighted_losses
from reducr_jax import reweighters
from reducr_jax import selectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, K, C, PASSES, DIM = 16, 5, 4, 3, 6


def _config(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  # Dropout on, so the MC-dropout rules (bald, ...) can be built.
  overrides = {"model.dropout_rate": 0.1, "selection.mc_passes": PASSES, **overrides}
  return configuration.with_overrides(config, overrides)


def _selection_inputs(needs, seed=0):
  """What the trainer would hand the rule: labels, groups and step always, the rest only
  when declared (everything else stays None)."""
  r = jax.random.split(jax.random.key(seed), 6)
  labels = jax.random.randint(r[0], (B,), 0, C)
  inputs = selectors.SelectionInputs(labels=labels, group_labels=labels, step=jnp.int32(0))
  logits = jax.random.normal(r[1], (B, C))
  if needs & {selectors.MODEL_LOSS, selectors.MODEL_LOGITS}:
    inputs = inputs._replace(model_loss=class_weighted_losses.cross_entropy(logits, labels))
  if selectors.MODEL_LOGITS in needs:
    inputs = inputs._replace(model_logits=logits)
  kind = selectors.reference_kind(needs)
  if kind is not None:
    width = C if kind == "experts" else 1
    inputs = inputs._replace(reference_losses=jax.random.uniform(r[2], (B, width)) * 2.0)
  if selectors.CLASS_HOLDOUT_LOSS in needs:
    inputs = inputs._replace(class_holdout_loss=jax.random.uniform(r[3], (C,)) + 0.5)
  if selectors.MC_LOGITS in needs:
    inputs = inputs._replace(mc_logits=logits + jax.random.normal(r[4], (PASSES, B, C)))
  return inputs


def _assert_same_structure(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y) and jnp.result_type(x) == jnp.result_type(y)
    assert np.all(np.isfinite(np.asarray(x, np.float64)))


@pytest.mark.parametrize("name", selectors.names())
def test_selector_contract(name):
  selector = selectors.get(_config(**{"selection.method": name}))
  assert selector.needs <= selectors.NEEDS
  state = selector.init(C)
  inputs = _selection_inputs(selector.needs)
  # checked_select: the trainer's call, which refuses a read of an undeclared input.
  select = jax.jit(lambda s, i, r: selectors.checked_select(selector, s, i, r, K))
  update = jax.jit(selectors.checked_update, static_argnums=0)
  key = jax.random.key(1)
  idx, aux = select(state, inputs, key)
  idx = np.asarray(idx)
  assert idx.shape == (K,) and np.issubdtype(idx.dtype, np.integer)
  assert len(set(idx.tolist())) == K, f"{name}: repeated indices {idx}"
  assert idx.min() >= 0 and idx.max() < B
  np.testing.assert_array_equal(np.asarray(select(state, inputs, key)[0]), idx)   # fixed rng
  new_state = update(selector, state, inputs, jnp.asarray(idx), aux)
  _assert_same_structure(new_state, state)
  for s in (state, new_state):
    w = np.asarray(registry.class_weights(selector, s, C))
    assert w.shape == (C,) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)


def _reweight_inputs(needs, seed=0):
  r = jax.random.split(jax.random.key(seed), 5)
  params = {"w": jax.random.normal(r[0], (DIM, C)) * 0.3}
  loss_fn = lambda p, x, y: class_weighted_losses.cross_entropy(x @ p["w"], y)  # noqa: E731
  validation = None
  if reweighters.VALIDATION_BATCH in needs:
    validation = (jax.random.normal(r[3], (8, DIM)), jax.random.randint(r[4], (8,), 0, C))
  return reweighters.ReweightInputs(
      params=params, loss_fn=loss_fn, x=jax.random.normal(r[1], (K, DIM)),
      labels=jax.random.randint(r[2], (K,), 0, C), num_selected=K,
      train_class_counts=jnp.array([40.0, 10.0, 25.0, 5.0]), validation=validation)


@pytest.mark.parametrize("name", reweighters.names())
def test_reweighter_contract(name):
  rule = reweighters.get(_config(**{"reweight": name}))
  assert rule.needs <= reweighters.NEEDS
  state = rule.init(C)
  inputs = _reweight_inputs(rule.needs)

  def weights(s):
    return rule.weights(s, inputs)

  w, new_state = jax.jit(weights)(state)
  w = np.asarray(w)
  assert w.shape == (K,) and np.issubdtype(w.dtype, np.floating)
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  cw = np.asarray(registry.class_weights(rule, new_state, C))
  if name == "group_dro":
    # Documented exception (group_dro.example_weights): w_i = q_{y_i} / n_{y_i} sums to
    # the q of the classes present among the k points, 1 only when all are present.
    present = np.unique(np.asarray(inputs.labels))
    assert len(present) < C                     # this draw misses a class: sum < 1
    np.testing.assert_allclose(w.sum(), cw[present].sum(), rtol=1e-5)
  else:
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)       # on the simplex over the k
  np.testing.assert_array_equal(np.asarray(jax.jit(weights)(state)[0]), w)   # deterministic
  _assert_same_structure(new_state, state)
  assert cw.shape == (C,) and np.all(cw >= 0)
  np.testing.assert_allclose(cw.sum(), 1.0, rtol=1e-5)

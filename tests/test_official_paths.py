"""The official code's training paths the trainer follows (issue 24): the selectors see
class labels and group labels separately, and ``experts.update_on_selected`` is the
official ``update_irreducible`` step."""

import os

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax import models
from reducr_jax.train import sharding
from reducr_jax.train import optimizers
from reducr_jax.train import selection_step
from reducr_jax.train import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)     # 10 digit classes → 4 groups (superclass style)


def _config(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  config.model.hidden = (16,)
  config.batch_size = 80
  config.num_devices = 1
  return configuration.with_overrides(config, overrides)


def _softmax(z):
  z = np.asarray(z, np.float64)
  p = np.exp(z - z.max(axis=1, keepdims=True))
  return p / p.sum(axis=1, keepdims=True)


def test_grad_norm_in_the_train_step_one_hots_class_labels_not_groups():
  config = _config(**{"selection.method": "grad_norm", "dataset.groups": GROUPS})
  splits = data.make_splits(config.dataset, config.seed)
  model = models.create_model(config.model, 10)
  apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  tx = optimizers.make_optimizer(config.optimizer)
  cfg = train_state.StepConfig.from_config(config, 10, 1, None)
  assert cfg.num_classes == 4 and cfg.k == 8
  state = train_state.init_state(jax.random.PRNGKey(0),
                           lambda r: model.init(r, jnp.zeros((1, 64)))["params"], tx, cfg,
                           jax.random.PRNGKey(1))
  params = state.params
  step = selection_step.make_train_step(apply_fn, None, tx, cfg, jax.local_devices()[:1])
  rng = np.random.default_rng(0)
  idx = rng.choice(len(splits.train), config.batch_size, replace=False)
  x, y = splits.train.x[idx], splits.train.y[idx]
  _, m = step(flax.jax_utils.replicate(state, jax.local_devices()[:1]),
              sharding.shard({"x": x, "y": y}, 1), None)
  p = _softmax(apply_fn(params, jnp.asarray(x)))
  bound = np.linalg.norm(p - np.eye(10)[y], axis=-1)           # official: one_hot(target)
  expected = np.argsort(-bound, kind="stable")[:8]
  np.testing.assert_array_equal(np.asarray(m["selected_indices"][0]), expected)
  wrong = np.linalg.norm(p - np.eye(10)[np.asarray(GROUPS)[y]], axis=-1)
  assert set(np.argsort(-wrong)[:8]) != set(expected)           # the group one-hot differs
  # the selected counts are per group
  np.testing.assert_array_equal(np.asarray(m["selected_class_counts"][0]),
                                np.bincount(np.asarray(GROUPS)[y[expected]], minlength=4))


def _adamw_first_step(p, g, lr, wd, eps=1e-8):
  """PyTorch ``AdamW.step`` from fresh moments, by hand: m̂ = g, v̂ = g², so
  p ← p·(1 − lr·wd) − lr·g / (|g| + eps)."""
  return p * (1.0 - lr * wd) - lr * g / (np.abs(g) + eps)


def test_update_on_selected_is_one_official_update_irreducible_step():
  """Official ``UpdateIrreducible*LossGenerator``: the target's AdamW (lr, weight decay) at
  lr / 100 on the unweighted mean cross-entropy of the selected points — for RHO-LOSS's
  model and for each of ``weighted``'s class experts alike (γ, the experts' own lr and wd
  play no part)."""
  from reducr_jax.train import references  # pylint: disable=g-import-not-at-top
  for method, kind, num in (("rho_loss", "irreducible", 1), ("weighted", "experts", 10)):
    config = _config(**{"model.hidden": (), "selection.method": method,
                        "experts.losses": "online", "experts.update_on_selected": True,
                        "experts.gamma": 9.0, "experts.learning_rate": 5e-2,
                        "experts.weight_decay": 0.0, "experts.loss_normalisation": "weight_sum",
                        "optimizer.learning_rate": 1e-3, "optimizer.weight_decay": 0.1,
                        "optimizer.schedule": "cosine",
                        "optimizer.learning_rate_by_method": {method: 3e-3}})
    splits = data.make_splits(config.dataset, config.seed)
    rng = np.random.default_rng(1)
    w0 = rng.normal(0, 0.3, (num, 64, 10)).astype(np.float32)
    b0 = rng.normal(0, 0.3, (num, 10)).astype(np.float32)
    refs = references.ReferenceModels(
        kind, {"params": {"Dense_0": {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}}},
        None)
    state, update = references.online_update(config, refs, splits)
    x = splits.train.x[:8].reshape(8, -1).astype(np.float32)
    y = splits.train.y[:8]
    new = jax.pmap(lambda s, xb, yb: update(s, xb, yb, jax.random.PRNGKey(0), "d"),
                   axis_name="d", in_axes=(None, 0, 0))(state, x[None], y[None])
    lr = 3e-3 / 100                                   # the rule's target lr, / 100
    for e in range(num):
      p = _softmax(x.astype(np.float64) @ w0[e] + b0[e])
      err = (p - np.eye(10)[y]) / len(y)              # d mean CE / d logits
      want_w = _adamw_first_step(w0[e], x.T.astype(np.float64) @ err, lr, 0.1)
      want_b = _adamw_first_step(b0[e], err.sum(axis=0), lr, 0.1)
      got = new.params["params"]["Dense_0"]
      np.testing.assert_allclose(np.asarray(got["kernel"])[0, e], want_w, rtol=0, atol=2e-6)
      np.testing.assert_allclose(np.asarray(got["bias"])[0, e], want_b, rtol=0, atol=2e-6)
    # the step is lr-sized: a wrong lr / wd / weighting would move it by ≥ 1e-6 somewhere
    assert np.max(np.abs(np.asarray(got["kernel"])[0] - w0)) > 1e-5

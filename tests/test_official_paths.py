"""The official code's training paths the trainer follows (issue 24): the selectors see
class labels and group labels separately, and ``experts.update_on_selected`` is the
official ``update_irreducible`` step."""

import os

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax import configuration
from reducr_jax import data
from reducr_jax import models
from reducr_jax import sharding
from reducr_jax import train

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
  tx = train.make_optimizer(config.optimizer)
  cfg = train.StepConfig.from_config(config, 10, 1, None)
  assert cfg.num_classes == 4 and cfg.k == 8
  state = train.init_state(jax.random.PRNGKey(0),
                           lambda r: model.init(r, jnp.zeros((1, 64)))["params"], tx, cfg,
                           jax.random.PRNGKey(1))
  params = state.params
  step = train.make_train_step(apply_fn, None, tx, cfg, jax.local_devices()[:1])
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

"""``experts.double_irreducible``: the official double irreducible training
(``src/train_double_irreducible.py``): two models on class-balanced train halves, each
row's precomputed loss from the model that did not see it."""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.train import double_reference
from reducr_jax.train import reference_cache
from reducr_jax.train import references
from reducr_jax.train import trainer as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _official_halves(train_targets):
  """A NumPy port of the official ``setup(double_irlomo=True)`` split."""
  split_1, split_2 = [], []
  for t in np.unique(train_targets).tolist():
    target_indices = np.flatnonzero(train_targets == t)
    rng = np.random.default_rng(1)
    target_indices = rng.permutation(target_indices).tolist()
    split_1.extend(target_indices[: int(len(target_indices) / 2)])
    split_2.extend(target_indices[int(len(target_indices) / 2):])
  return split_1, split_2


def test_halves_by_hand_and_against_the_official_split():
  one, two = double_reference.halves(np.array([0, 0, 0, 1, 1, 2]))
  # class 0: 3 rows → int(1.5) = 1 in half 1, 2 in half 2; class 1: 1 / 1; class 2: 0 / 1.
  assert len(one) == 2 and len(two) == 4
  assert sorted(np.concatenate([one, two]).tolist()) == [0, 1, 2, 3, 4, 5]
  assert 5 in two
  y = np.random.default_rng(0).integers(0, 7, 1001)
  one, two = double_reference.halves(y)
  o1, o2 = _official_halves(y)
  np.testing.assert_array_equal(one, np.sort(o1))
  np.testing.assert_array_equal(two, np.sort(o2))


def _tiny(**overrides):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1,
                     **{"selection.method": "rho_loss", "experts.double_irreducible": True,
                        "experts.num_steps": 20, "experts.eval_every": 10, **overrides})


@pytest.mark.slow
def test_each_row_is_scored_by_the_model_of_the_other_half(tmp_path):
  config = _tiny()
  result = train.train_and_evaluate(config, str(tmp_path))    # trains and caches both
  assert result["num_skipped"] == 0
  assert sorted(os.listdir(tmp_path / "experts")) == sorted(
      os.path.basename(reference_cache.cache_path(config, str(tmp_path), f"irreducible-half{h}"))
      for h in (1, 2))
  splits = data.make_splits(config.dataset, config.seed)
  refs = double_reference.references(config, splits, str(tmp_path))   # from the cache
  assert refs.reference == "table" and refs.table.shape == (len(splits.train), 1)
  one, two = double_reference.halves(splits.train.y)
  models = [references.get_reference_models(
      config, dataclasses.replace(splits, holdout=double_reference.subset(splits.train, r)),
      str(tmp_path), tag=f"-half{h + 1}") for h, r in enumerate((one, two))]
  for rows, other, same in ((one, models[1], models[0]), (two, models[0], models[1])):
    x, y = jnp.asarray(splits.train.x[rows]), jnp.asarray(splits.train.y[rows])
    np.testing.assert_allclose(refs.table[rows], other.loss_fn(other.params, x, y),
                               rtol=1e-5, atol=1e-6)
    # ... and not by the model that trained on those rows (it fits them better).
    assert float(np.mean(same.loss_fn(same.params, x, y))) < float(np.mean(refs.table[rows]))


def test_double_irreducible_needs_a_precomputed_table():
  config = configuration.with_overrides(
      configuration.load_config(os.path.join(REPO, "configs/default.py")),
      {"experts.double_irreducible": True, "experts.losses": "online"})
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(config, 1)
  assert str(e.value) == ("config.experts.double_irreducible=True needs config.experts.losses="
                          "'precomputed' (the official output is a loss table), got 'online'")

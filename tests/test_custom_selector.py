"""A rule registered from outside the package trains with the unchanged trainer."""

import json

import numpy as np
import pytest

from reducr_jax.core import selection
from reducr_jax import selectors
from reducr_jax.train import trainer as train
from test_train import tiny_config


# ---- the whole user-side rule: "train on the k points the model finds easiest" -------
def smallest_loss(config):
  """Selects the k points of smallest model loss; counts the steps it ran (state)."""
  del config

  def select(count, inputs, rng, k):
    del rng
    return selection.top_k(-inputs.model_loss, k), ()

  def update(count, inputs, indices, aux):
    return count + 1

  return selectors.Selector(init=lambda num_classes: np.int32(0), select=select,
                            update=update, needs=frozenset({selectors.MODEL_LOSS}))
# ----------------------------------------------------------------------------------------


@pytest.fixture
def registered():
  selectors.register("smallest_loss", smallest_loss)
  yield
  selectors.unregister("smallest_loss")


def _run(tmp_path, num_devices):
  config = tiny_config(num_steps=8, log_every=1, eval_every=8, checkpoint_every=8,
                       num_devices=num_devices, **{"selection.method": "smallest_loss"})
  results = train.train_and_evaluate(config, str(tmp_path / f"d{num_devices}"))
  log = [json.loads(line) for line in
         (tmp_path / f"d{num_devices}" / "metrics.jsonl").read_text().splitlines()]
  return results, [r for r in log if "train/selected_class_counts" in r]


def test_outside_rule_trains_on_one_and_eight_devices(tmp_path, registered):
  r1, log1 = _run(tmp_path, 1)
  r8, log8 = _run(tmp_path, 8)
  assert r1["method"] == r8["method"] == "smallest_loss"
  assert r1["num_skipped"] == 0
  assert not (tmp_path / "d1" / "experts").exists()       # needs no reference models
  # The same points are selected on 1 and on 8 devices, step by step.
  assert ([r["train/selected_class_counts"] for r in log1] ==
          [r["train/selected_class_counts"] for r in log8])
  # It does what it says: the selected points' loss is below the large batch's mean.
  for r in log1:
    assert r["train/selected_loss"] < r["train/large_batch_loss"]
  np.testing.assert_allclose(r1["class_weights"], np.full(10, 0.1), rtol=1e-6)
  assert r1["test"]["per_class_accuracy"] == pytest.approx(r8["test"]["per_class_accuracy"],
                                                           abs=1e-6)


def test_unregistered_rule_is_a_one_line_config_error(tmp_path):
  from reducr_jax.config import configuration  # pylint: disable=g-import-not-at-top
  with pytest.raises(configuration.ConfigError,
                     match=r"config.selection.method must be one of \['reducr', .*"
                           r"got 'smallest_loss'"):
    train.train_and_evaluate(tiny_config(**{"selection.method": "smallest_loss"}),
                             str(tmp_path / "w"))


def reads_undeclared(config):
  """Reads the model loss without declaring selectors.MODEL_LOSS in its needs."""
  del config
  return selectors.stateless(lambda inputs, rng, k: selection.top_k(inputs.model_loss, k))


def one_too_many(config):
  """Returns k + 1 indices."""
  del config
  return selectors.stateless(
      lambda inputs, rng, k: selection.uniform_select(rng, inputs.labels.shape[0], k + 1))


@pytest.mark.parametrize("factory, message", [
    (reads_undeclared, r"selector.select read inputs.model_loss \(needs 'model_loss'\) "
                       r"without declaring it in its needs, so it was None"),
    (one_too_many, r"selector.select must return integer indices of shape \[k=\d+\], got "
                   r"int32\[\d+\]"),
])
def test_broken_rule_is_a_one_line_trainer_error(tmp_path, factory, message):
  """Before: AttributeError 'NoneType' ... / a JAX broadcast error from deep inside."""
  selectors.register("broken", factory)
  try:
    with pytest.raises(ValueError, match=message) as e:
      train.train_and_evaluate(tiny_config(num_steps=2, **{"selection.method": "broken"}),
                               str(tmp_path / "w"))
  finally:
    selectors.unregister("broken")
  assert "\n" not in str(e.value)

"""MC-dropout rules (``bald``, ``conditional_entropy``, MC ``entropy``; RHO-LOSS repo
baselines) and the models' ``dropout_rate`` / ``apply_mc``.

The scores are checked against a hand computation and against a NumPy port (written
here) of the official ``src/curricula/utils_bald.py`` (OATML/RHO-Loss), which takes
log-probabilities ``[N, K, C]`` (batch, MC passes, classes).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax import models
from reducr_jax import selectors
from reducr_jax.train import trainer as train
from reducr_jax.models.mlp import MLP
from reducr_jax.models.resnet import ResNet18
from reducr_jax.selectors import bald

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)


def config_with(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  return configuration.with_overrides(config, overrides)


# --- NumPy port of the official utils_bald.py (log_probs_N_K_C) ---------------------------
def _official_conditional_entropy(log_probs_nkc):
  k = log_probs_nkc.shape[1]
  return -np.sum(log_probs_nkc * np.exp(log_probs_nkc), axis=(1, 2)) / k


def _official_entropy(log_probs_nkc):
  k = log_probs_nkc.shape[1]
  m = log_probs_nkc.max(axis=1, keepdims=True)
  mean_log_probs = (np.log(np.sum(np.exp(log_probs_nkc - m), axis=1)) + m[:, 0]) - np.log(k)
  return -np.sum(mean_log_probs * np.exp(mean_log_probs), axis=1)


def _official_bald(log_probs_nkc):
  return -_official_conditional_entropy(log_probs_nkc) + _official_entropy(log_probs_nkc)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_scores_by_hand():
  # Two passes, one point: p = (0.9, 0.1) then (0.1, 0.9). Mean (0.5, 0.5): H = ln 2;
  # each pass H(0.9, 0.1) = 0.3250830; BALD = ln 2 − 0.3250830 = 0.3680642.
  logits = jnp.log(jnp.array([[[0.9, 0.1]], [[0.1, 0.9]]]))        # [K=2, B=1, C=2]
  h01 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
  np.testing.assert_allclose(bald.mc_predictive_entropy(logits), [np.log(2)], rtol=1e-6)
  np.testing.assert_allclose(bald.mc_conditional_entropy(logits), [h01], rtol=1e-6)
  np.testing.assert_allclose(bald.bald_scores(logits), [np.log(2) - h01], rtol=1e-5)
  np.testing.assert_allclose(h01, 0.3250830, atol=1e-7)
  # Identical passes: BALD 0, and both entropies equal the single-pass entropy.
  same = jnp.tile(jnp.array([[[2.0, 0.0, -1.0]]]), (5, 1, 1))
  np.testing.assert_allclose(bald.bald_scores(same), [0.0], atol=1e-6)
  np.testing.assert_allclose(bald.mc_conditional_entropy(same),
                             bald.mc_predictive_entropy(same), rtol=1e-6)


def test_scores_match_a_port_of_the_official_functions_on_random_inputs():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(10, 64, 7)).astype(np.float32)      # [K, B, C]
  log_probs_nkc = _log_softmax(logits.astype(np.float64)).transpose(1, 0, 2)
  np.testing.assert_allclose(bald.mc_predictive_entropy(logits),
                             _official_entropy(log_probs_nkc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bald.mc_conditional_entropy(logits),
                             _official_conditional_entropy(log_probs_nkc), rtol=1e-5, atol=1e-6)
  ours, official = bald.bald_scores(logits), _official_bald(log_probs_nkc)
  np.testing.assert_allclose(ours, official, atol=2e-6)
  assert np.all(official > 0)
  # Same top-k as the official top_x_indices (argsort descending).
  k = 16
  for score, ref in ((bald.bald_scores, _official_bald),
                     (bald.mc_conditional_entropy, _official_conditional_entropy)):
    np.testing.assert_array_equal(
        np.sort(np.asarray(jax.lax.top_k(score(logits), k)[1])),
        np.sort(np.argsort(-ref(log_probs_nkc))[:k]))


def test_rules_select_the_top_k_of_their_mc_scores():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(scale=2.0, size=(10, 40, 5)), jnp.float32)
  inputs = selectors.SelectionInputs(labels=jnp.zeros(40, jnp.int32), mc_logits=logits,
                                     step=jnp.int32(0))
  for method, score in (("bald", bald.bald_scores),
                        ("conditional_entropy", bald.mc_conditional_entropy),
                        ("entropy", bald.mc_predictive_entropy)):
    sel = selectors.get(config_with(**{"selection.method": method,
                                       "model.dropout_rate": 0.5}))
    assert sel.needs == {selectors.MC_LOGITS}, method
    idx, _ = sel.select((), inputs, KEY, 8)
    expected = np.argsort(-np.asarray(score(logits)))[:8]
    np.testing.assert_array_equal(np.sort(np.asarray(idx)), np.sort(expected))


def test_without_dropout_the_rules_read_the_evaluation_logits_and_bald_is_refused():
  logits = jnp.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, -9.0]])
  for overrides in ({}, {"model.dropout_rate": 0.5, "selection.mc_passes": 0}):
    for method in ("entropy", "conditional_entropy"):
      sel = selectors.get(config_with(**{"selection.method": method, **overrides}))
      assert sel.needs == {selectors.MODEL_LOGITS}
      idx, _ = sel.select((), selectors.SelectionInputs(
          labels=jnp.zeros(3, jnp.int32), model_logits=logits), KEY, 2)
      np.testing.assert_array_equal(idx, [0, 2])      # log 3 > ~log 2 > small
    with pytest.raises(configuration.ConfigError) as e:
      configuration.validate_config(config_with(**{"selection.method": "bald",
                                                   **overrides}), 1)
    assert str(e.value).startswith("config.selection.method='bald' needs MC dropout: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    ({"selection.mc_passes": -1}, "config.selection.mc_passes must be in [0, inf], got -1"),
    ({"model.dropout_rate": 1.0}, "config.model.dropout_rate must be a number in [0, 1), got 1.0"),
    ({"model.dropout_rate": -0.1},
     "config.model.dropout_rate must be a number in [0, 1), got -0.1"),
])
def test_bad_mc_fields_are_one_line(overrides, message):
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate_config(config_with(**overrides), 1)
  assert str(e.value) == message


# --- models ----------------------------------------------------------------------------
def test_mlp_dropout_masks_hidden_units_and_mc_passes_differ():
  x = jax.random.normal(KEY, (6, 12))
  fns = models.model_fns(MLP(hidden=(32, 32), num_outputs=4, dropout_rate=0.5), x[:1])
  params, state = fns.init(KEY)
  v = models.variables(params, state)
  a = fns.apply_mc(v, x, jax.random.PRNGKey(1))
  b = fns.apply_mc(v, x, jax.random.PRNGKey(2))
  assert a.shape == (6, 4) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, fns.apply_mc(v, x, jax.random.PRNGKey(1)))
  np.testing.assert_array_equal(fns.apply(v, x), fns.apply(v, x))   # evaluation: no dropout
  # Same parameters as the dropout-free MLP (dropout has none), which MC-applies as `apply`.
  plain = models.model_fns(MLP(hidden=(32, 32), num_outputs=4), x[:1])
  p0, _ = plain.init(KEY)
  assert jax.tree.structure(p0) == jax.tree.structure(params)
  np.testing.assert_array_equal(plain.apply_mc({"params": p0}, x, KEY),
                                plain.apply({"params": p0}, x))
  # Hand check at one layer: kept units are scaled by 1 / (1 − rate).
  one = MLP(hidden=(), num_outputs=None, dropout_rate=0.5)
  np.testing.assert_array_equal(one.apply({}, x, dropout=True, rngs={"dropout": KEY}), x)


def test_resnet_mc_dropout_uses_running_statistics_and_leaves_them_alone():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)), jnp.uint8)
  # The trunk (no fc): dropout acts on the pooled features, where fc reads them.
  net = ResNet18(num_outputs=None, width=4, stage_sizes=(1,), dropout_rate=0.5)
  fns = models.model_fns(net, x[:1], init_impl="rbg")
  params, state = fns.init(KEY)
  v = models.variables(params, state)
  f_eval = fns.apply(v, x)
  f_mc = fns.apply_mc(v, x, KEY)     # not mutable: the running statistics cannot change
  np.testing.assert_array_equal(net.clone(dropout_rate=0.0).apply(v, x), f_eval)
  # Running statistics + a mask: each feature is 0 or 2× its evaluation value.
  assert f_mc.shape == f_eval.shape and not np.allclose(f_mc, f_eval)
  assert np.all(np.isclose(f_mc, 0.0) | np.isclose(f_mc, 2.0 * f_eval, rtol=1e-5))


def test_model_config_dropout_rate_reaches_the_model():
  config = config_with(**{"model.dropout_rate": 0.25})
  assert models.create_model(config.model, 10).dropout_rate == 0.25
  assert models.create_model(config_with().model, 10).dropout_rate == 0.0


# --- trainer ---------------------------------------------------------------------------
@pytest.mark.slow
def test_trainer_runs_the_mc_rules(tmp_path, method="bald"):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_steps=3, eval_every=3, checkpoint_every=3, log_every=1,
                       **{"selection.method": method, "model.dropout_rate": 0.3,
                          "selection.mc_passes": 4})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["num_skipped"] == 0
  log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  counts = [r["train/selected_class_counts"] for r in log if "train/selected_class_counts" in r]
  assert len(counts) == 3 and all(sum(c) == configuration.num_selected(config) for c in counts)

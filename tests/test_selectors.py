"""The selection-rule registry and every built-in rule against hand computations."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reducr_jax.config import configuration
from reducr_jax.train import experts_step
from reducr_jax.core import registry
from reducr_jax.core import mwu
from reducr_jax.train import reference_cache
from reducr_jax import reweighters
from reducr_jax.core import selection
from reducr_jax.core import selection_scores
from reducr_jax import selectors
from reducr_jax.core import stacked_experts
from reducr_jax.train import trainer as train
import numerics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)


def config_with(**overrides):
  config = configuration.load_config(os.path.join(REPO, "configs/default.py"))
  return configuration.with_overrides(config, overrides)


def inputs(**kw):
  kw.setdefault("labels", jnp.array([0, 1, 0, 1], jnp.int32))
  kw.setdefault("step", jnp.int32(0))
  return selectors.SelectionInputs(**kw)


# ------------------------------------------------------------------------- registry


def test_every_builtin_rule_is_registered():
  assert set(selectors.names()) >= {"reducr", "rho_loss", "train_loss", "uniform", "payoff",
                                    "weighted", "grad_norm", "entropy", "irreducible",
                                    "uniform_after"}


def test_registering_a_name_twice_is_one_line():
  with pytest.raises(ValueError, match=r"^selector 'reducr' is already registered \(by "):
    selectors.register("reducr", lambda config: None)
  with pytest.raises(ValueError, match="reweighter 'meta' is already registered"):
    reweighters.register("meta", lambda config: None)


def test_unknown_rule_and_unknown_needs():
  with pytest.raises(ValueError, match=r"config.selection.method must be one of \['reducr'"):
    selectors.get(config_with(**{"selection.method": "greedy"}))
  selectors.register("_bad_needs", lambda config: selectors.stateless(
      lambda i, r, k: selection.top_k(i.model_loss, k), {"gradient"}))
  try:
    with pytest.raises(ValueError, match=r"needs unknown inputs \['gradient'\]"):
      selectors.get(config_with(**{"selection.method": "_bad_needs"}))
  finally:
    selectors.unregister("_bad_needs")


@pytest.mark.parametrize("method, kind", [
    ("reducr", "experts"), ("payoff", "experts"), ("weighted", "experts"),
    ("rho_loss", "irreducible"), ("irreducible", "irreducible"), ("train_loss", None),
    ("uniform", None), ("grad_norm", None), ("entropy", None)])
def test_needs_decide_the_reference_models(method, kind):
  needs = selectors.get(config_with(**{"selection.method": method})).needs
  assert selectors.reference_kind(needs) == kind
  assert needs <= selectors.NEEDS


def test_reducr_without_experts_or_holdout_needs_neither():
  needs = selectors.get(config_with(**{"selection.use_expert": False,
                                       "selection.use_holdout": False})).needs
  assert needs == {selectors.MODEL_LOSS}


# ------------------------------------------------------------------------ the rules


def test_reducr_matches_algorithm_1_by_hand():
  """Two steps of lines 6-8 with numbers worked out on paper."""
  sel = selectors.reducr.reducr(eta=0.5)
  state = sel.init(2)
  ml = jnp.array([2.0, 1.0, 3.0, 0.5])
  ex = jnp.array([[1.0, 1.5], [0.0, 2.0], [3.5, 1.0], [0.0, 0.0]])
  h = jnp.array([0.25, 0.5])
  inp = inputs(model_loss=ml, reference_losses=ex, class_holdout_loss=h)
  # R = max(0, ml - ex) = [[1, .5], [1, 0], [0, 2], [.5, .5]]; w = (.5, .5)
  # scores = [.75, .5, 1, .5] -> top-2 = [2, 0]
  idx, aux = sel.select(state, inp, KEY, 2)
  np.testing.assert_array_equal(idx, [2, 0])
  state = sel.update(state, inp, idx, aux)
  # alpha = Σ_sel R - 2 h = [1, 2.5] - [.5, 1] = [.5, 1.5]; w = softmax(-.5 alpha)
  np.testing.assert_allclose(mwu.weights(state.log_w),
                             jax.nn.softmax(-0.5 * jnp.array([0.5, 1.5])), rtol=1e-6)
  np.testing.assert_allclose(registry.class_weights(sel, state, 2).sum(), 1.0, rtol=1e-6)


def test_reducr_eta_auto_steps_with_the_anytime_rate_by_hand():
  """The same step with eta='auto': k = 2, C = 2, L = k ln C = 2 ln 2, so
  η_1 = √(8 ln 2)/L = √(2/ln 2) and round 2 plays η_2 = η_1/√2 = 1/√(ln 2) = 1.201122."""
  sel = selectors.reducr.reducr(eta="auto")
  state = sel.init(2)
  ml = jnp.array([2.0, 1.0, 3.0, 0.5])
  ex = jnp.array([[1.0, 1.5], [0.0, 2.0], [3.5, 1.0], [0.0, 0.0]])
  inp = inputs(model_loss=ml, reference_losses=ex, class_holdout_loss=jnp.array([0.25, 0.5]))
  idx, aux = sel.select(state, inp, KEY, 2)                 # uniform weights: [2, 0] as above
  np.testing.assert_array_equal(idx, [2, 0])
  state = jax.jit(sel.update)(state, inp, idx, aux)
  np.testing.assert_allclose(registry.class_weights(sel, state, 2),
                             jax.nn.softmax(-1.201122 * jnp.array([0.5, 1.5])), rtol=1e-6)
  assert int(state.anytime.num_updates) == 1
  np.testing.assert_allclose(state.anytime.cumulative_alpha, [0.5, 1.5])
  with pytest.raises(ValueError, match="eta must be a number > 0 or 'auto', got 'fast'"):
    selectors.reducr.reducr(eta="fast")


def test_payoff_is_max_min_of_excess_minus_holdout():
  ml = jnp.array([2.0, 1.0, 3.0, 0.5])
  ex = jnp.array([[1.0, 1.5], [0.0, 2.0], [3.5, 1.0], [0.0, 0.0]])
  h = jnp.array([0.25, 0.5])
  # ml - ex - h = [[.75, 0], [.75, -1.5], [-.75, 1.5], [.25, 0]] -> min = [0, -1.5, -.75, 0]
  np.testing.assert_allclose(selection_scores.payoff_scores(ml, ex, h), [0.0, -1.5, -0.75, 0.0])
  sel = selectors.get(config_with(**{"selection.method": "payoff"}))
  idx, _ = sel.select(sel.init(2), inputs(model_loss=ml, reference_losses=ex,
                                          class_holdout_loss=h), KEY, 3)
  np.testing.assert_array_equal(idx, [0, 3, 2])    # ties towards the lower index
  assert sel.init(2) == ()


def test_weighted_top_k_by_hand():
  ml = jnp.array([2.0, 1.0, 3.0, 0.5])
  ex = jnp.array([[1.0, 1.5], [0.0, 2.0], [3.5, 1.0], [0.0, 0.0]])
  h = jnp.array([0.25, 0.5])
  sel = selectors.get(config_with(**{"selection.method": "weighted",
                                     "selection.class_weights": (3.0, 1.0)}))
  state = sel.init(2)
  np.testing.assert_allclose(state.weights, [0.75, 0.25])
  # clip=False (official default): R - h = [[.75, 0], [.75, -1.5], [-.75, 1.5], [.25, 0]]
  # score = .75 R0 + .25 R1 = [.5625, .1875, -.1875, .1875]
  idx, _ = sel.select(state, inputs(model_loss=ml, reference_losses=ex,
                                    class_holdout_loss=h), KEY, 2)
  np.testing.assert_array_equal(idx, [0, 1])
  np.testing.assert_allclose(sel.update(state, None, idx, ()).weights, state.weights)


def test_weighted_rejects_bad_weights_and_sampling():
  with pytest.raises(ValueError, match="one weight per class"):
    selectors.get(config_with(**{"selection.method": "weighted",
                                 "selection.class_weights": (1.0, 2.0)})).init(10)
  with pytest.raises(ValueError, match="class_weights must be finite, >= 0"):
    selectors.get(config_with(**{"selection.method": "weighted",
                                 "selection.class_weights": (1.0, -2.0)}))
  with pytest.raises(ValueError, match=r"sampling must be one of \['top_k', 'power'"):
    selectors.get(config_with(**{"selection.method": "weighted",
                                 "selection.sampling": "greedy"}))


def _frequencies(sample, scores, draws=6000):
  """Empirical P(first draw = i) of a k=1 sampler over many keys."""
  keys = jax.random.split(jax.random.PRNGKey(1), draws)
  picks = jax.vmap(lambda r: sample(r, scores, 1)[0])(keys)
  return np.bincount(np.asarray(picks), minlength=scores.shape[0]) / draws


@pytest.mark.parametrize("name, expected", [
    # power, β = 2: (s + |min s|)^2 with s = [1, 2, 3, -1] -> [4, 9, 16, 0]
    ("power", np.array([4.0, 9.0, 16.0, 0.0])),
    # softmax, β = 2: exp(2 s)
    ("softmax", np.exp(2.0 * np.array([1.0, 2.0, 3.0, -1.0]))),
    # rank, β = 2: ranks [2, 1, 0, 3] -> (r + 1)^-2
    ("rank", np.array([1 / 9, 1 / 4, 1.0, 1 / 16])),
])
def test_official_sampling_distributions(name, expected):
  scores = jnp.array([1.0, 2.0, 3.0, -1.0])
  sample = {"power": selection.power_sample, "softmax": selection.softmax_sample,
            "rank": selection.rank_sample}[name]
  freq = _frequencies(lambda r, s, k: sample(r, s, k, 2.0), scores)
  np.testing.assert_allclose(freq, expected / expected.sum(), atol=0.02)
  idx = sample(KEY, scores, 4, 2.0)
  assert sorted(np.asarray(idx).tolist()) == [0, 1, 2, 3]   # without replacement


def test_grad_norm_bound_and_sampling():
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0], [10.0, -10.0]])
  y = jnp.array([0, 1, 0])
  # p = (.5, .5), (.75, .25), (~1, ~0): ‖p - e_y‖ = √.5, √(.75² + .75²), ~0
  bound = selection_scores.grad_norm_upper_bound(logits, y)
  np.testing.assert_allclose(bound, [np.sqrt(0.5), 0.75 * np.sqrt(2.0), 0.0], atol=1e-6)
  sel = selectors.get(config_with(**{"selection.method": "grad_norm",
                                      "selection.grad_norm_sampling": "proportional"}))
  assert sel.needs == {selectors.MODEL_LOGITS}
  freq = _frequencies(lambda r, s, k: sel.select((), inputs(labels=y, model_logits=s), r,
                                                 k)[0], logits)
  expected = np.asarray(bound) / float(np.sum(bound))
  np.testing.assert_allclose(freq, expected, atol=0.02)


def _official_gradnorm_indices(logits, labels, k):
  """Our NumPy port of the official ``gradnorm_ub_selection`` (``selection_methods.py``):
  ``top_x_indices(‖softmax − one_hot(target)‖₂, k, largest=True)``, i.e. the first k of a
  descending argsort (float64 here, so the ranking is exact on random inputs)."""
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  norm = np.linalg.norm(p - np.eye(z.shape[1])[labels], axis=-1)
  return np.argsort(-norm, kind="stable")[:k]


def test_grad_norm_default_is_the_official_top_k():
  config = config_with(**{"selection.method": "grad_norm"})
  assert config.selection.grad_norm_sampling == "top_k"
  sel = selectors.get(config)
  rng = np.random.default_rng(0)
  for b, c, k in ((320, 10, 32), (64, 100, 6), (32, 3, 3)):
    logits = rng.normal(0.0, 3.0, (b, c)).astype(np.float32)
    y = rng.integers(0, c, b)
    idx, _ = sel.select((), inputs(labels=jnp.asarray(y, jnp.int32),
                                   model_logits=jnp.asarray(logits)), KEY, k)
    np.testing.assert_array_equal(np.asarray(idx), _official_gradnorm_indices(logits, y, k))
  # by hand: bounds √.5, .75·√2 ≈ 1.06, ~0 → top-2 is points 1, 0 (largest first)
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0], [10.0, -10.0]])
  idx, _ = sel.select((), inputs(labels=jnp.array([0, 1, 0]), model_logits=logits), KEY, 2)
  np.testing.assert_array_equal(idx, [1, 0])
  with pytest.raises(ValueError, match=r"^config.selection.grad_norm_sampling must be one "
                     r"of \['top_k', 'proportional'\], got 'sample'$"):
    selectors.get(config_with(**{"selection.method": "grad_norm",
                                 "selection.grad_norm_sampling": "sample"}))


def test_entropy_and_irreducible_by_hand():
  logits = jnp.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, -9.0]])
  np.testing.assert_allclose(selection_scores.predictive_entropy(logits)[0], np.log(3.0), rtol=1e-6)
  sel = selectors.get(config_with(**{"selection.method": "entropy"}))
  idx, _ = sel.select((), inputs(labels=jnp.zeros(3, jnp.int32), model_logits=logits), KEY, 2)
  np.testing.assert_array_equal(idx, [0, 2])        # log 3 > ~log 2 > small
  sel = selectors.get(config_with(**{"selection.method": "irreducible"}))
  idx, _ = sel.select((), inputs(reference_losses=jnp.array([[0.3], [0.1], [2.0], [0.2]])),
                      KEY, 2)
  np.testing.assert_array_equal(idx, [1, 3])


def test_uniform_after_switches_and_freezes_the_base_state():
  config = config_with(**{"selection.method": "uniform_after",
                          "selection.base_method": "reducr",
                          "selection.uniform_after_steps": 3, "selection.eta": 0.5})
  sel = selectors.get(config)
  base = selectors.get(config_with(**{"selection.eta": 0.5}))
  assert sel.needs == base.needs
  ml = jnp.array([2.0, 1.0, 3.0, 0.5])
  ex = jnp.array([[1.0, 1.5], [0.0, 2.0], [3.5, 1.0], [0.0, 0.0]])
  h = jnp.array([0.25, 0.5])
  state = sel.init(2)
  for step in (2, 3):
    inp = inputs(model_loss=ml, reference_losses=ex, class_holdout_loss=h,
                 step=jnp.int32(step))
    idx, aux = sel.select(state, inp, KEY, 2)
    new = sel.update(state, inp, idx, aux)
    if step < 3:
      np.testing.assert_array_equal(idx, base.select(state, inp, KEY, 2)[0])
      assert not np.allclose(new.log_w, state.log_w)
    else:
      np.testing.assert_array_equal(idx, selection.uniform_select(KEY, 4, 2))
      np.testing.assert_array_equal(new.log_w, state.log_w)
    state = new
  with pytest.raises(ValueError, match="base_method cannot be 'uniform_after'"):
    selectors.get(config_with(**{"selection.method": "uniform_after",
                                 "selection.base_method": "uniform_after"}))


# ---------------------------------------------------- online update of the experts


def test_update_on_selected_is_the_expert_step_and_data_parallel():
  """One expert step on the selected points; under pmap over 8 devices (1/8 of the
  points each, gradients averaged) it equals the step on all points at once."""
  from reducr_jax.models.mlp import MLP  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  model = MLP(hidden=(8,), num_outputs=3)
  apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  tx = optax.adamw(1e-3 / 100)
  state = stacked_experts.init_experts(lambda r: model.init(r, jnp.zeros((1, 5)))["params"], tx,
                               KEY, 3)
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 5))
  y = jax.random.randint(jax.random.PRNGKey(3), (16,), 0, 3)
  one = experts_step.update_on_selected(apply_fn, tx, state, x, y, 9.0)
  ref, _ = experts_step.experts_train_step(apply_fn, tx, state, x, y, 9.0)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
  p = jax.pmap(lambda s, xb, yb: experts_step.update_on_selected(
      apply_fn, tx, s, xb, yb, 9.0, axis_name="d"), axis_name="d", in_axes=(None, 0, 0))
  eight = p(state, x.reshape(8, 2, 5), y.reshape(8, 2))
  # pmean over 8 devices sums in another order: moments to float tolerance, parameters
  # as far as Adam allows (one step moves an entry by at most lr: tests/numerics.py).
  for a, b in zip(jax.tree.leaves(one.opt_state), jax.tree.leaves(eight.opt_state)):
    np.testing.assert_allclose(np.asarray(b)[3], a, rtol=1e-4, atol=1e-7 * np.abs(a).max())
  numerics.assert_adam_params_close(jax.tree.map(lambda b: np.asarray(b)[3], eight.params),
                                    one.params, state.params, 1e-5, 1, weight_decay=1e-4)
  moved = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params)))
  assert moved > 0


# (RHO-LOSS's model takes the same stacked-experts path with one expert and γ = 0.)
@pytest.mark.parametrize("method, losses", [pytest.param("reducr", "online", marks=pytest.mark.slow),
                                           ("reducr", "multihead")])
def test_trainer_updates_reference_models_on_selected_points(tmp_path, method, losses):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_steps=4, eval_every=4, checkpoint_every=4, log_every=1,
                       **{"selection.method": method, "experts.losses": losses,
                          "experts.update_on_selected": True,
                          "experts.update_lr_factor": 1.0})
  frozen = configuration.with_overrides(config, {"experts.update_on_selected": False})
  a = train.train_and_evaluate(config, str(tmp_path / "updated"))
  b = train.train_and_evaluate(frozen, str(tmp_path / "frozen"))
  assert a["num_skipped"] == b["num_skipped"] == 0
  log = lambda d: [json.loads(line) for line in  # noqa: E731
                   (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
  counts = lambda d: [r["train/selected_class_counts"] for r in log(d)  # noqa: E731
                      if "train/selected_class_counts" in r]
  refs = lambda d: [r["train/reference_loss"] for r in log(d)  # noqa: E731
                    if "train/reference_loss" in r]
  assert counts("updated")[0] == counts("frozen")[0]      # same first selection
  assert refs("updated")[0] == refs("frozen")[0]          # same experts at step 0
  # From step 1 on the updated experts' losses on the large batch differ at every step.
  assert all(u != f for u, f in zip(refs("updated")[1:], refs("frozen")[1:]))
  assert len(refs("updated")) == 4


def test_update_on_selected_needs_online_losses():
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(configuration.ConfigError, match="update_on_selected=True needs"):
    configuration.validate_config(tiny_config(**{"experts.update_on_selected": True}), 8)


def test_online_update_settings_reuse_the_cached_stage_one_models(tmp_path):
  from test_train import tiny_config  # pylint: disable=g-import-not-at-top
  base = tiny_config(**{"experts.losses": "online"})
  updated = configuration.with_overrides(base, {"experts.update_on_selected": True,
                                                "experts.update_lr_factor": 0.5})
  assert (reference_cache.cache_path(base, str(tmp_path), "experts") ==
          reference_cache.cache_path(updated, str(tmp_path), "experts"))
  other = configuration.with_overrides(base, {"experts.gamma": 4.0})
  assert (reference_cache.cache_path(base, str(tmp_path), "experts") !=
          reference_cache.cache_path(other, str(tmp_path), "experts"))


def test_pure_factories_name_their_arguments_and_from_config_the_fields():
  """The pure layer knows no config: the factory's error names its argument; the
  from_config layer names the config field (the message is otherwise the same)."""
  from reducr_jax.selectors import grad_norm, uniform_after, weighted  # pylint: disable=g-import-not-at-top
  cases = [
      (lambda: weighted.weighted(sampling="greedy"), "sampling must be one of"),
      (lambda: weighted.weighted((1.0, 2.0)).init(10), "class_weights must have one weight"),
      (lambda: grad_norm.grad_norm("sample"), "sampling must be one of"),
      (lambda: uniform_after.uniform_after(selectors.baselines.uniform(), -1),
       "num_steps must be an int >= 0"),
      (lambda: reweighters.meta(0.1, "adjoint"), "method must be one of"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match="^" + message):
      call()
  with pytest.raises(ValueError, match=r"^config.selection.sampling must be one of"):
    selectors.get(config_with(**{"selection.method": "weighted",
                                 "selection.sampling": "greedy"}))
  with pytest.raises(ValueError, match=r"^config.selection.class_weights must have one "
                                       r"weight per class \(10\), got 2"):
    selectors.get(config_with(**{"selection.method": "weighted",
                                 "selection.class_weights": (1.0, 2.0)})).init(10)
  with pytest.raises(ValueError, match=r"^config.selection.uniform_after_steps must be"):
    selectors.get(config_with(**{"selection.method": "uniform_after",
                                 "selection.uniform_after_steps": -1}))
  with pytest.raises(ValueError, match=r"^config.meta.method must be one of"):
    reweighters.get(config_with(**{"reweight": "meta", "meta.method": "adjoint"}))
  # Two constants no longer share the name MODEL_SELECTION.
  assert selectors.AUTO_MODEL_SELECTION["rho_loss"] == "average"
  assert not hasattr(selectors, "MODEL_SELECTION")

"""MC-dropout uncertainty rules of the RHO-LOSS baselines: ``bald`` and
``conditional_entropy`` (and the MC form of ``entropy``, :mod:`.entropy`).

Official: OATML/RHO-Loss ``src/curricula/selection_methods.py`` (``bald_selection``,
``conditional_entropy_selection``, ``entropy_selection``) with the scores of
``src/curricula/utils_bald.py``. Each runs ``num_mc = 10`` forward passes of the target
model with its dropout layers switched on (``enable_dropout``) and takes the top-k of

* predictive entropy ``H[ȳ]``: the entropy of the MC-averaged class probabilities;
* conditional entropy ``E_k H[y | w_k]``: the mean over passes of each pass's entropy;
* BALD ``H[ȳ] − E_k H[y | w_k]`` (Houlsby et al., 2011), the mutual information.

Here the K passes are ``SelectionInputs.mc_logits [K, B, C]`` (need :data:`MC_LOGITS`):
K = ``config.selection.mc_passes``, computed by the trainer with dropout on and running
batch-norm statistics. Without dropout (``config.model.dropout_rate = 0``) or with
``mc_passes = 0`` every pass would be the same, so the rules read the single
evaluation-mode ``model_logits`` instead (K = 1: the same scores, no K× forward cost);
BALD is then identically 0 and is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reducr_jax.core import checks
from reducr_jax.core import selection
from reducr_jax.selectors import core

DEFAULT_MC_PASSES = 10        # official MultiModels num_mc / selection num_mc


def _log_probs(logits_kbc: jax.Array) -> jax.Array:
  checks.check_shape("mc logits", logits_kbc, (None, None, None), "[K, B, C]")
  return jax.nn.log_softmax(logits_kbc.astype(jnp.float32), axis=-1)


def mc_predictive_entropy(logits_kbc: jax.Array) -> jax.Array:
  """``[B]`` entropy of the probabilities averaged over the K passes of ``[K, B, C]``."""
  logp = _log_probs(logits_kbc)
  mean_logp = jax.nn.logsumexp(logp, axis=0) - jnp.log(logp.shape[0])      # [B, C]
  return -jnp.sum(jnp.exp(mean_logp) * mean_logp, axis=-1)


def mc_conditional_entropy(logits_kbc: jax.Array) -> jax.Array:
  """``[B]`` mean over the K passes of each pass's predictive entropy."""
  logp = _log_probs(logits_kbc)
  return -jnp.sum(jnp.exp(logp) * logp, axis=(0, 2)) / logp.shape[0]


def bald_scores(logits_kbc: jax.Array) -> jax.Array:
  """``[B]`` BALD = predictive entropy − conditional entropy (≥ 0 up to rounding)."""
  return mc_predictive_entropy(logits_kbc) - mc_conditional_entropy(logits_kbc)


def uses_mc(config) -> bool:
  """Whether the MC rules ask for K stochastic passes: ``selection.mc_passes >= 1`` and a
  model with dropout (``model.dropout_rate > 0``)."""
  passes = config.selection.get("mc_passes", DEFAULT_MC_PASSES)
  return passes >= 1 and float(config.model.get("dropout_rate", 0.0)) > 0


def mc_logits(inputs: core.SelectionInputs) -> jax.Array:
  """``[K, B, C]``: ``inputs.mc_logits``, or the evaluation-mode logits as K = 1."""
  if inputs.mc_logits is not None:
    return inputs.mc_logits
  return inputs.model_logits[None]


def needs(config) -> frozenset:
  return frozenset({core.MC_LOGITS if uses_mc(config) else core.MODEL_LOGITS})


def _top_k_rule(score_fn, config) -> core.Selector:
  def select(inputs, rng, k):
    del rng
    return selection.top_k(score_fn(mc_logits(inputs)), k)
  return core.stateless(select, needs(config))


def bald_from_config(config) -> core.Selector:
  if not uses_mc(config):
    raise ValueError("config.selection.method='bald' needs MC dropout: "
                     "config.model.dropout_rate > 0 and config.selection.mc_passes >= 1 "
                     f"(got {config.model.get('dropout_rate', 0.0)!r} and "
                     f"{config.selection.get('mc_passes', DEFAULT_MC_PASSES)!r}); "
                     "without dropout every BALD score is 0")
  return _top_k_rule(bald_scores, config)


def conditional_entropy_from_config(config) -> core.Selector:
  return _top_k_rule(mc_conditional_entropy, config)


def entropy_from_config(config) -> core.Selector:
  return _top_k_rule(mc_predictive_entropy, config)

"""Selection rules as registered, optax-style transforms (see :mod:`.core`).

Public API: :class:`Selector`, :class:`SelectionInputs`, the ``needs`` names
(:data:`MODEL_LOSS`, :data:`MODEL_LOGITS`, :data:`CLASS_HOLDOUT_LOSS`,
:data:`EXPERT_LOSSES`, :data:`IRREDUCIBLE_LOSS`), :func:`register`, :func:`get`,
:func:`names`, :func:`stateless`. Built-in rules, one module each:

=================  ==========================================================  =====================
name               rule                                                        module
=================  ==========================================================  =====================
``reducr``         class-weighted excess loss + MWU (ablation switches)        :mod:`.reducr`
``rho_loss``       model loss − irreducible loss                               :mod:`.baselines`
``train_loss``     rank-based sampling by loss (Loshchilov & Hutter)           :mod:`.baselines`
``uniform``        uniform without replacement                                 :mod:`.baselines`
``payoff``         max-min over classes of excess − h (official code)          :mod:`.payoff`
``weighted``       fixed class weights, top-k / power / softmax / rank         :mod:`.weighted`
``grad_norm``      ∝ gradient-norm upper bound (Katharopoulos & Fleuret)       :mod:`.grad_norm`
``entropy``        highest predictive entropy                                  :mod:`.entropy`
``irreducible``    lowest irreducible loss alone                               :mod:`.irreducible`
``uniform_after``  a base rule for T steps, then uniform                       :mod:`.uniform_after`
=================  ==========================================================  =====================

MC-dropout rules of the RHO-LOSS repository (:mod:`.bald`, need :data:`MC_LOGITS` with a
dropout model): ``bald`` (predictive entropy − mean per-pass entropy) and
``conditional_entropy`` (mean per-pass entropy); ``entropy`` uses the K passes too then.
"""

from reducr_jax.selectors import bald
from reducr_jax.selectors import baselines
from reducr_jax.selectors import entropy
from reducr_jax.selectors import grad_norm
from reducr_jax.selectors import irreducible
from reducr_jax.selectors import payoff
from reducr_jax.selectors import reducr
from reducr_jax.selectors import uniform_after
from reducr_jax.selectors import weighted
from reducr_jax.selectors.core import (AUTO_MODEL_SELECTION, CLASS_HOLDOUT_LOSS, EXPERT_LOSSES,
                                       IRREDUCIBLE_LOSS, MC_LOGITS, MODEL_LOGITS, MODEL_LOSS,
                                       NEEDS, SelectionInputs, Selector, checked_select,
                                       checked_update, get,
                                       model_selection, names, reference_kind, register,
                                       stateless, unregister)

__all__ = ["AUTO_MODEL_SELECTION", "CLASS_HOLDOUT_LOSS", "EXPERT_LOSSES", "IRREDUCIBLE_LOSS",
           "MC_LOGITS", "MODEL_LOGITS", "MODEL_LOSS", "NEEDS", "SelectionInputs", "Selector",
           "checked_select", "checked_update", "get", "model_selection", "names", "reference_kind", "register",
           "stateless", "unregister"]

register("reducr", reducr.from_config)
register("rho_loss", baselines.rho_loss_from_config)
register("train_loss", baselines.train_loss_from_config)
register("uniform", baselines.uniform_from_config)
register("payoff", payoff.from_config)
register("weighted", weighted.from_config)
register("grad_norm", grad_norm.from_config)
register("entropy", entropy.from_config)
register("irreducible", irreducible.from_config)
register("uniform_after", uniform_after.from_config)
register("bald", bald.bald_from_config)
register("conditional_entropy", bald.conditional_entropy_from_config)

"""reducr_jax: robust online batch selection (REDUCR), its baselines, example reweighting
and data pruning as pure, composable JAX functions, plus a Flax trainer.

Modules: :mod:`~reducr_jax.selection` (scores and selection rules),
:mod:`~reducr_jax.mwu` (class weights), :mod:`~reducr_jax.experts` (class-irreducible
loss models), :mod:`~reducr_jax.metrics` (per-class and robustness metrics).
"""

__version__ = "0.1.0"

"""reducr_jax: robust online batch selection (REDUCR), its baselines, example reweighting
and data pruning as pure, composable JAX functions, plus a Flax trainer.

Pure functions (usable without the trainer):
  :mod:`~reducr_jax.core.selection` (scores and selection rules), :mod:`~reducr_jax.core.mwu`
  (class weights), :mod:`~reducr_jax.core.class_weighted_losses` (eq. 8) and
  :mod:`~reducr_jax.core.stacked_experts` (class-irreducible loss models),
  :mod:`~reducr_jax.core.metrics` (per-class and robustness metrics),
  :mod:`~reducr_jax.core.meta_reweight` (Ren et al. 2018), :mod:`~reducr_jax.core.group_dro`,
  :mod:`~reducr_jax.core.pruning` (DRoP and pruning scores).

Trainer: :mod:`~reducr_jax.train.trainer` (``train_and_evaluate``), :mod:`~reducr_jax.main`
(``python -m reducr_jax.main --config=configs/default.py --workdir=DIR``) and
:mod:`reducr_jax.experiments` (methods table, ablations, sweeps).
"""

__version__ = "0.1.0"


def __getattr__(name):
  """``reducr_jax.default_config()`` / ``reducr_jax.load_config("cifar10")``: the built-in
  configs from any directory (:mod:`reducr_jax.config.config_files`, imported on first use)."""
  if name in ("default_config", "load_config"):
    from reducr_jax.config import config_files  # pylint: disable=g-import-not-at-top
    return getattr(config_files, name)
  raise AttributeError(f"module 'reducr_jax' has no attribute {name!r}")

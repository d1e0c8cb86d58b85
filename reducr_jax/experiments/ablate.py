"""REDUCR and its ablations (REDUCR Fig. 4a), plus the class-weight traces of Fig. 4b/c.

  python -m reducr_jax.experiments.ablate --config=configs/default.py --workdir=DIR --seeds=5

Variants: REDUCR; no clipping of the excess loss; no class-holdout term in the MWU
objective; no class-irreducible (expert) term (R = model loss); no model-loss term, both
ways: clipped as the official code runs it (``model_loss=False`` with the default
``clipped=True``: R = max(−expert loss, 0) = 0, every score ties and the first k points of
each large batch are taken — a uniform random subset, as torch's fixed tie order gives —
while the class weights still move through −k·h) and unclipped
(R = −expert loss). Writes ``DIR/ablation.{md,json}`` and ``DIR/figures/``.
"""

from __future__ import annotations

import os

from reducr_jax import cli
from reducr_jax.config import configuration
from reducr_jax.experiments import figures
from reducr_jax.experiments import runner
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

VARIANTS = {
    "REDUCR": {},
    "no clip": {"selection.clip": False},
    "no class-holdout term": {"selection.use_holdout": False},
    "no expert term": {"selection.use_expert": False},
    "no model-loss term (clipped, official)": {"selection.use_model_loss": False},
    "no model-loss term (unclipped)": {"selection.use_model_loss": False,
                                       "selection.clip": False},
}


def _slug(name: str) -> str:
  """A directory name for a variant: ``no model-loss term (clipped, official)`` →
  ``no_model_loss_term_clipped_official``."""
  for old, new in ((" (", "_"), (", ", "_"), (")", ""), (" ", "_"), ("-", "_")):
    name = name.replace(old, new)
  return name


def grid(config, seeds) -> dict[str, list[runner.Run]]:
  runs = {}
  for name, overrides in VARIANTS.items():
    slug = _slug(name)
    runs[name] = [runner.Run(f"{slug}/seed{s}", configuration.with_overrides(
        config, {"selection.method": "reducr", "seed": s, **overrides})) for s in seeds]
  return runs


def main(argv):
  del argv
  runs = grid(cli.CONFIG.value, sweeps.seeds())
  results = runner.run_grid([r for rs in runs.values() for r in rs], cli.WORKDIR.value,
                            sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  by_variant = {v: [results[r.name] for r in rs] for v, rs in runs.items()}
  table = tables.mean_std_table(by_variant)
  markdown = tables.mean_std_markdown(table, "REDUCR ablations: test accuracy, mean ± std")
  tables.write(workdir, "ablation", table, markdown)
  logs = {v: [sweeps.records(workdir, r) for r in rs] for v, rs in runs.items()}
  names = next(iter(results.values()))["class_names"]
  figures.worst_class_curves(logs, sweeps.figure_path(workdir, "ablation_worst_class_val.png"),
                             "REDUCR ablations: worst-class validation accuracy")
  for variant in ("REDUCR", "no class-holdout term"):
    slug = _slug(variant)
    figures.class_weights_over_steps(logs[variant][0], names,
                          sweeps.figure_path(workdir, f"class_weights_{slug}.png"),
                          f"Class weights, {variant} (seed 0)")
  print(markdown)


if __name__ == "__main__":
  cli.run(main)

"""DRoP and the pruning-score baselines: prune, retrain from scratch, evaluate.

  python -m reducr_jax.experiments.prune --config=configs/default.py --workdir=DIR \
      --densities=0.3,0.5,0.7 --strategies=random,el2n,grand,forgetting,dyn_unc,drop --seeds=3

For each seed one scoring run (``config.pruning``: a few short trainings of the config's
model on the train split) gives every score and the per-class validation recalls; each
strategy × density then prunes the train split and trains from scratch with
``--method`` (default ``uniform``: plain training; ``reducr`` composes DRoP with online
selection). Writes ``DIR/pruning.{md,json}`` (average accuracy, worst-class accuracy,
max − min gap and std across classes, mean ± std over seeds) and
``DIR/figures/pruning_worst_class.png`` (worst-class accuracy vs density).
"""

from __future__ import annotations

import os

from absl import flags

from reducr_jax import cli
from reducr_jax.config import configuration
from reducr_jax.experiments import figures
from reducr_jax.experiments import runner
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

DENSITIES = flags.DEFINE_string("densities", "0.3,0.5,0.7", "Kept fractions, in (0, 1].")
STRATEGIES = flags.DEFINE_string("strategies", "random,el2n,grand,forgetting,dyn_unc,drop",
                                 "Pruning strategies.")
METHOD = flags.DEFINE_string("method", "uniform", "Selection method of the retraining.")
METRICS = ("accuracy", "worst_class_accuracy", "accuracy_gap", "accuracy_std")
TITLES = {"accuracy": "average test accuracy (%)",
          "worst_class_accuracy": "worst-class test accuracy (%)",
          "accuracy_gap": "max − min class accuracy (points)",
          "accuracy_std": "std of class accuracies (points)"}


def main(argv):
  del argv
  densities = sweeps.parse_fractions(DENSITIES.value, "--densities")
  strategies = [s.strip() for s in STRATEGIES.value.split(",") if s.strip()]
  allowed = [s for s in configuration.PRUNING_STRATEGIES if s != "none"]
  if not strategies or any(s not in allowed for s in strategies):
    raise configuration.ConfigError(
        f"--strategies must be a comma-separated subset of {allowed}, got {STRATEGIES.value!r}")
  method = sweeps.parse_methods(METHOD.value, "--method")[0]
  workdir = os.path.abspath(cli.WORKDIR.value)
  base = configuration.with_overrides(cli.CONFIG.value, {
      "selection.method": method, "pruning.cache_dir": os.path.join(workdir, "pruning")})
  runs = {st: {d: [runner.Run(f"{st}/density{d}/seed{s}", configuration.with_overrides(
      base, {"pruning.strategy": st, "pruning.density": d, "seed": s}))
      for s in sweeps.seeds()] for d in densities} for st in strategies}
  flat = [r for by_d in runs.values() for rs in by_d.values() for r in rs]
  results = runner.run_grid(flat, workdir, sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  table = tables.mean_std_by_value(
      {st: {d: [results[r.name] for r in rs] for d, rs in by_d.items()}
       for st, by_d in runs.items()}, METRICS)
  markdown = "\n".join(tables.by_value_markdown(table, m, TITLES[m], "density")
                       for m in METRICS)
  tables.write(workdir, "pruning", table, markdown)
  figures.sweep({st: {d: {"median": row[d]["worst_class_accuracy"]["mean"],
                          "min": min(row[d]["worst_class_accuracy"]["values"]),
                          "max": max(row[d]["worst_class_accuracy"]["values"])}
                      for d in row} for st, row in table.items()},
                "density (fraction of the train split kept)",
                sweeps.figure_path(workdir, "pruning_worst_class.png"),
                f"Worst-class test accuracy after pruning (mean, min–max; {method} training)")
  print(markdown)


if __name__ == "__main__":
  cli.run(main)

"""The §5.3 imbalance sweep (REDUCR Fig. 5) for a chosen class.

  python -m reducr_jax.experiments.imbalance --config=configs/default.py --workdir=DIR \
      --fractions=0.01,0.025,0.1 --imbalance_class=3 --methods=uniform,rho_loss,reducr --seeds=5

For each fraction p the chosen class makes up p of the train and holdout splits (not of
val/test). Writes ``DIR/imbalance.{md,json}`` (median [min, max] worst-class test accuracy
per method and fraction) and ``DIR/figures/imbalance_sweep.png``.
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

FRACTIONS = flags.DEFINE_string("fractions", "0.01,0.025,0.1",
                                "Comma-separated imbalance fractions in (0, 1].")
CLASS = flags.DEFINE_integer("imbalance_class", None,
                             "Class to imbalance (default: config.dataset.imbalance_class).")
METHODS = flags.DEFINE_string("methods", "uniform,rho_loss,reducr", "Methods to sweep.")


def main(argv):
  del argv
  config = cli.CONFIG.value
  methods = sweeps.parse_methods(METHODS.value)
  fractions = sweeps.parse_fractions(FRACTIONS.value, "--fractions")
  cls = config.dataset.imbalance_class if CLASS.value is None else CLASS.value
  if cls < 0:
    raise configuration.ConfigError(
        f"--imbalance_class must be a class index >= 0 (the config has {cls}), got {cls}")
  seeds = sweeps.seeds()
  runs = {m: {f: [runner.Run(f"{m}/frac{f}/seed{s}", configuration.with_overrides(config, {
      "selection.method": m, "seed": s, "dataset.imbalance_class": cls,
      "dataset.imbalance_fraction": f})) for s in seeds] for f in fractions} for m in methods}
  flat = [r for by_f in runs.values() for rs in by_f.values() for r in rs]
  results = runner.run_grid(flat, cli.WORKDIR.value, sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  table = tables.median_range_table(
      {m: {f: [results[r.name] for r in rs] for f, rs in by_f.items()}
       for m, by_f in runs.items()})
  markdown = tables.median_range_markdown(
      table, f"Worst-class test accuracy (%) vs imbalance of class {cls}: median [min, max] "
      f"over {len(seeds)} seeds", "imbalance fraction")
  tables.write(workdir, "imbalance", table, markdown)
  figures.sweep(table, f"fraction of class {cls} in train/holdout",
                sweeps.figure_path(workdir, "imbalance_sweep.png"),
                f"Worst-class test accuracy vs imbalance of class {cls}")
  print(markdown)


if __name__ == "__main__":
  cli.run(main)

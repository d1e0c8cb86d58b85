"""Methods table (REDUCR Table 1) and figures for any config.

  python -m reducr_jax.experiments.compare --config=configs/default.py --workdir=DIR \
      --methods=uniform,train_loss,rho_loss,reducr --seeds=5

Runs every method × seed (reference models trained once per seed and shared), skipping
finished runs and resuming interrupted ones, then writes ``DIR/table.{md,json}`` (mean ±
std over seeds of worst-class and average test accuracy) and ``DIR/figures/``: class
weights over steps (REDUCR run, seed 0), worst-class validation accuracy over steps,
per-class test accuracy, the share of the imbalanced (or worst) class in the selected
points over steps, the share of selected points with a corrupted label (when the label
noise is known: ``selected_corrupted.png``), and each method's class mix of selected
points over steps.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from reducr_jax import cli
from reducr_jax import configuration
from reducr_jax.experiments import figures
from reducr_jax.experiments import runner
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

METHODS = flags.DEFINE_string("methods", "uniform,train_loss,rho_loss,reducr",
                              "Comma-separated methods to compare.")


def grid(config, methods, seeds) -> dict[str, list[runner.Run]]:
  return {m: [runner.Run(f"{m}/seed{s}", configuration.with_overrides(
      config, {"selection.method": m, "seed": s})) for s in seeds] for m in methods}


def report(workdir: str, runs: dict[str, list[runner.Run]], results: dict) -> dict:
  """Writes the table and figures of a finished comparison; returns the table."""
  by_method = {m: [results[r.name] for r in rs] for m, rs in runs.items()}
  table = tables.mean_std_table(by_method)
  some = next(iter(results.values()))
  names = some["class_names"]
  tables.write(workdir, "table", table, tables.mean_std_markdown(
      table, f"Test accuracy, mean ± std over {len(next(iter(runs.values())))} seeds"))
  logs = {m: [sweeps.records(workdir, r) for r in rs] for m, rs in runs.items()}
  focus = some["config"]["dataset"]["imbalance_class"]
  if focus < 0:
    focus = int(np.argmin(sweeps.mean_per_class(by_method[next(iter(by_method))])))
  units = names          # what class weights and selected counts are over
  if "group_names" in some:     # config.dataset.groups: per group; focus the worst group
    units = some["group_names"]
    focus = int(np.argmin(np.nanmean([r["test"]["per_group_accuracy"]
                                      for r in by_method[next(iter(by_method))]], axis=0)))
  figures.worst_class_curves(logs, sweeps.figure_path(workdir, "worst_class_val.png"),
                             "Worst-class validation accuracy")
  figures.per_class_bars({m: sweeps.mean_per_class(v) for m, v in by_method.items()}, names,
                         sweeps.figure_path(workdir, "per_class_test.png"),
                         "Per-class test accuracy (mean over seeds)")
  figures.selected_fractions({m: l[0] for m, l in logs.items()}, units, focus,
                             sweeps.figure_path(workdir, "selected_fraction.png"),
                             f"Share of {units[focus]} in the selected points (seed 0)")
  figures.selected_corrupted({m: l[0] for m, l in logs.items()},
                             sweeps.figure_path(workdir, "selected_corrupted.png"),
                             "Selected points with a corrupted label (seed 0)")
  for method, log in logs.items():
    figures.selected_classes(log[0], units,
                             sweeps.figure_path(workdir, f"selected_classes_{method}.png"),
                             f"Classes of the points {method} selects (seed 0)")
  if "reducr" in logs:
    figures.class_weights(logs["reducr"][0], units,
                          sweeps.figure_path(workdir, "class_weights.png"),
                          "REDUCR class weights over training (seed 0)")
  return table


def main(argv):
  del argv
  methods = sweeps.parse_methods(METHODS.value)
  runs = grid(cli.CONFIG.value, methods, sweeps.seeds())
  results = runner.run_grid([r for rs in runs.values() for r in rs], cli.WORKDIR.value,
                            sweeps.WORKERS.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  report(workdir, runs, results)
  with open(os.path.join(workdir, "table.md")) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run(main)

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

Data efficiency (the RHO-LOSS and REDUCR papers' claim), when ``uniform`` is among the
methods: per method, the steps and the wall-clock to first reach uniform's best
worst-class *validation* accuracy (uniform's run with the same seed, hence the same data),
median over seeds, "never" where the median seed does not reach it
(:func:`reducr_jax.experiments.tables.steps_to_reach_table`). Steps are resolved to
``config.eval_every`` (uniform peaks within 100–400 steps on the default config, so pass
e.g. ``--config.eval_every=25``); the wall-clock is steps × the run's mean seconds per
training step (``timing.json``: evaluation and compilation included, reference-model
training not).

``--etas=3e-3,1e-2,3e-2,auto`` also sweeps REDUCR's MWU step size (runs
``reducr/eta<η>/seed<s>``); η is chosen on mean worst-class *validation* accuracy over
the seeds (:mod:`reducr_jax.experiments.selection_protocol`), the table reports the
selected η's test accuracy only and names it, and ``table.json`` keeps every η's mean
validation score under ``selection``.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from reducr_jax import cli
from reducr_jax.config import configuration
from reducr_jax.run import metric_writers
from reducr_jax.experiments import figures
from reducr_jax.experiments import runner
from reducr_jax.experiments import selection_protocol
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

METHODS = flags.DEFINE_string("methods", "uniform,train_loss,rho_loss,reducr",
                              "Comma-separated methods to compare.")
ETAS = flags.DEFINE_string(
    "etas", "", "Comma-separated MWU step sizes (numbers > 0 or 'auto') to sweep for "
    f"{', '.join(sweeps.ETA_METHODS)}, chosen on validation; '' = the config's.")

CONFIG_SETTING = "config"        # label of a method run with the config as it is
REFERENCE = "uniform"            # data efficiency: steps to reach this rule's best val. acc.


def grid(config, methods, seeds, etas=None) -> dict[str, dict[str, list[runner.Run]]]:
  """``{method: {setting label: [Run per seed]}}``; η swept for :data:`sweeps.ETA_METHODS`."""
  out = {}
  for m in methods:
    base = configuration.with_overrides(config, {"selection.method": m})
    if etas and m in sweeps.ETA_METHODS:
      out[m] = {label: [runner.Run(f"{m}/eta{label}/seed{s}", configuration.with_overrides(
          base, {"selection.eta": value, "seed": s})) for s in seeds]
                for label, value in etas.items()}
    else:
      out[m] = {CONFIG_SETTING: [runner.Run(f"{m}/seed{s}", configuration.with_overrides(
          base, {"seed": s})) for s in seeds]}
  return out


def select(runs: dict[str, dict[str, list[runner.Run]]], results: dict):
  """``(selected runs {method: [Run]}, selection {method: {...}})``: each method's setting
  chosen on mean worst-class validation accuracy over seeds."""
  selection = selection_protocol.select_per_group(
      {m: {label: [results[r.name] for r in rs] for label, rs in by.items()}
       for m, by in runs.items()})
  return {m: runs[m][selection[m]["selected"]] for m in runs}, selection


def report(workdir: str, runs: dict[str, list[runner.Run]], results: dict,
           selection: dict | None = None) -> dict:
  """Writes the table and figures of a finished comparison; returns the table.

  ``runs``: the runs of each method's selected setting; ``selection``: from :func:`select`
  (recorded in the table, and named in it when some method had several settings).
  """
  by_method = {m: [results[r.name] for r in rs] for m, rs in runs.items()}
  table = tables.mean_std_table(by_method)
  notes = None
  if selection:
    for m in table:
      table[m]["selection"] = selection[m]
    if any(len(s["val_worst_class_accuracy"]) > 1 for s in selection.values()):
      notes = {m: f"η = {s['selected']}" for m, s in selection.items()
               if len(s["val_worst_class_accuracy"]) > 1}
  some = next(iter(results.values()))
  names = some["class_names"]
  logs = {m: [sweeps.records(workdir, r) for r in rs] for m, rs in runs.items()}
  columns, title = None, f"Test accuracy, mean ± std over {len(next(iter(runs.values())))} seeds"
  if REFERENCE in runs:
    reach = data_efficiency(workdir, runs, logs)
    for m in table:
      table[m]["data_efficiency"] = metric_writers.to_json_compatible(reach[m])  # never: null
    columns = tables.reach_cells(reach)
    title += (f"; steps and seconds to reach {REFERENCE}'s best worst-class val. accuracy "
              f"(same seed), evaluated every {some['config']['eval_every']} steps")
  tables.write(workdir, "table", table, tables.mean_std_markdown(table, title, notes,
                                                                 columns=columns))
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
    figures.class_weights_over_steps(logs["reducr"][0], units,
                          sweeps.figure_path(workdir, "class_weights.png"),
                          "REDUCR class weights over training (seed 0)")
  return table


def data_efficiency(workdir: str, runs: dict[str, list[runner.Run]],
                    logs: dict[str, list[list[dict]]]) -> dict:
  """:func:`reducr_jax.experiments.tables.steps_to_reach_table` of the runs: each
  method's steps and wall-clock (seconds per step of ``timing.json``) to reach the best
  worst-class *validation* accuracy of :data:`REFERENCE`'s run with the same seed."""
  return tables.steps_to_reach_table(
      {m: [tables.val_curve(log) for log in ls] for m, ls in logs.items()},
      {m: [sweeps.seconds_per_step(workdir, r) for r in rs] for m, rs in runs.items()},
      reference=REFERENCE)


def main(argv):
  del argv
  methods = sweeps.parse_methods(METHODS.value)
  etas = sweeps.parse_etas(ETAS.value)
  runs = grid(cli.CONFIG.value, methods, sweeps.seeds(), etas)
  results = runner.run_grid([r for by in runs.values() for rs in by.values() for r in rs],
                            cli.WORKDIR.value, sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  selected, selection = select(runs, results)
  report(workdir, selected, results, selection)
  with open(os.path.join(workdir, "table.md")) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run(main)

"""Robustness of REDUCR's worst-class gain: every class in turn as the rare one, two datasets.

  python -m reducr_jax.experiments.robustness --config=configs/default.py --workdir=DIR \
      --datasets=digits,mnist1d --methods=uniform,train_loss,rho_loss,reducr --seeds=5 \
      [--etas=3e-3,1e-2,3e-2,auto] [--rare_classes=all] [--mnist1d_samples=10000]

Protocols: (dataset, rare class c) for every c in ``--rare_classes`` (``all``: each of the
C classes), i.e. the config with ``dataset.name`` and ``dataset.imbalance_class = c`` (the
rest of the imbalance, noise and training settings as in the config). Every protocol runs
every method × seed (runs ``<dataset>/rare<c>/<method>[/eta<η>]/seed<s>``) through
:func:`reducr_jax.experiments.runner.run_grid`: resumable, reference models trained once
per (dataset, rare class, seed) and shared by the methods. MNIST-1D is generated with
``--mnist1d_samples`` examples (10 000: 200 per class in the 20 % test split).

With ``--etas``, REDUCR's η is chosen per *dataset* (one η for all its protocols) on the
mean worst-class validation accuracy over all its protocols × seeds
(:mod:`reducr_jax.experiments.selection_protocol`); only the chosen η's runs enter the
comparison. Baselines do not read η and run once.

Statistics, per protocol and pooled per dataset, of the worst-class *test* accuracy gain
``d = acc(REDUCR) − acc(baseline)`` (percentage points) over pairs of runs that share the
protocol and the seed (:mod:`reducr_jax.experiments.paired_stats`): mean, median, a
paired percentile-bootstrap 95 % interval of the mean (pairs resampled whole), and the
win rate (share of pairs where REDUCR's worst-class test accuracy is higher; ties count
½). Writes ``DIR/robustness.{md,json}`` and ``DIR/figures/robustness_gain.png``.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from reducr_jax import cli
from reducr_jax.config import configuration
from reducr_jax import data
from reducr_jax.experiments import figures
from reducr_jax.experiments import paired_stats
from reducr_jax.experiments import runner
from reducr_jax.experiments import selection_protocol
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

DATASETS = flags.DEFINE_string("datasets", "digits,mnist1d",
                               "Comma-separated embedded datasets ('digits', 'mnist1d').")
METHODS = flags.DEFINE_string("methods", "uniform,train_loss,rho_loss,reducr",
                              "Methods: reducr and the baselines it is paired with.")
ETAS = flags.DEFINE_string(
    "etas", "", "Comma-separated REDUCR step sizes (numbers > 0 or 'auto'), chosen per "
    "dataset on worst-class validation accuracy; '' = the config's.")
RARE = flags.DEFINE_string("rare_classes", "all",
                           "'all' or comma-separated class indices made rare in turn.")
MNIST1D_SAMPLES = flags.DEFINE_integer(
    "mnist1d_samples", 10000, "MNIST-1D examples generated (config.dataset.num_samples).")
RESAMPLES = flags.DEFINE_integer("num_resamples", 10000, "Bootstrap resamples.")

REDUCR = "reducr"
CONFIG_SETTING = "config"


def parse_datasets(text: str) -> list[str]:
  names = [d.strip() for d in text.split(",") if d.strip()]
  if not names or any(d not in data.NUM_CLASSES for d in names) or len(set(names)) != len(names):
    raise configuration.ConfigError(
        f"--datasets must be distinct names from {sorted(data.NUM_CLASSES)}, got {text!r}")
  return names


def parse_rare(text: str, num_classes: int, dataset: str) -> list[int]:
  if text.strip() == "all":
    return list(range(num_classes))
  try:
    classes = [int(c) for c in text.split(",") if c.strip()]
  except ValueError:
    classes = []
  if not classes or any(not 0 <= c < num_classes for c in classes) or len(set(classes)) != len(classes):
    raise configuration.ConfigError(
        f"--rare_classes must be 'all' or distinct class indices in [0, {num_classes}) "
        f"({dataset}), got {text!r}")
  return classes


def dataset_overrides(dataset: str, mnist1d_samples: int) -> dict:
  out = {"dataset.name": dataset}
  if dataset == "mnist1d":
    out["dataset.num_samples"] = mnist1d_samples
  return out


def grid(config, datasets, rare_by_dataset, methods, seeds, etas, mnist1d_samples) -> dict:
  """``{(dataset, rare class): {method: {setting: [Run per seed]}}}``."""
  out = {}
  for d in datasets:
    for c in rare_by_dataset[d]:
      protocol = configuration.with_overrides(
          config, {**dataset_overrides(d, mnist1d_samples), "dataset.imbalance_class": c})
      out[(d, c)] = {}
      for m in methods:
        base = configuration.with_overrides(protocol, {"selection.method": m})
        settings = etas if (etas and m in sweeps.ETA_METHODS) else {CONFIG_SETTING: None}
        out[(d, c)][m] = {
            label: [runner.Run(
                f"{d}/rare{c}/{m}" + ("" if value is None else f"/eta{label}") + f"/seed{s}",
                configuration.with_overrides(
                    base, {"seed": s, **({} if value is None else {"selection.eta": value})}))
                    for s in seeds]
            for label, value in settings.items()}
  return out


def select_per_dataset(runs: dict, results: dict) -> dict:
  """``{dataset: {method: {"selected", "val_worst_class_accuracy"}}}``: each method's
  setting chosen on validation over all protocols × seeds of the dataset."""
  pooled: dict = {}
  for (d, _), by_method in runs.items():
    for m, by_setting in by_method.items():
      for label, rs in by_setting.items():
        pooled.setdefault(d, {}).setdefault(m, {}).setdefault(label, []).extend(
            results[r.name] for r in rs)
  return {d: selection_protocol.select_per_group(by_m) for d, by_m in pooled.items()}


def worst_test(results: dict, rs) -> np.ndarray:
  """Worst-class test accuracy (%) of the runs ``rs`` → ``[seeds]``."""
  return np.array([100.0 * results[r.name]["test"]["worst_class_accuracy"] for r in rs])


def analyse(runs: dict, results: dict, selection: dict, num_resamples: int, seed: int = 0) -> dict:
  """Per-protocol and pooled paired statistics of REDUCR's gain over each baseline."""
  rng = np.random.default_rng(seed)
  out = {"selection": selection, "per_protocol": {}, "pooled": {}}
  pooled: dict = {}
  for (d, c), by_method in runs.items():
    chosen = {m: by_setting[selection[d][m]["selected"]] for m, by_setting in by_method.items()}
    ours = worst_test(results, chosen[REDUCR])
    row = {"reducr_worst_test": float(ours.mean())}
    for m, rs in chosen.items():
      if m == REDUCR:
        continue
      theirs = worst_test(results, rs)
      diffs = ours - theirs
      row[m] = {**paired_stats.paired_summary(diffs, num_resamples, rng),
                "baseline_worst_test": float(theirs.mean())}
      pooled.setdefault(d, {}).setdefault(m, []).extend(diffs.tolist())
    out["per_protocol"].setdefault(d, {})[str(c)] = row
  for d, by_m in pooled.items():
    out["pooled"][d] = {m: paired_stats.paired_summary(v, num_resamples, rng) for m, v in by_m.items()}
  return out


def markdown(analysis: dict, num_seeds: int) -> str:
  lines = []
  for d, rows in analysis["per_protocol"].items():
    baselines = list(analysis["pooled"][d])
    sel = analysis["selection"][d].get(REDUCR, {})
    eta = (f"REDUCR η = {sel['selected']} (chosen on validation)"
           if len(sel.get("val_worst_class_accuracy", {})) > 1 else "REDUCR η as in the config")
    lines += [f"### {d}: REDUCR's worst-class test accuracy gain (pp), {num_seeds} seeds per "
              f"rare class; {eta}", "",
              "| rare class | REDUCR worst-class test (%) | " + " | ".join(
                  f"vs {b}: mean [95 % CI], median, win rate" for b in baselines) + " |",
              "|---|---|" + "---|" * len(baselines)]

    def cells(stats):
      return " | ".join(f"{s['mean']:+.1f} [{s['lo']:+.1f}, {s['hi']:+.1f}], "
                        f"{s['median']:+.1f}, {100 * s['win_rate']:.0f} %" for s in stats)

    for c, row in rows.items():
      lines.append(f"| {c} | {row['reducr_worst_test']:.1f} | "
                   + cells(row[b] for b in baselines) + " |")
    lines.append("| **pooled** | | " + cells(analysis["pooled"][d][b] for b in baselines) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  config = cli.CONFIG.value
  datasets = parse_datasets(DATASETS.value)
  methods = sweeps.parse_methods(METHODS.value)
  if REDUCR not in methods or len(methods) < 2:
    raise configuration.ConfigError(
        f"--methods must include reducr and at least one baseline, got {METHODS.value!r}")
  etas = sweeps.parse_etas(ETAS.value)
  if RESAMPLES.value < 1:
    raise configuration.ConfigError(f"--num_resamples must be >= 1, got {RESAMPLES.value}")
  rare = {}
  for d in datasets:
    cfg = configuration.with_overrides(config, dataset_overrides(d, MNIST1D_SAMPLES.value))
    try:
      num_classes = data.num_classes(cfg.dataset)
    except ValueError as e:
      raise configuration.ConfigError(str(e)) from None
    rare[d] = parse_rare(RARE.value, num_classes, d)
  seeds = sweeps.seeds()
  runs = grid(config, datasets, rare, methods, seeds, etas, MNIST1D_SAMPLES.value)
  flat = [r for by_m in runs.values() for by_s in by_m.values() for rs in by_s.values()
          for r in rs]
  results = runner.run_grid(flat, cli.WORKDIR.value, sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  selection = select_per_dataset(runs, results)
  analysis = analyse(runs, results, selection, RESAMPLES.value)
  text = markdown(analysis, len(seeds))
  tables.write(workdir, "robustness", analysis, text)
  figures.gains(analysis, sweeps.figure_path(workdir, "robustness_gain.png"),
                "REDUCR's worst-class test accuracy gain per rare class (95 % bootstrap CI)")
  print(text)


if __name__ == "__main__":
  cli.run(main)

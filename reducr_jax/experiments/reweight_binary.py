"""Ren et al. (2018)'s imbalanced-binary protocol, offline, on an embedded dataset.

  python -m reducr_jax.experiments.reweight_binary --config=configs/default.py --workdir=DIR \
      --classes=4,9 --minority_fraction=0.005 --val_per_class=5 --seeds=5

Two classes of the config's dataset (relabelled 0/1); the second makes up
``minority_fraction`` of the train split (Ren et al.: 0.995 / 0.005); a clean, balanced
validation set of ``val_per_class`` examples per class (Ren et al.: 10 in all) is the
holdout split that meta-reweighting reads; the test split stays balanced. Every example of
each large batch is trained on (``selection.method='uniform'``, ``percent_selected=1``)
with ``reweight`` ∈ {none, class_balanced, meta}. Writes ``DIR/reweight_binary.{md,json}``.
"""

from __future__ import annotations

import os

from absl import flags

from reducr_jax import cli
from reducr_jax.config import configuration
from reducr_jax.experiments import runner
from reducr_jax.experiments import sweeps
from reducr_jax.experiments import tables

CLASSES = flags.DEFINE_string("classes", "4,9", "The two classes (majority, minority).")
MINORITY = flags.DEFINE_float("minority_fraction", 0.005,
                              "Share of the minority class in the train split, in (0, 0.5].")
VAL_PER_CLASS = flags.DEFINE_integer("val_per_class", 5,
                                     "Clean validation examples per class for meta-reweighting.")
REWEIGHTS = ("none", "class_balanced", "meta")


def protocol_overrides(classes, minority_fraction: float, val_per_class: int) -> dict:
  """The config fields of the protocol (data, full-batch training)."""
  return {"dataset.classes": tuple(classes), "dataset.imbalance_class": 1,
          "dataset.imbalance_fraction": minority_fraction,
          "dataset.imbalance_splits": ("train",), "dataset.label_noise": 0.0,
          "dataset.holdout_per_class": val_per_class,
          "selection.method": "uniform", "selection.percent_selected": 1.0,
          "meta.val_batch_size": 2 * val_per_class}


def main(argv):
  del argv
  try:
    classes = tuple(int(c) for c in CLASSES.value.split(","))
  except ValueError:
    classes = ()
  if len(classes) != 2:
    raise configuration.ConfigError(f"--classes must be two class indices like 4,9, "
                                    f"got {CLASSES.value!r}")
  if not 0 < MINORITY.value <= 0.5:
    raise configuration.ConfigError(
        f"--minority_fraction must be in (0, 0.5], got {MINORITY.value}")
  if VAL_PER_CLASS.value < 1:
    raise configuration.ConfigError(f"--val_per_class must be >= 1, got {VAL_PER_CLASS.value}")
  base = configuration.with_overrides(cli.CONFIG.value, protocol_overrides(
      classes, MINORITY.value, VAL_PER_CLASS.value))
  runs = {rw: [runner.Run(f"{rw}/seed{s}", configuration.with_overrides(
      base, {"reweight": rw, "seed": s})) for s in sweeps.seeds()] for rw in REWEIGHTS}
  results = runner.run_grid([r for rs in runs.values() for r in rs], cli.WORKDIR.value,
                            sweeps.WORKERS.value,
                            sweeps.COMPILE_CACHE.value)
  workdir = os.path.abspath(cli.WORKDIR.value)
  table = tables.mean_std_table({rw: [results[r.name] for r in rs] for rw, rs in runs.items()})
  some = next(iter(results.values()))
  markdown = tables.mean_std_markdown(
      table, f"Imbalanced binary {some['class_names'][0]} vs {some['class_names'][1]} "
      f"({1 - MINORITY.value:g} / {MINORITY.value:g} in train, {2 * VAL_PER_CLASS.value} "
      "clean validation examples): test accuracy, mean ± std")
  tables.write(workdir, "reweight_binary", table, markdown)
  print(markdown)


if __name__ == "__main__":
  cli.run(main)

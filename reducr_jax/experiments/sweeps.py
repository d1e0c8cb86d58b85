"""Flags and helpers shared by the experiment commands (compare, ablate, imbalance)."""

from __future__ import annotations

import json
import os

from absl import flags
import numpy as np

from reducr_jax.config import configuration
from reducr_jax.run import metric_writers
from reducr_jax import selectors
from reducr_jax.experiments import runner

SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per setting (seeds 0 … N-1).")
WORKERS = flags.DEFINE_integer("workers", 2, "Runs in parallel (processes).")
COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "JAX persistent compilation cache in <workdir>/compile_cache, "
    "shared by the sweep's runs (same results; identical programs compile once).")


def parse_methods(text: str, flag: str = "--methods") -> list[str]:
  """Comma-separated method names, each checked against the trainer's methods."""
  methods = [m.strip() for m in text.split(",") if m.strip()]
  bad = [m for m in methods if m not in selectors.names()]
  if not methods or bad:
    raise configuration.ConfigError(
        f"{flag} must be a comma-separated subset of {list(selectors.names())}, got {text!r}")
  return methods


def parse_fractions(text: str, flag: str) -> list[float]:
  """Comma-separated numbers in (0, 1]."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or any(not 0 < v <= 1 for v in values):
    raise configuration.ConfigError(
        f"{flag} must be comma-separated numbers in (0, 1], got {text!r}")
  return values


# Methods whose rule reads config.selection.eta (the others are run once per seed whatever
# --etas says).
ETA_METHODS = ("reducr",)


def parse_etas(text: str, flag: str = "--etas") -> dict[str, object]:
  """``--etas=3e-3,1e-2,auto`` → ``{"0.003": 0.003, "0.01": 0.01, "auto": "auto"}``
  (label → config value, in flag order); ``""`` → ``{}`` (the config's η)."""
  out = {}
  for token in (t.strip() for t in text.split(",")):
    if not token:
      continue
    if token == configuration.ETA_AUTO:
      out[token] = token
      continue
    try:
      value = float(token)
    except ValueError:
      value = float("nan")
    if not (value > 0 and np.isfinite(value)):
      raise configuration.ConfigError(
          f"{flag} must be comma-separated numbers > 0 or 'auto', got {text!r}")
    out[f"{value:g}"] = value
  if text.strip() and not out:
    raise configuration.ConfigError(
        f"{flag} must be comma-separated numbers > 0 or 'auto', got {text!r}")
  return out


def seeds() -> list[int]:
  if SEEDS.value < 1:
    raise configuration.ConfigError(f"--seeds must be >= 1, got {SEEDS.value}")
  if WORKERS.value < 1:
    raise configuration.ConfigError(f"--workers must be >= 1, got {WORKERS.value}")
  return list(range(SEEDS.value))


def records(workdir: str, run: runner.Run) -> list[dict]:
  """The metrics log of one finished run."""
  return metric_writers.read_metrics(runner.run_dir(workdir, run))


def seconds_per_step(workdir: str, run: runner.Run) -> float:
  """Mean wall-clock seconds per training step of one finished run (``timing.json``:
  the last invocation's ``train_seconds / steps_run``: compilation, evaluation and
  checkpoints included; NaN when that invocation ran no step)."""
  path = os.path.join(runner.run_dir(workdir, run), "timing.json")
  with open(path) as f:
    timing = json.load(f)
  steps = timing.get("steps_run", 0)
  return float(timing["train_seconds"]) / steps if steps > 0 else float("nan")


def mean_per_class(results: list[dict], split: str = "test") -> np.ndarray:
  """Per-class accuracy averaged over runs → ``[C]``."""
  return np.nanmean([r[split]["per_class_accuracy"] for r in results], axis=0)


def figure_path(workdir: str, name: str) -> str:
  directory = os.path.join(workdir, "figures")
  os.makedirs(directory, exist_ok=True)
  return os.path.join(directory, name)

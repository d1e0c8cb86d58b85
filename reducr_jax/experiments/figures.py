"""Figures of a sweep (matplotlib, headless): each PNG is written with its data as JSON.

  * :func:`class_weights` — MWU class weights over steps for one run (REDUCR Fig. 4b/c);
  * :func:`worst_class_curves` — worst-class validation accuracy over steps per method
    (mean over seeds, min–max band);
  * :func:`per_class_bars` — per-class test accuracy per method (mean over seeds);
  * :func:`selected_fractions` — share of one class in the selected points over steps, per
    method; :func:`selected_classes` — the class mix of one run's selected points;
  * :func:`selected_corrupted` — share of corrupted labels among the selected points over
    steps, per method (runs with known label noise);
  * :func:`sweep` — worst-class test accuracy vs a swept value, median with min–max bars
    (REDUCR Fig. 5).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from reducr_jax.run import metric_writers  # pylint: disable=g-import-not-at-top,wrong-import-position


def _save(fig, path: str, data: dict) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(metric_writers.to_json_compatible(data), f, indent=1)
  return path


def _series(records: Sequence[dict], key: str):
  rows = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
  return np.array([s for s, _ in rows]), np.array([v for _, v in rows], dtype=float)


def _stacked_area(steps, values, class_names, path: str, title: str, ylabel: str,
                  data: dict) -> str:
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.stackplot(steps, values.T, labels=class_names, alpha=0.9)
  ax.set(xlabel="training step", ylabel=ylabel, title=title,
         xlim=(steps.min(), steps.max()), ylim=(0, 1))
  ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
  return _save(fig, path, {"steps": steps, "class_names": list(class_names), **data})


def class_weights_over_steps(records: Sequence[dict], class_names: Sequence[str], path: str,
                  title: str) -> str:
  """Stacked area of the class weights w_t over steps, from one run's metrics log."""
  steps, w = _series(records, "train/class_weights")
  return _stacked_area(steps, w, class_names, path, title, "class weight $w_c$",
                       {"class_weights": w})


def selected_classes(records: Sequence[dict], class_names: Sequence[str], path: str,
                     title: str) -> str:
  """Stacked area of the class mix of the points selected between consecutive log steps."""
  steps, cumulative = _series(records, "train/cumulative_selected_counts")
  counts = np.diff(cumulative, axis=0, prepend=0)
  share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  return _stacked_area(steps, share, class_names, path, title, "share of selected points",
                       {"selected_counts_per_interval": counts})


def worst_class_curves(records_by_method: Mapping[str, Sequence[Sequence[dict]]], path: str,
                       title: str) -> str:
  """Worst-class validation accuracy over steps: mean over seeds and min–max band."""
  fig, ax = plt.subplots(figsize=(7, 4))
  data = {}
  for method, runs in records_by_method.items():
    curves = [_series(r, "val/worst_class_accuracy") for r in runs]
    steps = curves[0][0]
    values = np.stack([c[1][:len(steps)] for c in curves])
    mean = values.mean(0)
    ax.plot(steps, 100 * mean, label=method)
    ax.fill_between(steps, 100 * values.min(0), 100 * values.max(0), alpha=0.2)
    data[method] = {"steps": steps, "per_seed": values}
  ax.set(xlabel="training step", ylabel="worst-class val. accuracy (%)", title=title)
  ax.legend(title="method")
  ax.grid(alpha=0.3)
  return _save(fig, path, data)


def per_class_bars(per_class_by_method: Mapping[str, np.ndarray],
                   class_names: Sequence[str], path: str, title: str) -> str:
  """Grouped bars: per-class test accuracy (%) of each method (mean over seeds)."""
  methods = list(per_class_by_method)
  x = np.arange(len(class_names))
  width = 0.8 / len(methods)
  fig, ax = plt.subplots(figsize=(max(7, len(class_names) * 0.8), 4))
  for i, m in enumerate(methods):
    ax.bar(x + (i - (len(methods) - 1) / 2) * width, 100 * np.asarray(per_class_by_method[m]),
           width, label=m)
  ax.set_xticks(x, class_names)
  ax.set(xlabel="class", ylabel="test accuracy (%)", title=title)
  ax.legend(title="method", fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  return _save(fig, path, {"class_names": list(class_names),
                           "per_class_accuracy": dict(per_class_by_method)})


def selected_fractions(records_by_method: Mapping[str, Sequence[dict]],
                       class_names: Sequence[str], focus_class: int, path: str,
                       title: str) -> str:
  """Share of ``focus_class`` in the points selected between consecutive log steps."""
  fig, ax = plt.subplots(figsize=(7, 4))
  data = {}
  for method, records in records_by_method.items():
    steps, cumulative = _series(records, "train/cumulative_selected_counts")
    counts = np.diff(cumulative, axis=0, prepend=0)
    frac = counts[:, focus_class] / np.maximum(counts.sum(1), 1)
    ax.plot(steps, 100 * frac, label=method)
    data[method] = {"steps": steps, "selected_counts_per_interval": counts}
  ax.set(xlabel="training step",
         ylabel=f"selected points of class {class_names[focus_class]} (%)", title=title)
  ax.legend(title="method")
  ax.grid(alpha=0.3)
  return _save(fig, path, data)


def selected_corrupted(records_by_method: Mapping[str, Sequence[dict]], path: str,
                       title: str) -> str | None:
  """Share of the selected points whose label was corrupted, per method, over steps.

  Each logged value is one step's share (``train/selected_corrupted_share``, written every
  ``log_every`` steps), drawn faint, with its running mean over the logged steps bold.
  Returns ``None`` (no figure) when no run logged the share (clean labels unknown).
  """
  series = {m: _series(r, "train/selected_corrupted_share")
            for m, r in records_by_method.items()}
  series = {m: s for m, s in series.items() if s[0].size}
  if not series:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  data = {}
  for method, (steps, share) in series.items():
    running = np.cumsum(share) / np.arange(1, share.size + 1)
    line, = ax.plot(steps, 100 * running, label=method)
    ax.plot(steps, 100 * share, color=line.get_color(), alpha=0.25, linewidth=0.8)
    data[method] = {"steps": steps, "share": share, "running_mean": running}
  ax.set(xlabel="training step", ylabel="selected points with a corrupted label (%)",
         title=title, ylim=(0, 100))
  ax.legend(title="method")
  ax.grid(alpha=0.3)
  return _save(fig, path, data)


def sweep(table: Mapping[str, Mapping[str, dict]], value_name: str, path: str,
          title: str) -> str:
  """Median worst-class test accuracy vs the swept value, min–max error bars."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for group, row in table.items():
    xs = sorted(row, key=float)
    med = np.array([row[x]["median"] for x in xs])
    lo = med - np.array([row[x]["min"] for x in xs])
    hi = np.array([row[x]["max"] for x in xs]) - med
    ax.errorbar([float(x) for x in xs], med, yerr=[lo, hi], marker="o", capsize=3, label=group)
  ax.set(xlabel=value_name, ylabel="worst-class test accuracy (%)", title=title, xscale="log")
  ax.legend(title="method")
  ax.grid(alpha=0.3)
  return _save(fig, path, dict(table))


def gains(analysis: Mapping[str, dict], path: str, title: str) -> str:
  """Paired gain per rare class with its 95 % bootstrap interval, one panel per dataset.

  ``analysis``: :func:`reducr_jax.experiments.robustness.analyse`'s output; each panel
  shows, per baseline, the mean gain (pp) at each rare class and the pooled one at "all".
  """
  datasets = list(analysis["per_protocol"])
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
  for ax, d in zip(axes[0], datasets):
    rows = analysis["per_protocol"][d]
    baselines = list(analysis["pooled"][d])
    labels = list(rows) + ["all"]
    x = np.arange(len(labels))
    width = 0.8 / max(len(baselines), 1)
    for i, b in enumerate(baselines):
      stats = [rows[c][b] for c in rows] + [analysis["pooled"][d][b]]
      mean = np.array([s["mean"] for s in stats])
      err = [mean - np.array([s["lo"] for s in stats]),
             np.array([s["hi"] for s in stats]) - mean]
      ax.errorbar(x + (i - (len(baselines) - 1) / 2) * width, mean, yerr=err, fmt="o",
                  capsize=3, label=f"vs {b}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set(xlabel="rare class", ylabel="worst-class test acc. gain (pp)", title=d)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path, dict(analysis))

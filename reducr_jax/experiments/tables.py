"""Aggregate per-run results into the paper's tables (mean ± std, median [min, max])."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

METRICS = ("worst_class_accuracy", "accuracy")
TITLES = {"worst_class_accuracy": "worst-class test acc. (%)", "accuracy": "average test acc. (%)"}


def mean_std_table(results: Mapping[str, Sequence[dict]], split: str = "test") -> dict:
  """``{group: {metric: {"mean", "std", "values"}}}`` over the runs of each group (in %).

  Args:
    results: ``{group name (e.g. method): [results dict of each seed]}``.
    split: ``"test"`` or ``"val"``.
  """
  table = {}
  for group, runs in results.items():
    table[group] = {}
    for metric in METRICS:
      values = [100.0 * r[split][metric] for r in runs]
      table[group][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                              "values": values}
    table[group]["num_runs"] = len(runs)
  return table


def median_range_table(results: Mapping[str, Mapping[float, Sequence[dict]]],
                       split: str = "test") -> dict:
  """``{group: {str(x): {"median", "min", "max", "values"}}}`` of worst-class accuracy (%).

  Args:
    results: ``{group: {sweep value: [results of each seed]}}`` (REDUCR Fig. 5 style).
  """
  out = {}
  for group, by_value in results.items():
    out[group] = {}
    for value, runs in sorted(by_value.items()):
      v = [100.0 * r[split]["worst_class_accuracy"] for r in runs]
      out[group][str(value)] = {"median": float(np.median(v)), "min": float(np.min(v)),
                                "max": float(np.max(v)), "values": v}
  return out


def mean_std_markdown(table: dict, title: str, notes: Mapping[str, str] | None = None,
                      notes_title: str = "setting (chosen on val.)") -> str:
  """A markdown table: rows = groups, columns = metrics as ``mean ± std``; best in bold.

  ``notes``: an extra last column, e.g. the setting selected on validation per group.
  """
  extra = f" {notes_title} |" if notes else ""
  lines = [f"### {title}", "",
           "| | " + " | ".join(TITLES[m] for m in METRICS) + " | runs |" + extra,
           "|---|" + "---|" * (len(METRICS) + 1 + bool(notes))]
  best = {m: max(v[m]["mean"] for v in table.values()) for m in METRICS}
  for group, row in table.items():
    cells = []
    for m in METRICS:
      cell = f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}"
      cells.append(f"**{cell}**" if row[m]["mean"] == best[m] else cell)
    note = f" {notes.get(group, '')} |" if notes else ""
    lines.append(f"| {group} | " + " | ".join(cells) + f" | {row['num_runs']} |" + note)
  return "\n".join(lines) + "\n"


def median_range_markdown(table: dict, title: str, value_name: str) -> str:
  """A markdown table: rows = groups, columns = sweep values, ``median [min, max]``."""
  values = sorted({v for row in table.values() for v in row}, key=float)
  lines = [f"### {title}", "",
           f"| {value_name} → | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
  for group, row in table.items():
    cells = [f"{row[v]['median']:.1f} [{row[v]['min']:.1f}, {row[v]['max']:.1f}]"
             if v in row else "" for v in values]
    lines.append(f"| {group} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(workdir: str, name: str, table: dict, markdown: str) -> None:
  """Writes ``<workdir>/<name>.json`` and ``<workdir>/<name>.md``."""
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(table, f, indent=2)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown)


def mean_std_by_value(results: Mapping[str, Mapping[float, Sequence[dict]]],
                      metrics: Sequence[str], split: str = "test") -> dict:
  """``{group: {str(value): {metric: {"mean", "std", "values"}}}}`` (accuracies in %)."""
  out = {}
  for group, by_value in results.items():
    out[group] = {}
    for value, runs in sorted(by_value.items()):
      out[group][str(value)] = {}
      for m in metrics:
        v = [100.0 * r[split][m] for r in runs]
        out[group][str(value)][m] = {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                     "values": v}
  return out


def by_value_markdown(table: dict, metric: str, title: str, value_name: str) -> str:
  """Rows = groups, columns = values, cells ``mean ± std`` of one metric."""
  values = sorted({v for row in table.values() for v in row}, key=float)
  lines = [f"### {title}", "", f"| {value_name} → | " + " | ".join(values) + " |",
           "|---|" + "---|" * len(values)]
  for group, row in table.items():
    cells = [f"{row[v][metric]['mean']:.1f} ± {row[v][metric]['std']:.1f}" if v in row else ""
             for v in values]
    lines.append(f"| {group} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"

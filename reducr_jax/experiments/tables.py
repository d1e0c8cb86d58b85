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
                      notes_title: str = "setting (chosen on val.)",
                      columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """A markdown table: rows = groups, columns = metrics as ``mean ± std``; best in bold.

  ``notes``: an extra last column, e.g. the setting selected on validation per group;
  ``columns``: more columns after it, ``{header: {group: cell}}`` (e.g. :func:`reach_cells`).
  """
  columns = columns or {}
  extra = (f" {notes_title} |" if notes else "") + "".join(f" {h} |" for h in columns)
  lines = [f"### {title}", "",
           "| | " + " | ".join(TITLES[m] for m in METRICS) + " | runs |" + extra,
           "|---|" + "---|" * (len(METRICS) + 1 + bool(notes) + len(columns))]
  best = {m: max(v[m]["mean"] for v in table.values()) for m in METRICS}
  for group, row in table.items():
    cells = []
    for m in METRICS:
      cell = f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}"
      cells.append(f"**{cell}**" if row[m]["mean"] == best[m] else cell)
    note = (f" {notes.get(group, '')} |" if notes else "") + "".join(
        f" {cells_of.get(group, '')} |" for cells_of in columns.values())
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


# ---------------------------------------------------------------------------------------
# Data efficiency: steps and wall-clock to reach uniform's best worst-class val accuracy.

NEVER = "never"
VAL_WORST = "val/worst_class_accuracy"


def val_curve(records: Sequence[dict], metric: str = VAL_WORST) -> list[tuple[int, float]]:
  """``[(step, value)]`` of ``metric`` from a run's ``metrics.jsonl`` records, by step."""
  return sorted((int(r["step"]), float(r[metric])) for r in records
                if r.get(metric) is not None)


def first_step_reaching(curve: Sequence[tuple[int, float]], target: float,
                        tolerance: float = 1e-9) -> float:
  """The first evaluated step whose value is ``≥ target`` (to ``tolerance``), or ``inf``."""
  for step, value in sorted(curve):
    if value >= target - tolerance:
      return float(step)
  return float("inf")


def _median_or_never(values: Sequence[float]) -> float:
  """Median with ``inf`` for "never" (so a median that falls on a never is ``inf``)."""
  v = np.sort(np.asarray(values, np.float64))
  n = len(v)
  if n % 2:
    return float(v[n // 2])
  lo, hi = v[n // 2 - 1], v[n // 2]
  return float("inf") if np.isinf(hi) else float((lo + hi) / 2)


def steps_to_reach_table(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]],
                         seconds_per_step: Mapping[str, Sequence[float]],
                         reference: str = "uniform") -> dict:
  """Per group, the steps and wall-clock to reach the reference's best validation value.

  For seed ``s`` (the s-th curve of every group: runs that share the seed share the data),
  the target is ``max`` of ``reference``'s curve of seed s; a group's seed-s run reaches
  it at the first evaluated step whose value is ``≥`` the target (``inf``: never), and
  its wall-clock is that step × the run's seconds per step. Medians over seeds count a
  never as ``+inf``: the median is "never" when at least half the seeds (for an even
  count, the upper middle one) never reach it. Steps are resolved to the evaluation
  interval. The reference itself reaches its best at its peak step.

  Args:
    curves: ``{group: [[(step, value), ...] per seed]}`` (:func:`val_curve`), the same
      number of seeds for every group.
    seconds_per_step: ``{group: [seconds per training step, per seed]}``.
    reference: the group whose best value is the target.

  Returns:
    ``{group: {"target": [per seed], "steps": [per seed, inf = never], "seconds": [...],
    "median_steps", "median_seconds", "reached": how many seeds reached}}``.
  """
  if reference not in curves:
    raise ValueError(f"reference {reference!r} must be one of the groups {sorted(curves)}")
  targets = [max(v for _, v in c) if c else float("nan") for c in curves[reference]]
  out = {}
  for group, group_curves in curves.items():
    if len(group_curves) != len(targets):
      raise ValueError(f"{group} has {len(group_curves)} seeds, {reference} {len(targets)}")
    steps = [first_step_reaching(c, t) for c, t in zip(group_curves, targets)]
    seconds = [s * sps for s, sps in zip(steps, seconds_per_step[group])]
    out[group] = {"target": targets, "steps": steps, "seconds": seconds,
                  "median_steps": _median_or_never(steps),
                  "median_seconds": _median_or_never(seconds),
                  "reached": int(np.sum(np.isfinite(steps)))}
  return out


def reach_cells(table: Mapping[str, dict]) -> dict[str, dict[str, str]]:
  """Markdown cells of :func:`steps_to_reach_table`: ``{column: {group: cell}}``, with
  "never" for an infinite median and the number of seeds that reached in brackets."""
  steps, seconds = {}, {}
  for group, row in table.items():
    n = len(row["steps"])
    suffix = f" ({row['reached']}/{n})"
    steps[group] = (NEVER if np.isinf(row["median_steps"]) else
                    f"{row['median_steps']:.0f}") + suffix
    seconds[group] = (NEVER if np.isinf(row["median_seconds"]) else
                      f"{row['median_seconds']:.1f}")
  return {"steps to uniform's best worst-class val. acc. (median, seeds reached)": steps,
          "wall-clock to it (s, median)": seconds}

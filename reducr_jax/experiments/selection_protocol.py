"""Hyper-parameter selection on validation only; tables report the selected setting's test.

When an experiment command sweeps a setting (e.g. REDUCR's η with ``--etas``), each
method's setting is chosen by

    s* = argmax_s  mean_{runs r of s}  val_worst(r)

where ``val_worst(r)`` is the worst-class *validation* accuracy in ``r``'s
``results.json`` (``r["val"]["worst_class_accuracy"]``, the kept model's, REDUCR App. A.6).
Ties go to the first setting in the order given (the command's flag order). Test
accuracies are never read to choose; the table reports the test accuracy of the runs of
``s*`` only, and names ``s*``.

The pool of runs a choice is made over is the caller's: one protocol's seeds (compare), or
every protocol × seed of a dataset (robustness: one η per dataset, not per protocol).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def mean_val_worst(runs: Sequence[dict]) -> float:
  """Mean over ``runs`` of the worst-class validation accuracy (fraction in [0, 1])."""
  if not runs:
    raise ValueError("mean_val_worst needs at least one run")
  return float(np.mean([r["val"]["worst_class_accuracy"] for r in runs]))


def select_setting(runs_by_setting: Mapping[str, Sequence[dict]]) -> tuple[str, dict]:
  """The setting with the highest mean worst-class validation accuracy.

  Args:
    runs_by_setting: ``{setting label: [results dict of each run]}`` (≥ 1 setting, each
      with ≥ 1 run), in preference order for ties.

  Returns:
    ``(selected label, {label: mean worst-class val accuracy})``, e.g. for
    ``{"a": val worst [0.5, 0.7], "b": [0.65, 0.65]}`` → ``("b", {"a": 0.6, "b": 0.65})``
    whatever the test accuracies.
  """
  if not runs_by_setting:
    raise ValueError("select_setting needs at least one setting")
  scores = {s: mean_val_worst(runs) for s, runs in runs_by_setting.items()}
  best = max(scores.values())
  return next(s for s, v in scores.items() if v == best), scores


def select_per_group(results: Mapping[str, Mapping[str, Sequence[dict]]]) -> dict:
  """:func:`select_setting` for every group (e.g. method).

  Args:
    results: ``{group: {setting: [results dicts]}}``.

  Returns:
    ``{group: {"selected": label, "val_worst_class_accuracy": {label: mean}}}``.
  """
  out = {}
  for group, by_setting in results.items():
    label, scores = select_setting(by_setting)
    out[group] = {"selected": label, "val_worst_class_accuracy": scores}
  return out

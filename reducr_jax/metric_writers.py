"""Metrics logs: one JSON object per line (``metrics.jsonl``) plus TensorBoard events.

On resume, :class:`MetricWriter` drops JSONL records written after the restored step, so
the log of an interrupted-and-resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


def to_json_compatible(value: Any) -> Any:
  """Arrays → lists, NumPy scalars → Python numbers, NaN/inf → None (valid JSON)."""
  if isinstance(value, Mapping):
    return {k: to_json_compatible(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_compatible(v) for v in value]
  if hasattr(value, "tolist"):
    return to_json_compatible(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricWriter:
  """Writes scalar and vector metrics to ``<logdir>/metrics.jsonl`` and TensorBoard.

  Only process 0 of a multi-process run should write (pass ``enabled=False`` elsewhere).
  """

  def __init__(self, logdir: str, resume_step: int = 0, enabled: bool = True):
    self._enabled = enabled
    self._path = os.path.join(logdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    self._truncate_after(resume_step)
    self._file = open(self._path, "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
    except ImportError:  # TensorBoard events are optional.
      self._tb = None

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self._path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one record; vector metrics go to TensorBoard element by element."""
    if not self._enabled:
      return
    record = {"step": int(step), **to_json_compatible(dict(metrics))}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in metrics.items():
        arr = np.asarray(value, dtype=np.float64) if not isinstance(value, str) else None
        if arr is None:
          continue
        if arr.ndim == 0:
          self._tb.add_scalar(name, float(arr), step)
        elif arr.ndim == 1:
          self._tb.add_scalars(name, {str(i): float(v) for i, v in enumerate(arr)}, step)

  def close(self) -> None:
    if self._enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(logdir: str) -> list[dict]:
  """All records of ``<logdir>/metrics.jsonl``, in order."""
  with open(os.path.join(logdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]

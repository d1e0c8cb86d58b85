"""Metrics logs: one JSON object per line (``metrics.jsonl``) plus TensorBoard events.

On resume, :class:`MetricWriter` drops JSONL records written after the restored step, so
the log of an interrupted-and-resumed run equals that of an uninterrupted one. Files go
through :mod:`etils.epath` (local or ``gs://`` log directories; only local is tested); the
truncation is an atomic rewrite (:func:`reducr_jax.run.caches.atomic_write`). Non-finite
values are ``null`` in ``metrics.jsonl`` and left out of TensorBoard (one warning per
writer says so; tensorboardX would print a line for each).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from absl import logging
from etils import epath
import numpy as np

from reducr_jax.run import caches


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
    self._path = epath.Path(logdir) / "metrics.jsonl"
    self._tb = None
    self._warned_non_finite = False
    if not enabled:
      return
    epath.Path(logdir).mkdir(parents=True, exist_ok=True)
    self._truncate_after(resume_step)
    self._file = self._path.open("a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(os.fspath(logdir), "tensorboard"))
    except ImportError:  # TensorBoard events are optional.
      self._tb = None

  def _truncate_after(self, step: int) -> None:
    if not self._path.exists():
      return
    kept = []
    for line in self._path.read_text().splitlines(keepends=True):
      try:
        if line.strip() and json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):   # a line cut by a kill -9: dropped
        pass
    caches.atomic_write(self._path, "".join(kept).encode())

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one record; vector metrics go to TensorBoard element by element."""
    if not self._enabled:
      return
    record = {"step": int(step), **to_json_compatible(dict(metrics))}
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:
      if caches.is_disk_full(e):
        raise caches.DiskFullError(f"disk full while writing {self._path}: free space and "
                                   "run the same command again (it resumes)") from None
      raise
    if self._tb is not None:
      for name, value in metrics.items():
        arr = np.asarray(value, dtype=np.float64) if not isinstance(value, str) else None
        if arr is None or arr.ndim > 1:
          continue
        if not np.all(np.isfinite(arr)):
          self._warn_non_finite(name, step)
        if arr.ndim == 0 and np.isfinite(arr):
          self._tb.add_scalar(name, float(arr), step)
        elif arr.ndim == 1:
          finite = {str(i): float(v) for i, v in enumerate(arr) if np.isfinite(v)}
          if finite:
            self._tb.add_scalars(name, finite, step)

  def _warn_non_finite(self, name: str, step: int) -> None:
    if not self._warned_non_finite:
      self._warned_non_finite = True
      logging.warning("metric %s is not finite at step %d: non-finite values are not "
                      "written to TensorBoard (metrics.jsonl records them as null); "
                      "this is said once", name, step)

  def close(self) -> None:
    if self._enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(logdir: str) -> list[dict]:
  """All records of ``<logdir>/metrics.jsonl``, in order."""
  text = (epath.Path(logdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically, from process 0 only (results, timing)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  caches.atomic_write(path, json.dumps(to_json_compatible(obj), indent=2,
                                       sort_keys=True).encode())

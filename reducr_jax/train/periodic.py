"""When a training loop's periodic actions run: one rule for stage 1 and stage 2.

Both loops log, evaluate and checkpoint "every ``n`` steps and at the last one"
(``config.log_every`` / ``eval_every`` / ``checkpoint_every``,
``config.experts.eval_every``); the class-holdout refresh of stage 2 runs every ``n``
steps from step 0 (before the step). :func:`every` is that rule, written once.
"""

from __future__ import annotations

from typing import Optional


def every(step: int, n: int, last: Optional[int] = None) -> bool:
  """Whether a periodic action runs at ``step``: ``step`` is a multiple of ``n``, or the
  ``last`` step (``None``: no final action).

  Args:
    step: the loop's step count (after the step for log / eval / checkpoint).
    n: the period, ≥ 1.
    last: the loop's final step, where the action always runs.

  Raises:
    ValueError: ``n`` < 1 (one line naming it).
  """
  if n < 1:
    raise ValueError(f"n (the period) must be >= 1, got {n!r}")
  return step % n == 0 or (last is not None and step == last)

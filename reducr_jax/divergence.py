"""Stopping a diverged run: count consecutive skipped (non-finite) updates on the host.

The train step never applies an update whose loss, gradients or resulting parameters are
not finite (``train.train_step``); it reports ``skipped = 1`` instead. A run where every
update is skipped would otherwise "finish" with the initial parameters. :class:`SkipMonitor`
reads each step's flag one step late (so the host never waits for the step it has just
dispatched) and raises :class:`Diverged` after ``config.max_consecutive_skipped`` in a row.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax import errors

DEFAULT_LIMIT = 100


class Diverged(errors.RunError):
  """Too many consecutive skipped updates (exit status 1)."""


def all_finite(tree) -> jax.Array:
  """Scalar bool: every leaf of ``tree`` is finite (``True`` for an empty tree); jit-able.
  The train step applies an update only where this holds for its loss, gradients and
  new states."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _first(a: Any) -> int:
  """The value on this process's first device of a ``pmap`` output (or a plain value)."""
  if hasattr(a, "addressable_data"):
    a = a.addressable_data(0)
  return int(np.asarray(a).reshape(-1)[0])


class SkipMonitor:
  """Counts consecutive skipped updates; :meth:`push` each step's ``skipped`` flag.

  Args:
    limit: raise :class:`Diverged` when this many updates in a row were skipped.
  """

  def __init__(self, limit: int = DEFAULT_LIMIT):
    self.limit = int(limit)
    self.consecutive = 0
    self._pending: Optional[tuple[int, Any]] = None

  def push(self, step: int, skipped: Any) -> None:
    """Records step ``step``'s flag and checks the previous step's (one step late)."""
    previous, self._pending = self._pending, (step, skipped)
    if previous is not None:
      self._check(*previous)

  def flush(self) -> None:
    """Checks the pending flag now (before a checkpoint and at the end)."""
    previous, self._pending = self._pending, None
    if previous is not None:
      self._check(*previous)

  def _check(self, step: int, skipped: Any) -> None:
    self.consecutive = self.consecutive + 1 if _first(skipped) else 0
    if self.consecutive >= self.limit:
      raise Diverged(
          f"the run diverged: {self.consecutive} consecutive updates skipped up to step "
          f"{step} (non-finite loss, gradients or parameters); lower "
          "config.optimizer.learning_rate or check the data, then start a new --workdir "
          "(config.max_consecutive_skipped sets this limit)")

"""Stopping a diverged run: which updates are skipped, and when a run counts as diverged.

The train step never applies an update whose loss, gradients or resulting states are not
finite, or whose new parameters fail :func:`bounded`
(:func:`reducr_jax.train.selection_step.train_step`); it reports ``skipped = 1`` instead.
A run where every update is skipped would otherwise "finish" with the initial parameters.
:class:`SkipMonitor` reads each step's flag one step late (so
the host never waits for the step it has just dispatched) and raises :class:`Diverged`
after ``config.max_consecutive_skipped`` in a row; a run that ends with more than
``config.max_skipped_share`` of its updates skipped is reported ``"diverged"`` in
``results.json`` and exits 1 (:func:`run_status`, :func:`check_share`), so a short run
that the consecutive limit cannot stop does not look like a success either.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from reducr_jax.core import errors

DEFAULT_LIMIT = 100
DEFAULT_MAX_SHARE = 0.5          # config.max_skipped_share


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


def bounded(params) -> jax.Array:
  """Scalar bool: ``Σ θ²`` over every leaf of ``params`` is finite in float32; jit-able.

  The rule for *new parameters* (not optimizer moments): ``‖θ‖₂ < √(float32 max) ≈
  1.8e19``. It implies every entry is finite, and it rejects the finite but useless
  parameters of a huge step (``learning_rate=1e30`` makes |θ| ≈ 1e30 after one Adam step):
  a parameter whose square overflows float32 gives a non-finite value as soon as it meets
  another factor of its size — the next forward's product of two such layers, or Adam's
  ``g²`` of a gradient that scales with it — so it would be non-finite one step later,
  after it had been applied and checkpointed. ``True`` for an empty tree.
  """
  leaves = jax.tree.leaves(params)
  if not leaves:
    return jnp.asarray(True)
  total = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
  return jnp.isfinite(total)


def run_status(num_skipped: int, num_steps: int, max_share: float) -> dict:
  """``{"status": "ok" | "diverged", "skipped_share": s}`` for ``results.json``: s =
  skipped updates / all updates of the run; ``"diverged"`` when s > ``max_share``."""
  share = float(num_skipped) / max(int(num_steps), 1)
  return {"status": "diverged" if share > max_share else "ok", "skipped_share": share}


def check_share(status: dict, num_skipped: int, num_steps: int, max_share: float) -> None:
  """Raises :class:`Diverged` (one line, exit 1) for a ``"diverged"`` :func:`run_status`."""
  if status["status"] == "diverged":
    raise Diverged(
        f"the run diverged: {num_skipped} of {num_steps} updates skipped "
        f"({status['skipped_share']:.0%} > config.max_skipped_share = {max_share:g}; "
        "non-finite loss, gradients or parameters); results.json records status "
        "'diverged'; lower config.optimizer.learning_rate or check the data, then start "
        "a new --workdir")


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

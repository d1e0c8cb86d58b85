"""SIGTERM / SIGINT: stop at a step boundary with a checkpoint, and a documented exit status.

TPU-VM preemption and SLURM (``scancel``, ``sbatch --signal``) deliver SIGTERM; Ctrl-C is
SIGINT. A :class:`Handler` installed by the trainer turns them into a clean stop:

* during the training loop (after :meth:`Handler.defer`) the signal only sets a flag;
  the loop finishes the current step, asks :meth:`Handler.requested` (all processes of a
  multi-process run agree on it at the same step, see ``sync_every``), saves a
  checkpoint at that step and raises :class:`Preempted`;
* before the loop (data loading, pruning, expert training — all cached or restartable)
  the signal raises :class:`Preempted` at once: there is nothing to save;
* a second signal while a stop is pending restores the previous handlers and raises
  :class:`Preempted` at once (the checkpoint of the last ``checkpoint_every`` step is kept).

``reducr_jax.cli`` prints the one-line message and exits with :data:`EXIT_CODES` —
``128 + signal number``, the shell convention: 143 for SIGTERM, 130 for SIGINT.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from reducr_jax import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


#: Seconds between two readiness checks of :func:`wait`.
POLL_SECONDS = 0.05


def wait(tree: Any, poll_seconds: float = POLL_SECONDS) -> Any:
  """Returns ``tree`` once every ``jax.Array`` leaf is computed, checking in short sleeps.

  Python runs signal handlers only between bytecodes of the main thread, and converting a
  pending array to NumPy (``np.asarray``, ``float``) holds it in C++ until the computation
  ends: measured on CPU, a SIGTERM 0.3 s into a 6 s computation reached its handler after
  6.4 s; while waiting here, after ≤ ``poll_seconds``. Stage 1 waits like this after every
  step (a step of 14 ResNet-18 experts on 2 CPU cores takes tens of minutes), so a
  preemption stops it at once, and its progress lines report computed steps rather than
  dispatched ones.
  """
  import jax  # pylint: disable=g-import-not-at-top
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      pause = min(1e-4, poll_seconds)   # short steps (tests, small models) wait ~their length
      while not leaf.is_ready():
        time.sleep(pause)
        pause = min(2 * pause, poll_seconds)
  return tree


class Preempted(errors.RunError):
  """A stop signal ended the run; ``exit_code`` is 128 + the signal number."""

  prefix = ""


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


class Handler:
  """Installs handlers for ``signals`` (main thread only; elsewhere it does nothing).

  Args:
    signals: the signals to catch.
    sync_every: with several processes, :meth:`requested` all-gathers the flag every
      ``sync_every`` steps (one tiny collective), so every process stops at the same step.
      With one process the flag is read every step for free.
  """

  def __init__(self, signals=SIGNALS, sync_every: int = 10):
    self._signum: Optional[int] = None
    self._deferred = False
    self._sync_every = max(1, int(sync_every))
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.getsignal(s)
        signal.signal(s, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self._signum is not None or not self._deferred:
      self._signum = signum
      self.uninstall()
      raise Preempted(f"stopped by {signal_name(signum)} before the training loop could "
                      "checkpoint; run the same command to resume from the last checkpoint",
                      EXIT_CODES.get(signum, 128 + signum))
    self._signum = signum
    print(f"received {signal_name(signum)}: stopping after this step (send it again to stop "
          "at once)", file=sys.stderr, flush=True)

  def defer(self, on: bool = True) -> None:
    """From now on (``on``) a signal only sets the flag that :meth:`requested` reports;
    ``defer(False)``: signals stop the run at once again."""
    self._deferred = bool(on)

  @property
  def signum(self) -> Optional[int]:
    """The signal received (``None`` when none)."""
    return self._signum

  def requested(self, step: int) -> bool:
    """Whether to stop after ``step``; the same answer on every process (collective).

    With several processes every process must call it at every step: it communicates at
    steps divisible by ``sync_every`` and returns ``False`` at the others.
    """
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self._signum is not None
    if step % self._sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self._signum or 0))
    agreed = int(np.max(flags))
    if agreed and self._signum is None:
      self._signum = agreed
    return bool(agreed)

  def stop(self, step: int, checkpoint_dir: str) -> Preempted:
    """The :class:`Preempted` to raise once the checkpoint of ``step`` is written."""
    signum = self._signum or signal.SIGTERM
    return Preempted(f"stopped by {signal_name(signum)} after step {step}; checkpoint saved in "
                     f"{checkpoint_dir}; run the same command to resume",
                     EXIT_CODES.get(signum, 128 + signum))

  def uninstall(self) -> None:
    """Puts the previous handlers back (idempotent)."""
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def __enter__(self) -> "Handler":
    return self

  def __exit__(self, *exc) -> None:
    self.uninstall()

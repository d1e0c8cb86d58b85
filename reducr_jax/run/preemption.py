"""SIGTERM / SIGINT: stop at a step boundary with a checkpoint, and a documented exit status.

TPU-VM preemption and SLURM (``scancel``, ``sbatch --signal``) deliver SIGTERM; Ctrl-C is
SIGINT. A :class:`Handler` installed by the trainer turns them into a clean stop:

* during the training loop (after :meth:`Handler.defer`) the signal only sets a flag;
  the loop finishes the current step, asks :meth:`Handler.requested` (all processes of a
  multi-process run agree on it at the same step, see ``sync_every``), saves a
  checkpoint at that step and raises :class:`Preempted`;
* before the loop (data loading, pruning, expert training — all cached or restartable)
  the signal raises :class:`Preempted` at once: there is nothing to save. With several
  processes it is deferred instead, and every process stops at the next step boundary
  of stage 1 (:func:`boundary`, one tiny all-gather per expert step) or of the loop: a
  process stopping alone would leave the others waiting in a collective;
* a second signal while a stop is pending restores the previous handlers and raises
  :class:`Preempted` at once (the checkpoint of the last ``checkpoint_every`` step is
  kept), except while a checkpoint is being written (:meth:`Handler.critical`): then the
  run stops once it is written, so no step is left without its manifest.

``reducr_jax.cli`` prints the one-line message and exits with :data:`EXIT_CODES` —
``128 + signal number``, the shell convention: 143 for SIGTERM, 130 for SIGINT — through
``os._exit``: a normal interpreter exit tears down while the batch-prefetch thread may
still be inside JAX, which crashed (SIGSEGV / SIGABRT) in some trials.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np

from reducr_jax.core import errors

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
        if _RAISED is not None:         # a stop that something swallowed
          raise _RAISED
        time.sleep(pause)
        pause = min(2 * pause, poll_seconds)
  return tree


class Preempted(errors.RunError):
  """A stop signal ended the run; ``exit_code`` is 128 + the signal number.

  ``collective``: every process of a multi-process run stops with it (they agreed on the
  stop); ``False`` for the at-once stop of one process (a second signal).
  """

  prefix = ""

  def __init__(self, message: str, exit_code: int | None = None, collective: bool = True):
    super().__init__(message, exit_code)
    self.collective = collective


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


_ACTIVE: Optional["Handler"] = None     # the installed handler, for :func:`boundary`
# An at-once stop already raised by the handler. A signal handler raises wherever the main
# thread is, possibly inside library code that catches ``Exception`` (seen: a SIGTERM
# during stage 1 ended as "stopped after step 1" of the loop, with extra stderr lines):
# :func:`boundary` and :func:`wait` raise it again.
_RAISED: Optional["Preempted"] = None
# Waits for a checkpoint written in the background (``Checkpointer.wait``) while one is.
_PENDING_WRITE: Optional[Callable[[], None]] = None


def pending_write(wait: Optional[Callable[[], None]]) -> None:
  """Registers (``None``: clears) the wait for a checkpoint being written in the
  background: a stop that ends the run at once calls it first, so the step being saved
  gets its manifest."""
  global _PENDING_WRITE
  _PENDING_WRITE = wait


def _finish_pending_write() -> None:
  wait = _PENDING_WRITE
  if wait is not None:
    try:
      wait()
    except Exception:  # pylint: disable=broad-except  # the stop is what is reported
      pass


def boundary(step: int, what: str) -> None:
  """A step boundary of a phase before the training loop (stage 1), called by every
  process at every step: with several processes, the processes agree here on a pending
  signal and all stop at this step (:class:`Preempted`). One process: a signal has
  stopped it at once (raised again here if something swallowed it). No handler: nothing."""
  if _RAISED is not None:
    raise _RAISED
  if _ACTIVE is not None:
    _ACTIVE.boundary(step, what)


class Handler:
  """Installs handlers for ``signals`` (main thread only; elsewhere it does nothing).

  Args:
    signals: the signals to catch.
    sync_every: with several processes, :meth:`requested` all-gathers the flag every
      ``sync_every`` steps (one tiny collective), so every process stops at the same step.
      With one process the flag is read every step for free.
    processes: how many processes run (default ``jax.process_count()``). With several,
      a first signal is always deferred: a process stopping alone would leave the others
      waiting in a collective, so every process stops at the next step boundary
      (:func:`boundary` in stage 1, :meth:`requested` in the training loop).
  """

  def __init__(self, signals=SIGNALS, sync_every: int = 10, processes: int | None = None):
    global _ACTIVE, _RAISED
    _RAISED = None
    if processes is None:
      import jax  # pylint: disable=g-import-not-at-top
      processes = jax.process_count()
    self._processes = int(processes)
    self._signum: Optional[int] = None
    self._deferred = False
    self._critical = False
    self._pending: Optional[Preempted] = None
    self._sync_every = max(1, int(sync_every))
    self._previous = {}
    self._previous_hook = None
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.getsignal(s)
        signal.signal(s, self._handle)
      _ACTIVE = self
      # A stop raised inside a callback Python cannot propagate from (seen: jax's gc
      # callback) is printed as "Exception ignored in …" (7 lines); it is raised again at
      # the next step or wait poll, so it is not printed.
      self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

  def _unraisable(self, info) -> None:
    if not isinstance(info.exc_value, Preempted):
      (self._previous_hook or sys.__unraisablehook__)(info)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal_name(signum)
    code = EXIT_CODES.get(signum, 128 + signum)
    if self._signum is not None:          # a second signal: stop at once
      stop = Preempted(f"stopped at once by a second {name}; run the same command to "
                       "resume from the last checkpoint", code, collective=False)
    elif not self._deferred and self._processes == 1:
      stop = Preempted(f"stopped by {name} outside the training loop (nothing to save "
                       "there; caches and checkpoints are kept); run the same command to "
                       "resume", code)
    else:
      self._signum = signum
      where = ("after this step" if self._deferred else
               "at the next step boundary, with every process")
      print(f"received {name}: stopping {where} (send it again to stop at once)",
            file=sys.stderr, flush=True)
      return
    self._signum = signum
    if self._critical:                    # a checkpoint is being written: finish it
      self._pending = stop
      print(f"received {name} again: stopping once the checkpoint is written",
            file=sys.stderr, flush=True)
      return
    self.uninstall()
    _finish_pending_write()
    global _RAISED
    _RAISED = stop
    raise stop

  @contextlib.contextmanager
  def critical(self) -> Iterator[None]:
    """A block a signal must not cut short (a checkpoint save: cut, it would leave a step
    without its manifest). A signal that would stop the run at once stops it when the
    block ends instead."""
    self._critical = True
    try:
      yield
    finally:
      self._critical = False
    if self._pending is not None:
      stop, self._pending = self._pending, None
      self.uninstall()
      _finish_pending_write()
      raise stop

  def boundary(self, step: int, what: str) -> None:
    """See the module function :func:`boundary`."""
    if self._processes == 1 or self._deferred:
      return
    if self.requested(step, sync_every=1):
      signum = self._signum or signal.SIGTERM
      self.uninstall()
      raise Preempted(f"stopped by {signal_name(signum)} during {what} at step {step} "
                      f"(all {self._processes} processes; nothing to save there); run the "
                      "same command to resume", EXIT_CODES.get(signum, 128 + signum))

  def defer(self, on: bool = True) -> None:
    """From now on (``on``) a signal only sets the flag that :meth:`requested` reports;
    ``defer(False)``: signals stop the run at once again."""
    self._deferred = bool(on)

  @property
  def signum(self) -> Optional[int]:
    """The signal received (``None`` when none)."""
    return self._signum

  def requested(self, step: int, sync_every: int | None = None) -> bool:
    """Whether to stop after ``step``; the same answer on every process (collective).

    With several processes every process must call it at every step: it communicates at
    steps divisible by ``sync_every`` (default: the handler's) and returns ``False`` at
    the others.
    """
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self._signum is not None
    if step % (sync_every or self._sync_every):
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
    global _ACTIVE
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
    if _ACTIVE is self:
      _ACTIVE = None

  def __enter__(self) -> "Handler":
    return self

  def __exit__(self, *exc) -> None:
    global _RAISED
    _RAISED = None            # the run this handler guarded is over: later code starts clean
    self.uninstall()
    if self._previous_hook is not None and sys.unraisablehook == self._unraisable:
      sys.unraisablehook = self._previous_hook

"""Progress lines: rate and time-left text, printed by process 0."""

from __future__ import annotations


def duration(seconds: float) -> str:
  """``'1h02m'``, ``'3m05s'`` or ``'12s'``."""
  s = int(max(0.0, seconds) + 0.5)
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{sec:02d}s"
  return f"{sec}s"


def rate_and_eta(done: int, total: int, rate: float, unit: str = "steps") -> str:
  """``'12.3 steps/s, ETA 4m05s'`` for ``total - done`` units left at ``rate`` per second."""
  left = max(0, total - done)
  eta = duration(left / rate) if rate > 0 else "?"
  return f"{rate:.1f} {unit}/s, ETA {eta}"


def say(line: str) -> None:
  """Prints ``line`` (flushed) on process 0 only."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(line, flush=True)


def took(what: str, seconds: float) -> None:
  """Prints ``'<what> in 3m05s'`` on process 0: what each stage cost, shown by default
  (the absl log, at its default verbosity, hides INFO)."""
  say(f"{what} in {duration(seconds)}")


#: Seconds between two progress lines of a long stage (the first after this long too).
EVERY_SECONDS = 10.0


class Reporter:
  """Time-throttled progress lines of one long stage (expert training, the loss table,
  evaluation), printed by process 0: ``'<what>: 120/500 steps  3.2 steps/s, ETA 1m59s'``.

  A stage that ends within :data:`EVERY_SECONDS` prints nothing, so short runs stay quiet;
  a longer one prints at most one line per :data:`EVERY_SECONDS` and a last line at the end.
  """

  def __init__(self, what: str, total: int, unit: str = "steps", clock=None):
    import time  # pylint: disable=g-import-not-at-top
    self.what, self.total, self.unit = what, int(total), unit
    self._clock = clock or time.monotonic
    self._start = self._last = self._clock()
    self._printed = False

  def update(self, done: int) -> None:
    now = self._clock()
    final = done >= self.total
    if now - self._last < EVERY_SECONDS and not (final and self._printed):
      return
    if final and not self._printed and now - self._start < EVERY_SECONDS:
      return
    rate = done / max(now - self._start, 1e-9)
    say(f"{self.what}: {done}/{self.total} {self.unit}  "
        f"{rate_and_eta(done, self.total, rate, self.unit)}")
    self._last, self._printed = now, True

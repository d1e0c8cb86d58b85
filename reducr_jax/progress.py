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

"""Host-side prefetching: build the next batches on a background thread.

Batches are pure functions of the step (:func:`reducr_jax.data.batch_indices`), so the
producer just runs ahead of the consumer; reading/decoding (e.g. Clothing1M JPEGs) then
overlaps with the accelerator working on the current step. Order and content are exactly
those of the plain loop, so prefetching never changes results or resumption.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def prefetch(make: Callable[[int], T], start: int, stop: int, size: int = 2) -> Iterator[T]:
  """Yields ``make(step)`` for ``step`` in ``[start, stop)``, up to ``size`` steps ahead.

  Args:
    make: the (thread-safe) batch builder.
    start, stop: step range.
    size: how many batches may wait ready (0 = build in the caller's thread).

  An exception in ``make`` is re-raised in the consumer at the step it happened.
  Abandoning the iterator stops the producer.
  """
  if size <= 0:
    for step in range(start, stop):
      yield make(step)
    return
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop_event = threading.Event()

  def produce():
    for step in range(start, stop):
      try:
        item = (True, make(step))
      except BaseException as e:  # pylint: disable=broad-except
        item = (False, e)
      while not stop_event.is_set():
        try:
          ready.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if stop_event.is_set() or not item[0]:
        return

  thread = threading.Thread(target=produce, daemon=True, name="batch-prefetch")
  thread.start()
  try:
    for _ in range(start, stop):
      ok, item = ready.get()
      if not ok:
        raise item
      yield item
  finally:
    stop_event.set()
    thread.join(timeout=5)

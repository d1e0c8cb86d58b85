"""The input pipeline: batches as pure functions of the step, built ahead of the consumer.

Every batch the trainer reads is ``make(step)`` for a pure ``make`` (indices from
:func:`reducr_jax.data.batch_indices`, images decoded from the step's rows; augmentation
is a pure function of (seed, step, position) on the device), so how many workers build
them never changes what they contain, and a resumed run continues exactly.

``config.data_workers`` picks how they are built:

* ``0`` (default): one background thread runs ahead (:func:`reducr_jax.data.prefetch.prefetch`);
  Clothing1M rows are decoded by the shared thread pool of
  :mod:`reducr_jax.data.random_access`. Light: no extra processes.
* ``n > 0``: ``n`` worker processes (spawned when the iterator starts; ``make`` and the
  data it closes over travel by ``cloudpickle``) each build whole batches — read and
  decode the JPEG/PNG rows — for steps ``start + i, start + i + n, …``; up to
  ``n + prefetch`` batches are in flight and they are yielded in step order. Each worker
  decodes with one thread, so ``n`` is the number of cores given to decoding.

  ``n`` is bounded by the machine (:func:`worker_count`): at most the usable CPU cores,
  and as many workers as fit in half the available memory at
  :data:`WORKER_BASE_BYTES` plus the pickled ``make`` each (a spawned worker measured
  186 MB before its data); a reduced ``n`` is said in one warning line.

``put`` (e.g. ``jax.device_put`` to the devices' sharding) runs in the parent, in the
prefetch thread: worker processes never touch JAX.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import multiprocessing
from typing import Any, Callable, Iterator, Optional

from absl import logging

from reducr_jax.data import prefetch as prefetch_lib
from reducr_jax.data import random_access

_MAKE: Optional[Callable[[int], Any]] = None   # what forked workers call (inherited)


#: Resident memory of one spawned worker before its data (measured: 186 MB), rounded up.
WORKER_BASE_BYTES = 200 * 2**20


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:               # not Linux
    return os.cpu_count() or 1


def _available_bytes() -> Optional[int]:
  """``MemAvailable`` of ``/proc/meminfo`` (Linux), else None (not bounded by memory)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def worker_count(requested: int, payload_bytes: int, cores: Optional[int] = None,
                 available_bytes: Optional[int] = -1) -> tuple[int, str]:
  """``(n, why)``: the worker processes to start for ``config.data_workers=requested``.

  ``n = min(requested, cores, ⌊available / 2 / (WORKER_BASE_BYTES + payload_bytes)⌋)``,
  at least 1; ``why`` is ``""`` when ``n == requested``, else the bound that applied.
  ``cores`` / ``available_bytes`` default to this machine's (usable cores, MemAvailable;
  ``None`` memory: unbounded).
  """
  cores = _usable_cores() if cores is None else int(cores)
  if available_bytes == -1:
    available_bytes = _available_bytes()
  per_worker = WORKER_BASE_BYTES + int(payload_bytes)
  n, why = int(requested), ""
  if n > cores:
    n, why = cores, f"{cores} usable CPU cores"
  if available_bytes is not None:
    fit = max(1, int(available_bytes // 2 // per_worker))
    if n > fit:
      n, why = fit, (f"half of the {available_bytes / 2**30:.1f} GiB available at "
                     f"{per_worker / 2**30:.2f} GiB per worker")
  return max(1, n), why


def _worker_init(payload: bytes) -> None:
  """A fresh (spawned) worker: unpickle ``make``; decode with one thread (the worker is
  the unit of parallelism)."""
  global _MAKE
  import cloudpickle  # pylint: disable=g-import-not-at-top,unused-import
  import pickle  # pylint: disable=g-import-not-at-top
  os.environ["JAX_PLATFORMS"] = "cpu"   # a worker never computes with JAX
  random_access._POOL = concurrent.futures.ThreadPoolExecutor(  # pylint: disable=protected-access
      max_workers=1, thread_name_prefix="reducr_decode")
  _MAKE = pickle.loads(payload)


def _work(step: int) -> Any:
  return _MAKE(step)


def _from_workers(make: Callable[[int], Any], start: int, stop: int, workers: int,
                  ahead: int) -> Iterator[Any]:
  """``make(step)`` for ``step`` in ``[start, stop)``, in order, built by ``workers``
  spawned processes with up to ``workers + ahead`` batches in flight.

  Spawned, not forked: a forked child inherits the parent's data readers (array_record,
  TFDS) whose internal thread pools did not survive the fork, and hangs on its first
  read. ``make`` travels by ``cloudpickle`` (closures and lambdas included); lazy TFDS
  sources pickle as their file lists and reopen in the worker.
  """
  import cloudpickle  # pylint: disable=g-import-not-at-top
  payload = cloudpickle.dumps(make)
  requested = workers
  workers, why = worker_count(requested, len(payload))
  if why:
    logging.warning("config.data_workers=%d: starting %d worker processes (bounded by %s)",
                    requested, workers, why)
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(workers, initializer=_worker_init, initargs=(payload,)) as pool:
    pending: collections.deque = collections.deque()
    nxt = start
    for _ in range(start, stop):
      while nxt < stop and len(pending) < workers + ahead:
        pending.append(pool.apply_async(_work, (nxt,)))
        nxt += 1
      yield pending.popleft().get()


def batches(config, make: Callable[[int], Any], start: int, stop: int,
            put: Callable[[Any], Any] = lambda b: b) -> Iterator[Any]:
  """Yields ``put(make(step))`` for ``step`` in ``[start, stop)``, built ahead.

  Args:
    config: reads ``data_workers`` (0 = in-process, the default) and ``prefetch``
      (batches ready ahead, default 2).
    make: pure ``step -> host batch`` (NumPy pytree); with workers it runs in forked
      processes, so it must not use JAX.
    start, stop: step range.
    put: host batch → what the consumer gets (e.g. device arrays), in this process.

  An exception in ``make`` or ``put`` is re-raised in the consumer at its step;
  abandoning the iterator stops the workers.
  """
  workers = int(config.data_workers)
  ahead = int(config.prefetch)
  if workers < 0:
    raise ValueError(f"config.data_workers must be >= 0, got {workers}")
  if workers == 0:
    return prefetch_lib.prefetch(lambda t: put(make(t)), start, stop, size=ahead)
  return _with_workers(make, start, stop, workers, ahead, put)


def _with_workers(make, start, stop, workers, ahead, put) -> Iterator[Any]:
  """:func:`batches` with worker processes; ``put`` in the prefetch thread."""
  source = _from_workers(make, start, stop, workers, ahead)
  try:
    # The prefetch thread is the only caller of next(source), one step at a time.
    yield from prefetch_lib.prefetch(lambda _: put(next(source)), start, stop,
                                     size=ahead)
  finally:
    try:
      source.close()                    # terminates the pool
    except ValueError:                  # still running in the (stopping) thread
      pass

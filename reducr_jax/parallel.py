"""Data parallelism shared by the stages: devices, placement and each process's rows.

Every stage that runs over devices (expert training, the loss table, the train step)
uses the same conventions: one mesh axis :data:`AXIS` over the data-parallel devices, a
global batch split in order over processes (:func:`process_rows`) and then over each
process's local devices (:func:`shard`), per-device copies of replicated state placed as
the ``pmap``-ed step returns its outputs (:func:`replicate`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np

AXIS = "devices"


def local_devices(config: ml_collections.ConfigDict) -> list:
  """This process's data-parallel devices: all local ones, or the first
  ``config.num_devices`` (``-1`` = all; a multi-process run must use all).

  Raises:
    ValueError: ``config.num_devices`` out of range, or not ``-1`` with several processes.
  """
  devices = jax.local_devices()
  num = config.get("num_devices", -1)
  if num not in (-1, None):
    if not 1 <= num <= len(devices):
      raise ValueError(f"config.num_devices must be -1 or in [1, {len(devices)}], got {num}")
    if jax.process_count() > 1 and num != len(devices):
      raise ValueError("config.num_devices must be -1 in a multi-process run")
    devices = devices[:num]
  return devices


def pmap_devices(devices: Sequence) -> Sequence | None:
  """``devices`` argument of ``jax.pmap``: ``None`` (every device of every process, each
  process feeding its own) with several processes, else exactly ``devices``."""
  return None if jax.process_count() > 1 else devices


def process_rows(tree, num_processes: int, process_index: int):
  """This process's contiguous share of a global batch (leading axis split in order)."""
  if num_processes == 1:
    return tree
  def rows(a):
    per = a.shape[0] // num_processes
    return a[process_index * per:(process_index + 1) * per]
  return jax.tree.map(rows, tree)


def process_range(n: int, num_processes: int, process_index: int) -> tuple[int, int]:
  """Rows ``[lo, hi)`` of ``n`` that process ``process_index`` owns: contiguous blocks of
  ``ceil(n / num_processes)`` (the last ones shorter, possibly empty)."""
  per = -(-n // num_processes)
  lo = min(process_index * per, n)
  return lo, min(lo + per, n)


def device_sharding(devices) -> jax.sharding.NamedSharding:
  """Leading axis split over ``devices`` on mesh axis :data:`AXIS`, as the pmapped step
  returns its outputs: inputs placed this way never trigger a second compilation."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                    jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices):
  """One copy of ``tree`` per device, placed like the step's outputs."""
  return jax.device_put(jax.tree.map(lambda a: np.stack([np.asarray(a)] * len(devices)),
                                     tree), device_sharding(devices))


def first_replica(tree):
  """This process's first replica of a ``pmap`` output, as host arrays without the device
  axis. (``flax.jax_utils.unreplicate`` keeps a leading axis of 1 when the pmap spans
  fewer devices than the process has, i.e. ``config.num_devices`` < local devices.)"""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)).reshape(a.shape[1:]), tree)


def shard(tree, n: int):
  """``[B, ...] → [n, B/n, ...]``: a (process's) batch split over its ``n`` devices."""
  return jax.tree.map(lambda a: a.reshape((n, a.shape[0] // n) + a.shape[1:]), tree)

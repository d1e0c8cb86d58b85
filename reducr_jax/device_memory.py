"""How much memory a compiled program needs and how much a device has.

Used to pick the stacked-expert strategy (:mod:`reducr_jax.train_experts`): the peak of a
compiled program comes from XLA's own ``memory_analysis()`` (arguments + outputs +
temporaries − aliased (donated) buffers), the device's capacity from
``device.memory_stats()["bytes_limit"]`` where the backend reports it (GPU, TPU), else —
XLA:CPU, whose devices share the host's RAM — a fraction of physical memory split over the
local devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax

GIB = 1 << 30
CPU_RAM_FRACTION = 0.5   # of physical RAM, shared by the local CPU devices


def physical_memory_bytes() -> int:
  """The machine's physical RAM in bytes (0 when the OS does not say)."""
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return 0


def device_capacity_bytes(device: Any = None) -> int:
  """Bytes one device can hold: ``memory_stats()["bytes_limit"]`` when reported, else
  :data:`CPU_RAM_FRACTION` of physical RAM over the local device count."""
  device = device or jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without stats raise)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return int(CPU_RAM_FRACTION * physical_memory_bytes() / max(1, jax.local_device_count()))


def compiled_peak_bytes(compiled: Any) -> int | None:
  """Peak bytes of a compiled program on one device from XLA's memory analysis
  (``argument + output + temp − alias``); ``None`` when the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  if isinstance(m, (list, tuple)):      # one per device (pmap on some versions)
    m = m[0]
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)

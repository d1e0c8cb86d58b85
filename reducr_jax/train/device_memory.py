"""How much memory a compiled program needs and how much a device has.

Used to pick the stacked-expert strategy (:mod:`reducr_jax.train.stage1_memory`): the peak of a
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
# Of physical RAM, shared by the local CPU devices. An eighth: the process also holds the
# data, host copies of the experts' best variables, the loss table and XLA's compile-time
# memory, and on CPU a step in more slices does the same FLOPs. At 0.5 the Clothing1M
# smoke run (14 ResNet-18 experts, 224 px, expert batch 320) got 4 slices (compiled peak
# 6.2 GiB) and the process passed 9 GB resident; at 0.25 it got 8 slices (3.4 GiB
# compiled, in place); at 0.125 on a 23 GiB machine 64 slices (2.3 GiB compiled).
CPU_RAM_FRACTION = 0.125


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


MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def compiled_memory(compiled: Any) -> dict[str, int]:
  """Bytes of a ``jax.stages.Compiled`` from XLA's memory analysis (per device).

  Returns ``{argument, output, alias, temp, generated_code, peak}``: ``alias`` is the part
  of the outputs written into donated argument buffers, and ``peak = argument + output −
  alias + temp`` estimates what the program holds at once (XLA's own live-range peak is
  not exposed; this is its upper bound from the same numbers). Empty if unavailable.
  """
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without it raise)
    return {}
  if isinstance(stats, (list, tuple)):   # one per device on some versions
    stats = stats[0] if stats else None
  if stats is None:
    return {}
  out = {f: int(getattr(stats, f"{f}_size_in_bytes")) for f in MEMORY_FIELDS}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def compiled_peak_bytes(compiled: Any) -> int | None:
  """Peak bytes of a compiled program on one device (:func:`compiled_memory`), ``None``
  when the backend gives no memory analysis."""
  return compiled_memory(compiled).get("peak")

"""Abstract TPU topologies to compile for on a machine without one (``pip install .[tpu]``).

``jax.experimental.topologies.get_topology_desc`` with libtpu installed gives the devices of
a TPU slice that is not there; ``jax.pmap(f, devices=topo.devices).lower(shapes).compile()``
compiles for it, and ``memory_analysis()`` / ``cost_analysis()`` describe one chip. What was
measured with jax 0.10.2 + libtpu 0.0.42.1 (and is encoded in :func:`get`):

* one-chip slices (``v5e:1x1``, ``v6e:1x1``, ``v4:1x1x1``, ``v5:1x1x1``) need
  ``chips_per_host_bounds=(1, 1, 1)``;
* v4 and v5p chips hold two TensorCores; JAX on those slices sees one device per chip
  ("megacore"), which needs ``chip_config_name="megacore"`` (without it ``v4:2x2x1`` has 8
  devices, one per core);
* a v5e-8 (``v5e:2x4``) is one host of 8 chips (``chips_per_host_bounds=(2, 4, 1)``);
  larger v5e slices have hosts of 2×2 chips (``v5e:4x4``: 4 hosts), compiled as one
  multi-host program;
* the environment: ``JAX_PLATFORMS=cpu`` (the real backend stays the CPU),
  ``TPU_SKIP_MDS_QUERY=1`` (no metadata server), ``TPU_LOG_DIR`` (libtpu's logs),
  ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (a second process, e.g. a second test worker).
* a program over the chip's HBM fails to compile in seconds with ``RESOURCE_EXHAUSTED: Ran
  out of memory on HBM ... (26.84G) exceeds available HBM (15.75G)``
  (:func:`parse_out_of_memory`); the usable limits per chip are in :mod:`reducr_jax.train.chips`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile

from reducr_jax.train import chips
from reducr_jax.core import errors

ENVIRONMENT = {"TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
_NAME = re.compile(r"^(v4|v5e|v5p?|v6e):(\d+(?:x\d+){1,2})$")
_OOM = re.compile(r"Ran out of memory in memory space hbm|Ran out of memory on HBM", re.I)
_SIZES = re.compile(r"\(([\d.]+)([KMGT])\)")


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice to plan for: its name, chip, devices (one per chip) and hosts."""
  name: str
  chip: chips.Chip
  devices: tuple
  num_hosts: int

  @property
  def num_chips(self) -> int:
    return len(self.devices)


def prepare_environment() -> None:
  """The environment libtpu needs to compile without a TPU (values already set are kept);
  call before the first :func:`get` (libtpu reads it when it loads)."""
  for k, v in ENVIRONMENT.items():
    os.environ.setdefault(k, v)
  os.environ.setdefault("TPU_LOG_DIR", os.path.join(tempfile.gettempdir(),
                                                    f"reducr_tpu_logs_{os.getpid()}"))


def parse_name(name: str) -> tuple[str, tuple[int, ...]]:
  """``(chip prefix, bounds)`` of a topology name such as ``v5e:2x2`` or ``v5:2x2x1``; a
  one-line ``ConfigError`` otherwise."""
  m = _NAME.match(str(name))
  if not m:
    raise errors.ConfigError(
        f"--topology must be like v5e:2x2, v5e:2x4, v6e:2x2, v4:2x2x1 or v5:2x2x1 (v5p), "
        f"got {name!r}")
  bounds = tuple(int(b) for b in m.group(2).split("x"))
  prefix = "v5p" if m.group(1) in ("v5", "v5p") else m.group(1)
  if prefix in ("v4", "v5p") and len(bounds) != 3:
    raise errors.ConfigError(f"--topology {name!r}: {prefix} slices have 3 bounds, e.g. "
                             f"{m.group(1)}:2x2x1")
  if prefix in ("v5e", "v6e") and len(bounds) != 2:
    raise errors.ConfigError(f"--topology {name!r}: {prefix} slices have 2 bounds, e.g. "
                             f"{prefix}:2x2")
  return prefix, bounds


@functools.lru_cache(maxsize=None)
def get(name: str) -> Topology:
  """The abstract devices of TPU slice ``name`` (see the module docstring).

  Raises:
    ConfigError: a malformed name, or libtpu is not installed (``pip install .[tpu]``).
  """
  prefix, bounds = parse_name(name)
  prepare_environment()
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise errors.ConfigError("planning for a TPU needs libtpu: pip install "
                             "'reducr_jax[tpu]' (jax[tpu] of the installed jax)") from None
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  chips_count = 1
  for b in bounds:
    chips_count *= b
  kw = {}
  if prefix in ("v4", "v5p"):
    kw["chip_config_name"] = "megacore"
  if chips_count == 1:
    kw["chips_per_host_bounds"] = (1, 1, 1)
  elif prefix in ("v5e", "v6e") and chips_count == 8:   # v5e-8 / v6e-8: one host of 8
    kw["chips_per_host_bounds"] = bounds + (1,)
  topo_name = ("v5" if prefix == "v5p" else prefix) + ":" + "x".join(map(str, bounds))
  topo = topologies.get_topology_desc(topology_name=topo_name, platform="tpu", **kw)
  devices = tuple(topo.devices)
  return Topology(name, chips.get(prefix), devices,
                  len({d.process_index for d in devices}))


def parse_out_of_memory(message: str) -> tuple[float, float] | None:
  """``(needed, available)`` bytes from XLA:TPU's out-of-HBM compile error, else ``None``."""
  if not _OOM.search(message):
    return None
  units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  sizes = [float(v) * units[u] for v, u in _SIZES.findall(message)]
  if len(sizes) < 2:
    return (float("inf"), float("nan"))
  return sizes[-2], sizes[-1]

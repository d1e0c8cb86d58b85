"""Published peak numbers of the accelerator chips a run is planned for (:mod:`reducr_jax.plan`).

One row per chip: dense bf16 FLOP/s, HBM bandwidth and HBM capacity per chip, each from the
vendor's own spec page (``source``). A roofline time is ``max(FLOPs / peak_flops,
bytes / hbm_bandwidth)``: a lower bound that real steps reach only in part (the plan says
so; measured step times go next to it in ``benchmarks/run_all.py`` on real hardware).

For a TPU v5p chip in megacore mode (two TensorCores as one device) the per-chip numbers
are the chip's. ``memory_limit_bytes`` (what XLA lets one program use) is measured from the
compiler: ``limit_bytes`` of a TPU chip is the "available HBM" XLA:TPU (libtpu 0.0.42.1)
reports when a program does not fit (v5e 15.75 GiB, v4 30.75, v5p 95.74, v6e 31.25; the
rest is reserved); of a GPU, JAX's default preallocation, 75 % of its memory
(``XLA_PYTHON_CLIENT_MEM_FRACTION``). ``hbm_bytes`` is the chip's HBM.
"""

from __future__ import annotations

import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Peak numbers of one chip (a TPU chip, or one GPU)."""
  name: str
  peak_bf16_flops: float      # dense, FLOP/s
  hbm_bandwidth: float        # bytes/s
  hbm_bytes: int
  source: str
  limit_bytes: int = 0        # what one program may use (0: hbm_bytes)

  @property
  def memory_limit_bytes(self) -> int:
    return self.limit_bytes or self.hbm_bytes

  def roofline_seconds(self, flops: float, bytes_accessed: float) -> float:
    """``max(flops / peak, bytes / bandwidth)``: the time at the chip's published peaks."""
    return max(flops / self.peak_bf16_flops, bytes_accessed / self.hbm_bandwidth)


CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", 275e12, 1200e9, 32 * GIB,
         "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s)",
         int(30.75 * GIB)),
    Chip("v5e", 197e12, 819e9, 16 * GIB,
         "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s)",
         int(15.75 * GIB)),
    Chip("v5p", 459e12, 2765e9, 95 * GIB,
         "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB HBM2e, 2765 GB/s)",
         int(95.74 * GIB)),
    Chip("v6e", 918e12, 1640e9, 32 * GIB,
         "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GiB HBM, 1640 GB/s)",
         int(31.25 * GIB)),
    Chip("h100", 989e12, 3.35e12, 80 * 10**9,
         "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: 989 TFLOP/s dense bf16 "
         "(1979 with sparsity), 80 GB HBM3, 3.35 TB/s)", int(0.75 * 80 * 10**9)),
    Chip("h200", 989e12, 4.8e12, 141 * 10**9,
         "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: 989 TFLOP/s dense bf16 "
         "(1979 with sparsity), 141 GB HBM3e, 4.8 TB/s)", int(0.75 * 141 * 10**9)),
)}

# Topology-name prefix (``v5e:2x2``, ``v5:2x2x1``) or device kind -> chip.
ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5 lite": "v5e", "v5": "v5p",
           "v5p": "v5p", "v6e": "v6e", "v6 lite": "v6e", "h100": "h100", "h200": "h200"}


def get(name: str) -> Chip:
  """The chip of a topology prefix or device kind (``"v5e"``, ``"TPU v5 lite"``, ``"NVIDIA
  H100 80GB HBM3"``); a one-line ``ValueError`` naming the known ones otherwise."""
  key = name.lower().replace("tpu ", "").replace("nvidia ", "").strip()
  for alias in sorted(ALIASES, key=len, reverse=True):
    if key == alias or key.startswith(alias + " ") or key.startswith(alias + ":"):
      return CHIPS[ALIASES[alias]]
  raise ValueError(f"unknown chip {name!r}; known: {sorted(CHIPS)}")

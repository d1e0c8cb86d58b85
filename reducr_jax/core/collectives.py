"""Collectives over a mapped device axis that are the identity without one.

The pure functions of :mod:`reducr_jax.core` and the step take ``axis_name``: the name of
the ``pmap`` / ``shard_map`` axis the batch is split over, or ``None`` for one device (no
mapped axis), where a sum or a gather over devices is ``x`` itself.
"""

from __future__ import annotations

from typing import Any, Optional

import jax


def psum(x: Any, axis_name: Optional[str]) -> Any:
  """``jax.lax.psum`` of the pytree ``x`` over ``axis_name``; ``x`` for ``None``."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def gather_rows(x: jax.Array, axis_name: Optional[str], axis: int = 0) -> jax.Array:
  """``x [b, ...]`` of every device along ``axis_name``, device-major → ``[n·b, ...]``
  (rows on dimension ``axis``, e.g. ``1`` for ``[K, b, C]``; ``x`` itself for ``None``)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)


def device_index(axis_name: Optional[str]) -> jax.Array | int:
  """This device's index along ``axis_name`` (``0`` for ``None``)."""
  return 0 if axis_name is None else jax.lax.axis_index(axis_name)

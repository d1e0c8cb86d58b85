"""Argument validation shared by the pure functions.

Every public function checks its inputs' *static* properties (ranks, shapes, and
hyper-parameters that are concrete Python/NumPy values) at trace time and raises a
one-line ``ValueError`` naming the argument and what is allowed, so a user never sees a
deep XLA error for a wrong shape. Values that are tracers (e.g. ``eta`` passed as a
jitted argument) cannot be checked at trace time and are left alone.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np


def is_int(v) -> bool:
  """A Python or NumPy integer, not a bool (config values)."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
  """A Python or NumPy int or float, not a bool (config values)."""
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
      v, (bool, np.bool_))


def check_fractions(field: str, value, parts: tuple) -> None:
  """Raises a one-line ``ValueError`` unless ``value`` is ``len(parts)`` positive numbers
  summing to 1 (± 1e-6), e.g. a config's split fractions; ``parts`` names them."""
  if (not isinstance(value, (tuple, list)) or len(value) != len(parts) or
      not all(is_real(v) and v > 0 for v in value) or abs(math.fsum(value) - 1.0) > 1e-6):
    raise ValueError(f"{field} must be {len(parts)} positive numbers "
                     f"({', '.join(parts)}) summing to 1, got {value!r}")


def concrete_value(x) -> Optional[float]:
  """Returns ``float(x)`` when ``x`` is a concrete scalar, else ``None`` (a tracer)."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return float(np.asarray(x))
  except (TypeError, ValueError):
    return None


def check_shape(name: str, x, expected: Sequence[Optional[int]], described: str) -> None:
  """Raises if ``x.shape`` does not match ``expected`` (``None`` matches any size).

  Args:
    name: argument name, used in the message.
    x: array-like with a ``shape``.
    expected: the expected shape; ``None`` entries are wildcards.
    described: the expected shape in words, e.g. ``"[B, C]"``.
  """
  shape = tuple(np.shape(x))
  ok = len(shape) == len(expected) and all(
      e is None or e == s for e, s in zip(expected, shape))
  if not ok:
    raise ValueError(f"{name} must have shape {described}, got {shape}")


def check_in_range(name: str, x, low=None, high=None, *, low_inclusive=True,
                   high_inclusive=True) -> None:
  """Raises if the concrete scalar ``x`` is outside the given range; tracers pass."""
  v = concrete_value(x)
  if v is None:
    return
  lo_bad = low is not None and (v < low if low_inclusive else v <= low)
  hi_bad = high is not None and (v > high if high_inclusive else v >= high)
  if lo_bad or hi_bad or np.isnan(v):
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    interval = ("[" if low_inclusive else "(") + f"{lo}, {hi}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must be in {interval}, got {v}")


def check_k(k, batch_size: int, name: str = "k") -> int:
  """Returns ``k`` as an int after checking it is a static integer in [1, batch_size]."""
  if isinstance(k, jax.core.Tracer) or not float(k).is_integer():
    raise ValueError(f"{name} must be a static Python int in [1, {batch_size}], got {k!r}")
  k = int(k)
  if not 1 <= k <= batch_size:
    raise ValueError(f"{name} must be in [1, {batch_size}] (the batch size), got {k}")
  return k


def check_num_classes(num_classes, name: str = "num_classes") -> int:
  """Returns ``num_classes`` as an int after checking it is a static integer >= 1.

  A traced value (an argument of a jitted function) is a one-line ``ValueError`` saying
  so (mark it static: ``jax.jit(f, static_argnames=...)``)."""
  if isinstance(num_classes, jax.core.Tracer):
    raise ValueError(f"{name} must be a static Python int >= 1 (it sets an array shape), "
                     f"got a traced value; pass it as a static argument")
  if isinstance(num_classes, (bool, np.bool_)) \
      or not is_real(num_classes) or not float(num_classes).is_integer() or num_classes < 1:
    raise ValueError(f"{name} must be a positive int, got {num_classes!r}")
  return int(num_classes)


def check_static_bool(name: str, x) -> bool:
  """Returns ``bool(x)``; a traced value (it picks which program is traced) is a one-line
  ``ValueError`` instead of JAX's ``TracerBoolConversionError``."""
  if isinstance(x, jax.core.Tracer):
    raise ValueError(f"{name} must be a static Python bool (it picks the computation), "
                     f"got a traced value; pass it as a static argument")
  return bool(x)


def dtype_of(x):
  """``x.dtype`` for arrays and tracers, NumPy's dtype for Python scalars and lists."""
  dtype = getattr(x, "dtype", None)
  return np.asarray(x).dtype if dtype is None else dtype


def check_float(name: str, x) -> None:
  """Raises a one-line ``ValueError`` unless ``x`` has a floating dtype (float16/32/64,
  bfloat16): an int or bool array where losses or weights are meant (e.g. boolean
  weights that would count as 0/1, integer losses truncated) is refused at trace time."""
  dtype = dtype_of(x)
  if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
    raise ValueError(f"{name} must be a float array, got dtype {dtype}")


def check_labels(name: str, labels, n: Optional[int] = None,
                 num_classes: Optional[int] = None, where=None) -> None:
  """Raises unless ``labels`` is an integer ``[n]`` array (``n=None``: any length).

  With ``num_classes`` the values of a concrete ``labels`` must lie in ``[0, C)`` (a −1
  "ignore" label would otherwise fall silently out of a one-hot, or wrap to class C−1 in
  an index); traced labels are checked for dtype and shape only. ``where`` (``bool[n]``,
  e.g. a padding mask) limits the value check to its True rows when it is concrete."""
  described = "[n]" if n is None else f"[n={n}]"
  check_shape(name, labels, (n,), described)
  dtype = dtype_of(labels)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"{name} must be integer class labels, got dtype {dtype}")
  if num_classes is None or isinstance(labels, jax.core.Tracer):
    return
  a = np.asarray(labels)
  keep = True
  if where is not None and not isinstance(where, jax.core.Tracer):
    keep = np.asarray(where).astype(bool)
  bad = np.flatnonzero(((a < 0) | (a >= num_classes)) & keep)
  if bad.size:
    raise ValueError(f"{name} must be in [0, {num_classes}), got {a[bad[0]]} at index "
                     f"{bad[0]}")


def check_key(name: str, rng) -> None:
  """Raises unless ``rng`` is a PRNG key: a typed key (``jax.random.key``) or a raw
  ``uint32[2]`` key (``jax.random.PRNGKey``)."""
  dtype = getattr(rng, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return
  if dtype is not None and np.dtype(dtype) == np.uint32 and tuple(np.shape(rng)) == (2,):
    return
  got = f"{type(rng).__name__} {rng!r}" if dtype is None else (
      f"an array of dtype {dtype} and shape {tuple(np.shape(rng))}")
  raise ValueError(f"{name} must be a PRNG key (jax.random.key(seed)), got {got}")


def check_non_negative(name: str, x) -> None:
  """Raises if the concrete array ``x`` has a negative or NaN entry; tracers pass (a
  value known only when the jitted function runs cannot be checked)."""
  if isinstance(x, jax.core.Tracer):
    return
  a = np.asarray(x)
  bad = np.flatnonzero(~(a >= 0))
  if bad.size:
    raise ValueError(f"{name} must be >= 0 everywhere, got {a.reshape(-1)[bad[0]]} at "
                     f"index {bad[0]}")

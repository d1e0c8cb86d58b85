"""A lazy, read-only array of rows decoded on demand from random-access sources.

Clothing1M's training pool is ~1M JPEG images (224x224x3 uint8 = 150 kB each decoded,
~150 GB for the pool), so its ``Split.x`` cannot be a NumPy array. :class:`LazyArray`
behaves like one for everything the trainer does with ``split.x``:

* ``x.shape``, ``x.dtype``, ``x.ndim``, ``len(x)``;
* ``x[i]`` (one row), ``x[a:b]``, ``x[idx]`` with an int array (any shape, negative
  indices allowed, repeats decoded once) or a bool mask [N] -> a decoded ``np.ndarray``;
* ``x.take(rows)`` -> another ``LazyArray`` (a view: only row ids are stored);
* :func:`concatenate` of lazy and NumPy arrays -> a ``LazyArray``;
* ``np.asarray(x)`` decodes every row (fine for small splits, e.g. CINIC-10).

A ``LazyArray`` stores, for each of its rows, which source it comes from and the row in
that source (int64 each, ~9 bytes a row). A source is a :class:`DataSourceRows` (e.g. a
TFDS ``builder.as_data_source(split)`` over ``array_record`` files plus a decode function,
read and decoded by a shared ``ThreadPoolExecutor``) or an :class:`ArrayRows` (a NumPy
array, so NumPy and lazy rows can be concatenated).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_MIN_ROWS_PER_TASK = 8


def default_num_threads() -> int:
  """Decode threads of the shared pool: the machine's CPU count (at least 2, at most 32)."""
  return max(2, min(32, os.cpu_count() or 1))


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  """The process-wide decode pool (created on first use)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(
          max_workers=default_num_threads(), thread_name_prefix="reducr_decode")
    return _POOL


class ArrayRows:
  """A NumPy array as a row source: ``read(rows)`` is ``array[rows]``."""

  def __init__(self, array: np.ndarray):
    self.array = np.asarray(array)
    if self.array.ndim < 1:
      raise ValueError(f"a row source needs an array with ndim >= 1, got shape "
                       f"{self.array.shape}")
    self.row_shape = tuple(self.array.shape[1:])
    self.dtype = self.array.dtype

  def __len__(self) -> int:
    return int(self.array.shape[0])

  def read(self, rows: np.ndarray) -> np.ndarray:
    """rows: int64 [n] in [0, len) -> [n, *row_shape]."""
    return self.array[rows]


class DataSourceRows:
  """Rows ``decode(record)`` of a random-access ``source`` (``source[i]`` -> record).

  Records are fetched with ``source.__getitems__(rows)`` when the source has it (TFDS
  data sources read array_record files in parallel), else one ``source[i]`` at a time,
  and decoded by the shared thread pool in chunks of consecutive sorted rows (PIL and
  array_record release the GIL while they work).

  Args:
    source: a sequence of records, e.g. ``builder.as_data_source(split, decoders=...)``.
    decode: record -> ``np.ndarray`` of shape ``row_shape`` (cast to ``dtype``).
    row_shape: shape of one decoded row, e.g. ``(224, 224, 3)``.
    dtype: dtype of the decoded rows, e.g. ``np.uint8``.
    num_rows: rows of the source to expose (default ``len(source)``).
  """

  def __init__(self, source: Sequence[Any], decode: Callable[[Any], np.ndarray],
               row_shape: Sequence[int], dtype: Any, num_rows: int | None = None):
    self.source = source
    self.decode = decode
    self.row_shape = tuple(int(d) for d in row_shape)
    self.dtype = np.dtype(dtype)
    self._len = len(source) if num_rows is None else int(num_rows)

  def __len__(self) -> int:
    return self._len

  def _fetch(self, rows: np.ndarray) -> list[Any]:
    getitems = getattr(self.source, "__getitems__", None)
    if getitems is not None:
      return list(getitems([int(r) for r in rows]))
    return [self.source[int(r)] for r in rows]

  def _fill(self, out: np.ndarray, rows: np.ndarray, start: int) -> None:
    for j, record in enumerate(self._fetch(rows)):
      row = np.asarray(self.decode(record))
      if row.shape != self.row_shape:
        raise ValueError(f"decoded row {int(rows[j])} has shape {row.shape}, expected "
                         f"{self.row_shape}")
      out[start + j] = row

  def read(self, rows: np.ndarray) -> np.ndarray:
    """rows: int64 [n] in [0, len), sorted ascending -> decoded [n, *row_shape]."""
    out = np.empty((rows.size,) + self.row_shape, self.dtype)
    threads = default_num_threads()
    if rows.size <= _MIN_ROWS_PER_TASK:
      self._fill(out, rows, 0)
      return out
    chunk = max(_MIN_ROWS_PER_TASK, math.ceil(rows.size / (4 * threads)))
    futures = [_pool().submit(self._fill, out, rows[s:s + chunk], s)
               for s in range(0, rows.size, chunk)]
    for f in futures:
      f.result()  # Re-raises a decode error in the caller.
    return out


class LazyArray:
  """Rows ``sources[part[i]].read(row[i])``; see the module docstring.

  Args:
    sources: row sources (``DataSourceRows`` / ``ArrayRows``), all with the same
      ``row_shape`` and ``dtype``.
    part: int [N], which source row i comes from (``None``: all from ``sources[0]``).
    row: int64 [N], the row in that source (``None``: ``arange(len(sources[0]))``).
  """

  def __init__(self, sources: Sequence[Any], part: np.ndarray | None = None,
               row: np.ndarray | None = None):
    self.sources = tuple(sources)
    if not self.sources:
      raise ValueError("LazyArray needs at least one source")
    first = self.sources[0]
    for s in self.sources[1:]:
      if s.row_shape != first.row_shape or np.dtype(s.dtype) != np.dtype(first.dtype):
        raise ValueError(f"sources must share row shape and dtype, got "
                         f"{first.row_shape}/{first.dtype} and {s.row_shape}/{s.dtype}")
    self._row = (np.arange(len(first), dtype=np.int64) if row is None
                 else np.asarray(row, dtype=np.int64))
    self._part = (np.zeros(self._row.shape, np.int32) if part is None
                  else np.asarray(part, dtype=np.int32))
    if self._row.ndim != 1 or self._part.shape != self._row.shape:
      raise ValueError(f"part and row must be 1-D of equal length, got "
                       f"{self._part.shape} and {self._row.shape}")
    self._row.flags.writeable = False
    self._part.flags.writeable = False

  @property
  def shape(self) -> tuple[int, ...]:
    return (int(self._row.size),) + tuple(self.sources[0].row_shape)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.sources[0].dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def part(self) -> np.ndarray:
    """int32 [N] (read-only): the source of each row."""
    return self._part

  @property
  def row(self) -> np.ndarray:
    """int64 [N] (read-only): the row of each row in its source."""
    return self._row

  def __len__(self) -> int:
    return int(self._row.size)

  def __repr__(self) -> str:
    return (f"LazyArray(shape={self.shape}, dtype={self.dtype}, "
            f"sources={len(self.sources)})")

  def _positions(self, key) -> np.ndarray:
    """Any row key (slice, int / bool array-like) -> int64 positions in [0, N)."""
    n = len(self)
    if isinstance(key, slice):
      return np.arange(n, dtype=np.int64)[key]
    idx = np.asarray(key)
    if idx.dtype == bool:
      if idx.shape != (n,):
        raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}")
      return np.flatnonzero(idx).astype(np.int64)
    if idx.size == 0:
      return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
      raise IndexError(f"LazyArray rows must be indexed by ints, slices or bool masks, "
                       f"got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.min() < -n or idx.max() >= n:
      raise IndexError(f"index out of range for {n} rows: [{idx.min()}, {idx.max()}]")
    return np.where(idx < 0, idx + n, idx)

  def _read(self, pos: np.ndarray) -> np.ndarray:
    """pos: int64 [...] positions -> decoded rows [..., *row_shape]; repeats read once."""
    flat = pos.reshape(-1)
    out = np.empty((flat.size,) + tuple(self.sources[0].row_shape), self.dtype)
    if flat.size:
      # One id per (source, row): read each distinct row once, in sorted order.
      uniq, inverse = np.unique(self._part[flat].astype(np.int64) * (1 << 40) +
                                self._row[flat], return_inverse=True)
      part_u, row_u = uniq >> 40, uniq & ((1 << 40) - 1)
      decoded = np.empty((uniq.size,) + out.shape[1:], self.dtype)
      for p in np.unique(part_u):
        sel = np.flatnonzero(part_u == p)
        decoded[sel] = self.sources[int(p)].read(row_u[sel])
      out[:] = decoded[inverse.reshape(-1)]
    return out.reshape(pos.shape + out.shape[1:])

  def __getitem__(self, key) -> np.ndarray:
    """Decoded rows: ``x[i]`` [*row_shape], ``x[a:b]`` / ``x[idx]`` [n, *row_shape].

    A tuple key ``x[rows, rest...]`` decodes ``x[rows]`` and applies ``rest`` to it.
    """
    if isinstance(key, tuple):
      if not key:
        return self[:]
      head = self[key[0]]
      scalar = isinstance(key[0], (int, np.integer)) and not isinstance(key[0], bool)
      return head[key[1:]] if scalar else head[(slice(None),) + key[1:]]
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
      return self._read(self._positions(np.asarray([key])))[0]
    return self._read(self._positions(key))

  def take(self, rows) -> LazyArray:
    """A lazy view of rows ``rows`` (int array-like, any order/repeats, or bool mask [N])."""
    pos = self._positions(rows).reshape(-1)
    return LazyArray(self.sources, self._part[pos], self._row[pos])

  def __array__(self, dtype=None, copy=None):
    del copy  # A fresh array is always returned.
    arr = self[:]
    return arr if dtype is None else arr.astype(dtype)


def take(x, rows):
  """``x[rows]`` for a NumPy array (a copy), ``x.take(rows)`` for a ``LazyArray`` (a view).

  Args:
    x: ``np.ndarray`` [N, ...] or ``LazyArray``.
    rows: int array [n] or bool mask [N].
  """
  if isinstance(x, LazyArray):
    return x.take(rows)
  return np.asarray(x)[np.asarray(rows)]


def concatenate(arrays: Sequence[Any]):
  """Concatenates rows of NumPy arrays and ``LazyArray`` s.

  Args:
    arrays: a non-empty sequence; all with the same row shape and dtype.

  Returns:
    ``np.concatenate(arrays)`` when all are NumPy arrays, else a ``LazyArray`` whose
    rows are those of ``arrays`` in order (NumPy inputs become ``ArrayRows`` sources;
    a source shared by several inputs is kept once).
  """
  arrays = list(arrays)
  if not arrays:
    raise ValueError("concatenate needs at least one array")
  if not any(isinstance(a, LazyArray) for a in arrays):
    return np.concatenate([np.asarray(a) for a in arrays])
  sources: list[Any] = []
  parts, rows = [], []
  for a in arrays:
    if not isinstance(a, LazyArray):
      a = LazyArray([ArrayRows(np.asarray(a))])
    remap = np.empty(len(a.sources), np.int32)
    for j, s in enumerate(a.sources):
      k = next((i for i, t in enumerate(sources) if t is s), None)
      if k is None:
        sources.append(s)
        k = len(sources) - 1
      remap[j] = k
    parts.append(remap[a.part])
    rows.append(a.row)
  return LazyArray(sources, np.concatenate(parts), np.concatenate(rows))

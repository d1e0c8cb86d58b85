"""Stage 1's best variables so far, kept in files between validations instead of in memory.

Stage 1 keeps, per expert, the variables with the best validation loss (``experts.
select_on``). Held in host memory that copy costs one more set of the stacked variables
during every later training step: 0.58 GiB for 14 ResNet-18 experts, on CPU next to the
stacked state (1.75 GiB with the AdamW moments). Worse, the copy was a zero-copy NumPy
view of the step's output buffers (``np.asarray`` of a CPU array aliases it), so the next
step could not donate them and allocated its outputs anew. In the issue-23 Clothing1M CPU
smoke run that was the step from 3.8 to 4.3 GiB resident.

:class:`SpilledBest` writes each leaf to a raw file in a temporary directory and reads the
previous best back memory-mapped, one leaf at a time, when merging: resident memory holds
at most one leaf (the largest ResNet-18 kernel stacked 14×: 132 MB) beyond the step's own.
Values are the bytes written, so the result equals keeping the arrays in memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Optional

import jax
import numpy as np


class SpilledBest:
  """A pytree of host arrays kept on disk (``directory``: ``None`` = the system temp dir).

  ``update(tree)`` stores ``tree`` the first time; later ``update(tree, choose)`` stores
  ``choose(new_leaf, old_leaf)`` per leaf (``old_leaf`` a read-only memory map of the
  stored one). :meth:`get` returns the stored tree as in-memory arrays; :meth:`close`
  removes the files (also done when the object is garbage-collected).
  """

  def __init__(self, directory: Optional[str] = None):
    self._dir = tempfile.TemporaryDirectory(prefix="reducr_best_", dir=directory)
    self._treedef = None
    self._specs: list[tuple[tuple[int, ...], np.dtype]] = []

  @property
  def empty(self) -> bool:
    """Whether nothing has been stored yet."""
    return self._treedef is None

  def _path(self, i: int) -> str:
    return os.path.join(self._dir.name, f"{i}.bin")

  def _old(self, i: int) -> np.ndarray:
    shape, dtype = self._specs[i]
    if not int(np.prod(shape)):
      return np.zeros(shape, dtype)
    return np.memmap(self._path(i), dtype=dtype, mode="r", shape=shape)

  def update(self, tree: Any,
             choose: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None) -> None:
    """Stores ``tree`` (first call) or, leaf by leaf, ``choose(new, old)``."""
    leaves, treedef = jax.tree.flatten(tree)
    if not self.empty and treedef != self._treedef:
      raise ValueError(f"tree must have the stored structure {self._treedef}, got {treedef}")
    if not self.empty and choose is None:
      raise ValueError("choose must be given once a tree is stored")
    specs = []
    for i, leaf in enumerate(leaves):
      new = np.asarray(leaf)
      if not self.empty:
        new = np.asarray(choose(new, self._old(i)))   # in memory: the map is dropped next
      tmp = self._path(i) + ".tmp"
      np.ascontiguousarray(new).tofile(tmp)
      os.replace(tmp, self._path(i))            # never rewrites a file that is still mapped
      specs.append((new.shape, new.dtype))
    self._treedef, self._specs = treedef, specs

  def get(self) -> Any:
    """The stored tree as in-memory NumPy arrays."""
    if self.empty:
      raise ValueError("nothing stored yet: call update first")
    leaves = [np.fromfile(self._path(i), dtype=dtype).reshape(shape)
              for i, (shape, dtype) in enumerate(self._specs)]
    return jax.tree.unflatten(self._treedef, leaves)

  def close(self) -> None:
    """Removes the files."""
    self._dir.cleanup()
